#!/usr/bin/env bash
# Nineteenth session, call F (nvidia-h200, one GPU): the walking conv forward with 1024 channels a program where
# the channels are a multiple of 1024 (call E: 0.085 -> 0.078 ms at 16x1024x4096). (1) The conv's GPU tests
# against float64, a 2048-channel case added (1000 steps: not a multiple of the 64-row segment); (2) the
# default pair's kernel time against the old forward tile (FLOWHN_CONV_WALK_FWD_TILE=8,512,8,8), one process
# each; (3) fac_split and mamba 1B with the session's final code.
set -u
BUDGET_S=420; source scripts/gpu_call_lib.sh
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_conv.py > $OUT/pytest_conv.log 2>&1
echo "pytest rc $?"; tail -2 $OUT/pytest_conv.log
timeout 60 python3 scripts/gpu_mamba1.py --conv-walk --kernel-time --sweep-budget-s 1 > $OUT/conv_new.log 2>&1
echo "conv new rc $?"
FLOWHN_CONV_WALK_FWD_TILE=8,512,8,8 timeout 60 python3 scripts/gpu_mamba1.py --conv-walk --kernel-time \
  --sweep-budget-s 1 > $OUT/conv_old.log 2>&1; echo "conv old rc $?"
STEPS=5 WARMUP=3 LIMIT=100 bench 1b fac "{model: flowhn, split: fac_split}"
STEPS=5 WARMUP=3 LIMIT=95 bench 1b mamba "{model: mamba}"
tables
echo "== conv (fwd, fwd+bwd, x floor)"; for v in new old; do echo "$v"; grep -E "walk fwd, walk bwd|floor [0-9]" $OUT/conv_$v.log | grep -v "^conv 1B"; done
echo "== rows"; grep -hE "^\| (flowhn|mamba)" $OUT/tables.md
