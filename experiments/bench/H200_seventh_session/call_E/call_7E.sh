#!/usr/bin/env bash
# Seventh session, call E (nvidia-h200-x2, the last ~3 minutes): 1B rows with the sequence walk (the
# default since call C) for the ratios; the bench's tiny GPU test (has an optimizer-in-graph row).
set -u
started=$(date +%s); left() { echo $(( 165 - ($(date +%s) - started) )); }
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) start"
  timeout $(left) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=false peers=[] \
    'entries=[{model: flowhn, split: fac_split},{model: shm}]' output=/tmp/e0.md hydra.run.dir=/tmp/e0
  echo "$(date +%T) done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) start"
  timeout 100 python3 -m pytest -q -rA -m gpu tests/test_bench.py -k tiny -p no:cacheprovider > $OUT/pytest.log 2>&1
  tail -3 $OUT/pytest.log
  timeout $(left) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=false peers=[] \
    'entries=[{model: jamba}]' output=/tmp/e1.md hydra.run.dir=/tmp/e1
  echo "$(date +%T) done"
) > $OUT/gpu1.log 2>&1 &
wait
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-170; done
