#!/usr/bin/env bash
# Twenty-second session, call D (nvidia-h200): the new defaults (residual_dtype: autocast in train.yaml and
# bench.yaml): llama, fac_split and HF Llama compiled at 1B; llama 135M with residual_dtype=fp32 and the default
# (call B lost its fp32 row to its 70 s limit). One process a row.
set -u
BUDGET_S=490; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
STEPS=5 WARMUP=3 LIMIT=90 bench 1b llama "{model: llama}" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=90 bench 1b fac "{model: flowhn, split: fac_split}" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=100 PEERS=[hf_llama_compiled] bench 1b hf "" 2>&1 | tail -1
LIMIT=100 bench 135m llama_fp32 "{model: llama, residual_dtype: fp32}" 2>&1 | tail -1
LIMIT=100 bench 135m llama "{model: llama}" 2>&1 | tail -1
tables
echo "== rows"
for f in $T/*.md; do grep -hE "^\| (llama|flowhn|hf)" $f | sed "s|^|$(basename $f .md) |"; done
