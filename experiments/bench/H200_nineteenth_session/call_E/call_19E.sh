#!/usr/bin/env bash
# Nineteenth session, call E (nvidia-h200, one GPU): (1) the conv's walking kernels at every tile, the new ones
# with 4 and 8 channels a thread among them (issue 13's conv at 1.54x its bytes' time against 1.5x), by kernel
# time at both conv shapes; (2) the conv's GPU tests against float64 with the two 8-channel candidates as the
# tiles (FLOWHN_CONV_WALK_FWD_TILE, FLOWHN_CONV_WALK_TILE); (3) hymba and jamba 135M with this session's code.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
timeout 235 python3 scripts/gpu_mamba1.py --conv-walk --kernel-time --sweep-budget-s 200 > $OUT/conv_walk.log 2>&1
echo "conv sweep rc $?"
FLOWHN_CONV_WALK_FWD_TILE=4,1024,16,4 FLOWHN_CONV_WALK_TILE=2,1024,64,4 timeout 100 python3 -m pytest -q -m gpu \
  -p no:cacheprovider tests/test_triton_conv.py > $OUT/pytest_conv_8ch.log 2>&1; echo "pytest rc $?"
tail -2 $OUT/pytest_conv_8ch.log
bench 135m hymba "{model: hymba}"
bench 135m jamba "{model: jamba}"
tables
echo "== conv"; grep -vE "^\s*$" $OUT/conv_walk.log | grep -E "tile|\(|walk fwd|Conv|conv|Device" | head -70
echo "== rows"; grep -hE "^\| (hymba|jamba)" $OUT/tables.md
