#!/usr/bin/env bash
# Fourteenth session, call D (nvidia-h200-x2): the channel-last scan with its tile by length (triton_scan.cl_vector:
# (8, 4) under 512 steps, (8, 1) from there). GPU 0 (in place, the default): the scan's GPU tests, then
# fac_split and mamba at 135M and fac_split at 1B. GPU 1 at the same time: the same rows through the row-major
# copies (FLOWHN_SCAN_CHANNEL_LAST=0), and shm at 135M both ways, one after the other.
set -u
BUDGET_S=420; source scripts/gpu_call_lib.sh
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) scan GPU tests"
  timeout 200 python3 -m pytest -q -rf -m gpu tests/test_kernels.py -k "selective_scan or gluon or mamba1" \
    -p no:cacheprovider > $OUT/pytest_scan.log 2>&1
  echo "scan tests rc $?"; tail -3 $OUT/pytest_scan.log
  LIMIT=80 bench 135m fac_cl "{model: flowhn, split: fac_split}"
  LIMIT=80 bench 135m mamba_cl "{model: mamba}"
  LIMIT=100 STEPS=5 WARMUP=3 bench 1b fac_cl "{model: flowhn, split: fac_split}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  FLOWHN_SCAN_CHANNEL_LAST=0 LIMIT=80 bench 135m fac_rm "{model: flowhn, split: fac_split}"
  FLOWHN_SCAN_CHANNEL_LAST=0 LIMIT=80 bench 135m mamba_rm "{model: mamba}"
  FLOWHN_SCAN_CHANNEL_LAST=0 LIMIT=80 bench 135m shm_rm "{model: shm}"
  LIMIT=80 bench 135m shm_cl "{model: shm}"
  FLOWHN_SCAN_CHANNEL_LAST=0 LIMIT=100 STEPS=5 WARMUP=3 bench 1b fac_rm "{model: flowhn, split: fac_split}"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-170; done
