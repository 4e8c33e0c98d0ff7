#!/usr/bin/env bash
# Fifteenth session, call A (nvidia-h200-x2): the channel-last backward in the row-major tiles' layout
# (CL_VECTOR 0: no layout changes before its stores) and the epilogue that reads dz's gate factor and
# softplus's slope from shared memory instead of reloading dout, z and delta.
# GPU 0 (this code): gpu_mamba1.py --scan with its sweep (now (8,0), (8,1), (8,2), (8,4), (4,0)); then mamba
#        135M at the sweep's best vector at the 135M layer, fac_split 135M at the defaults.
# GPU 1: the scan GPU tests on this code; then the same two rows with c02855a's code (logs/calls/base), at
#        the same time as GPU 0's; then c02855a's gpu_mamba1.py --scan (no sweep) if time is left.
set -u
BUDGET_S=555; source scripts/gpu_call_lib.sh
rm -f /tmp/gpu0_ready /tmp/gpu1_ready
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) scan layouts"
  timeout 250 python3 scripts/gpu_mamba1.py --scan --sweep-budget-s 200 > $OUT/scan_layouts.stdout 2>&1; echo "scan rc $?"
  best=$(awk '/^Scan 16x1536x1024x16/{on=1} /^Scan 16x4096x1024/{on=0} on && /channels a thread/ {gsub(/[(),:]/," "); print $(NF-1), $8","$9}' \
    $OUT/mamba1.log | sort -n | head -1 | cut -d" " -f2)
  echo "best vector at the 135M layer: ${best:-none}"
  touch /tmp/gpu0_ready; while [ ! -f /tmp/gpu1_ready ] && (( $(left) > 150 )); do sleep 2; done
  FLOWHN_SCAN_CL_VECTOR=${best:-8,1} LIMIT=85 bench 135m mamba_new "{model: mamba}"
  LIMIT=85 bench 135m fac_new "{model: flowhn, split: fac_split}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  echo "$(date +%T) gpu tests"
  timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py -k "selective_scan or gluon or mamba1" \
    > $OUT/pytest_scan.log 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest_scan.log
  touch /tmp/gpu1_ready; while [ ! -f /tmp/gpu0_ready ] && (( $(left) > 150 )); do sleep 2; done
  export PYTHONPATH=$PWD/logs/calls/base/src:$PYTHONPATH
  python3 -c "import flowhn, sys; print('base code:', flowhn.__file__)"
  LIMIT=85 bench 135m mamba_base "{model: mamba}"
  LIMIT=85 bench 135m fac_base "{model: flowhn, split: fac_split}"
  if (( $(left) > 90 )); then
    mkdir -p /tmp/base_out; OUT=/tmp/base_out timeout $(( $(left) - 10 )) python3 logs/calls/base/scripts/gpu_mamba1.py --scan \
      --sweep-budget-s 1 > $OUT/base_scan.stdout 2>&1; echo "base scan rc $?"; cp /tmp/base_out/mamba1.log $OUT/base_mamba1.log
  fi
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|best|base code|passed|failed|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-180; done
grep -hE "^\| (mamba|flowhn)" $OUT/tables.md | head
echo "== this code"; grep -E "^  |^Scan|channels a thread" $OUT/mamba1.log | head -40
echo "== c02855a"; grep -E "^  |^Scan" $OUT/base_mamba1.log 2>/dev/null | head -20
