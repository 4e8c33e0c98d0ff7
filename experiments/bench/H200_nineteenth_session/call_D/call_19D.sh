#!/usr/bin/env bash
# Nineteenth session, call D (nvidia-h200, one GPU): every GPU test of the suite with this session's code (the
# scan taking A_log, the backward ops' partial sums summed in the traced backward), four pytest workers on the
# one GPU; then the rows nearest their targets that these changes touch: mamba 135M (255k against issue 14's
# 250k, CUDA graphs) and mamba 1B (35.7 % against issue 13's 30 %).
set -u
BUDGET_S=550; source scripts/gpu_call_lib.sh
timeout 330 python3 -m pytest -q -m gpu -n 4 -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1; echo "pytest rc $?"
tail -15 $OUT/pytest_gpu.log
bench 135m mamba "{model: mamba}"
STEPS=5 WARMUP=3 LIMIT=100 bench 1b mamba "{model: mamba}"
tables
echo "== rows"; grep -hE "^\| mamba" $OUT/tables.md
