#!/usr/bin/env bash
# Twentieth session, call B (nvidia-h200, one GPU): what autocast's weight casts cost llama and fac_split 1B
# (forward + backward with fp32 Linear weights against bf16 ones, scripts/gpu_weight_casts.py). Call A ran
# it without the dynamo reset after the dtype change: the compiled backward cast the bf16 weights as fp32
# (an illegal memory access).
set -u
BUDGET_S=540; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 400 python scripts/gpu_weight_casts.py --scale 1b llama flowhn/fac_split 2>&1 | grep -v Warning | tail -120
tables
echo "== weight casts"; tail -4 $OUT/weight_casts.log

