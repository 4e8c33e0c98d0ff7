#!/usr/bin/env bash
# Twentieth session, call A (nvidia-h200, one GPU): what autocast's weight casts cost llama and fac_split 1B
# (forward + backward with fp32 Linear weights against bf16 ones, scripts/gpu_weight_casts.py), then llama
# 1B with inductor's coordinate-descent tuning of its own Triton kernels (the cast script's full step is
# the same step without it, in this call).
set -u
BUDGET_S=540; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 330 python scripts/gpu_weight_casts.py --scale 1b llama flowhn/fac_split 2>&1 | grep -v Warning | tail -120
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 STEPS=5 WARMUP=3 LIMIT=170 bench 1b llama_cdt "{model: llama}" 2>&1 | tail -3
tables
echo "== weight casts"; tail -4 $OUT/weight_casts.log
echo "== llama 1B, coordinate-descent tuning"; grep -hE "^\| llama" $T/1b_llama_cdt.md
