#!/usr/bin/env bash
# Seventh session, call C (nvidia-h200-x2).
# GPU 0: the Gluon walk (triton_scan.GLUON_WALK): its float64-referenced GPU tests, then the 1B bench rows
#        no_split and mamba with FLOWHN_SCAN_WALK=chunks and =sequence (separate processes, same GPU; only if
#        the tests passed), then the scan's tile/walk table while time is left.
# GPU 1: train.py at 1B for fac_split and jamba (issue 14: ThroughputMonitor against the bench rows).
set -u
started=$(date +%s); left() { echo $(( 545 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) tests"
  timeout 150 python3 -m pytest -q -m gpu tests/test_kernels.py -k "gluon or selective_scan_gpu" -p no:cacheprovider > $OUT/pytest.log 2>&1
  rc=$?; tail -4 $OUT/pytest.log; walks="chunks"; [[ $rc == 0 ]] && walks="chunks sequence"
  for w in $walks; do echo "$(date +%T) walk $w"
    FLOWHN_SCAN_WALK=$w timeout $(( $(left) - 100 > 200 ? 200 : $(left) - 100 )) python3 -m flowhn.bench scale=1b steps=6 warmup=3 \
      profile=true profile_steps=1 profile_top=12 peers=[] 'entries=[{model: flowhn, split: no_split},{model: mamba}]' \
      output=$T/walk_$w.md hydra.run.dir=/tmp/w_$w; done
  echo "$(date +%T) tiles, $(left) s left"
  (( $(left) > 40 )) && OUT=/tmp timeout $(( $(left) - 10 )) python3 scripts/gpu_scan_tiles.py --budget-s $(( $(left) - 60 )) > /dev/null 2>&1
  cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  OUT=/tmp/ts SCALE=1b MODELS="fac_split jamba" FUSED=default CODES=after BENCH=0 TESTS=0 STEPS=120 DEADLINE_S=535 \
    RUN_TIMEOUT_S=265 bash scripts/gpu_train_speed.sh > /dev/null 2>&1
  cp /tmp/ts/train_speed.csv $OUT/; tar czf $OUT/train_speed.tgz -C /tmp/ts .
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
echo "== GPU 0"; grep -hE "^[0-9:]{8} |passed|failed|Row\(" $OUT/gpu0.log | sed -E "s/^.*Row\(//" | cut -c1-200
echo "== GPU 1"; cat $OUT/gpu1.log; cat $OUT/train_speed.csv
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -9
