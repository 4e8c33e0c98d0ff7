#!/usr/bin/env bash
# Fifteenth session, call C (nvidia-h200-x2): the Gluon backward's wave fill. At the Mamba 135M layer
# (16×1536 channels) 2 lanes a channel make 1,536 warps of 254 registers, 8 an SM: 1.45 waves of 132 SMs.
# 4 lanes (168 registers, 12 warps an SM) make 3,072 warps: 1.94 waves.
# GPU 0: gpu_mamba1.py --scan with the tile sweep (SCAN_SWEEP) at four shapes; then mamba 135M and fac_split
#        135M at the defaults (backward 2 lanes).
# GPU 1: the scan GPU tests (the new tiles test: 4 lanes and sub-chunk 4 included); then the same two rows
#        with FLOWHN_SCAN_BWD_LANES=4, at the same time as GPU 0's.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
rm -f /tmp/sync_*
pair() {
  touch /tmp/sync_${GPU}_$1; local other=$((1 - GPU))
  while [ ! -f /tmp/sync_${other}_$1 ] && (( $(left) > 60 )); do sleep 1; done
}
(
  export CUDA_VISIBLE_DEVICES=0 GPU=0
  timeout 330 python3 scripts/gpu_mamba1.py --scan --sweep-budget-s 300 > $OUT/scan_tiles.stdout 2>&1; echo "scan rc $?"
  pair mamba; LIMIT=85 bench 135m mamba_lanes2 "{model: mamba}"
  pair fac; LIMIT=85 bench 135m fac_lanes2 "{model: flowhn, split: fac_split}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1 GPU=1
  timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py -k "selective_scan or gluon or mamba1" \
    > $OUT/pytest_scan.log 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest_scan.log
  export FLOWHN_SCAN_BWD_LANES=4
  pair mamba; LIMIT=85 bench 135m mamba_lanes4 "{model: mamba}"
  pair fac; LIMIT=85 bench 135m fac_lanes4 "{model: flowhn, split: fac_split}"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |rc [0-9]|passed|failed|Error|skipped" $OUT/gpu$g.log | cut -c1-200; done
for f in $T/*.md; do echo "$(basename $f): $(grep -hE '^\| (mamba|flowhn)' $f | head -1)"; done
grep -E "^  |^Scan|in place" $OUT/mamba1.log | head -60
