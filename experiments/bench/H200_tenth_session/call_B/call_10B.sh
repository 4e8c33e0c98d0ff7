#!/usr/bin/env bash
# Tenth session, call B (nvidia-h200-x2).
# GPU 0: the conv kernels timed by their own GPU durations (gpu_mamba1.py --conv --kernel-time: walking forward
#        and backward against the tiled forward and the staged backward, tile sweeps), then gpu_scan_tiles.py
#        (the 1-warp backward candidate against the default).
# GPU 1: the conv's GPU tests (the walking forward now too), then gpu_host_profile.py: mamba at 1B, and mamba,
#        hymba at 135M under CUDA graphs (idle gaps of one step; the bench's kernel sums against the trace's).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 520 - ($(date +%s) - started) )); }
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) gpu_mamba1 --conv --kernel-time"
  timeout 260 python3 scripts/gpu_mamba1.py --conv --kernel-time --sweep-budget-s 200 > $OUT/mamba1_conv.stdout 2>&1
  echo "mamba1 rc $?"
  echo "$(date +%T) scan tiles, $(left) s left"
  OUT=/tmp timeout $(( $(left) - 10 > 200 ? 200 : $(left) - 10 )) python3 scripts/gpu_scan_tiles.py --budget-s 120 \
    > /dev/null 2>&1; echo "tiles rc $?"; cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) conv tests"
  timeout 120 python3 -m pytest -q -rf -m gpu tests/test_triton_conv.py -p no:cacheprovider > $OUT/pytest_conv.log 2>&1
  echo "conv tests rc $?"; tail -2 $OUT/pytest_conv.log
  echo "$(date +%T) host profile 1b"
  timeout 130 python3 scripts/gpu_host_profile.py --scale 1b --steps 3 --warmup 3 mamba > /dev/null 2>&1; echo "1b rc $?"
  mv $OUT/host_profile.log $OUT/host_profile_1b.log
  echo "$(date +%T) host profile 135m, $(left) s left"
  timeout $(( $(left) - 10 )) python3 scripts/gpu_host_profile.py --scale 135m --steps 10 --warmup 8 \
    mamba:reduce-overhead hymba:reduce-overhead > /dev/null 2>&1; echo "135m rc $?"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | cut -c1-200; done
grep -E "^conv " $OUT/mamba1.log 2>/dev/null | cut -c1-150
grep -E "best" $OUT/mamba1.log 2>/dev/null
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -6
grep -hE "^kernel time|^\*\*|^\| (mamba|hymba)" $OUT/host_profile*.log 2>/dev/null | cut -c1-230
