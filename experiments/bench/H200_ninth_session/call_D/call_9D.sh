#!/usr/bin/env bash
# Ninth session, call D (nvidia-h200-x2, the last device minutes): the backward with the warp-level re-layout
# (e699547) as the default. GPU 0: the scan's GPU tests (float64, every walk and option), then 1B fac_split.
# GPU 1: 1B jamba, then mamba (one process).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 205 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 140 python3 -m pytest -q -rf -m gpu tests/test_kernels.py -k "gluon or selective_scan_gpu" -p no:cacheprovider \
    > $OUT/pytest.log 2>&1; echo "tests rc $?"; tail -2 $OUT/pytest.log
  echo "$(date +%T) 1b fac_split, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 3 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=false \
    peers=[] 'entries=[{model: flowhn, split: fac_split}]' output=$T/1b_fac.md hydra.run.dir=/tmp/f
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) 1b jamba, mamba"
  timeout $(( $(left) - 3 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=4 \
    peers=[] 'entries=[{model: jamba},{model: mamba}]' output=$T/1b_jamba_mamba.md hydra.run.dir=/tmp/b
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|passed|failed|tests rc|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "^FAILED" $OUT/pytest.log | head -10
