#!/usr/bin/env bash
# Sixteenth session, call A (nvidia-h200, one GPU): (1) GPU tests of the new pieces: the scan keeping its
# sub-chunk states (keep_states) against float64, the mixer (keep on and off) against the float64 reference,
# the conv + x_proj op; (2) gpu_mamba1.py --scan: KEEP_STATES off/on at the four shapes (same process);
# (3) mamba 135M, one after the other on this GPU: 424a064 (logs/calls/base), this code with keep off, with
# keep on (profiled).
set -u
BUDGET_S=555; source scripts/gpu_call_lib.sh
echo "$(date +%T) gpu tests"
timeout 170 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py tests/test_triton_conv.py \
  -k "keeps_states or mamba1_mixer or selective_scan_channel_last_gpu or conv_proj_gpu" > $OUT/pytest.log 2>&1
echo "pytest rc $?"; tail -4 $OUT/pytest.log
echo "$(date +%T) scan"
timeout 120 python3 scripts/gpu_mamba1.py --scan --sweep-first 4 --sweep-budget-s 110 > $OUT/scan.stdout 2>&1; echo "scan rc $?"
LIMIT=80 bench 135m mamba_new_keep "{model: mamba, model.ssm_keep_scan_states: true}" "profile=true profile_steps=1 profile_top=30"
LIMIT=75 bench 135m mamba_new "{model: mamba}"
( export PYTHONPATH=$PWD/logs/calls/base/src:$PYTHONPATH; cd logs/calls/base
  python3 -c "import flowhn; print('base code:', flowhn.__file__)"
  LIMIT=75 bench 135m mamba_base "{model: mamba}" )
tables
echo "== rows"; grep -hE "^\| mamba" $OUT/tables.md
echo "== scan"; grep -E "^Scan|in place" $OUT/mamba1.log | head -40
