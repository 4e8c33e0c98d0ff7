#!/usr/bin/env bash
# Fourteenth session, call B (nvidia-h200-x2): the Gluon scan reading the mixer's channel-last views in place.
# GPU 0: the scan's GPU tests (float64 references; channel-last Gluon cases new), then mamba 135M and 1B with
#        channel-last on (the new default). GPU 1 at the same time: the same rows with FLOWHN_SCAN_CHANNEL_LAST=0
#        (the row-major copies, as before), then gpu_mamba1.py --quick (scan: row-major padded vs channel-last
#        in one process; mixer at 1B dims).
set -u
BUDGET_S=550; source scripts/gpu_call_lib.sh
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) scan GPU tests"
  timeout 230 python3 -m pytest -q -rf -m gpu tests/test_kernels.py -k "selective_scan or gluon or mamba1" \
    -p no:cacheprovider > $OUT/pytest_scan.log 2>&1
  echo "scan tests rc $?"; tail -3 $OUT/pytest_scan.log
  LIMIT=100 bench 135m mamba_cl "{model: mamba}" "profile=true profile_steps=1 profile_top=14"
  LIMIT=120 STEPS=5 WARMUP=3 bench 1b mamba_cl "{model: mamba}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1 FLOWHN_SCAN_CHANNEL_LAST=0
  LIMIT=100 bench 135m mamba_rm "{model: mamba}" "profile=true profile_steps=1 profile_top=14"
  LIMIT=120 STEPS=5 WARMUP=3 bench 1b mamba_rm "{model: mamba}"
  unset FLOWHN_SCAN_CHANNEL_LAST
  echo "$(date +%T) gpu_mamba1 --quick, $(left) s left"
  timeout $(( $(left) - 10 )) python3 scripts/gpu_mamba1.py --quick > $OUT/mamba1.stdout 2>&1; echo "mamba1 rc $?"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -hE "^\| mamba" $OUT/tables.md | head; tail -25 $OUT/mamba1.stdout
