#!/usr/bin/env bash
# Twenty-second session, call A (nvidia-h200): residual_dtype=fp32 (today) against autocast (a bf16 residual
# stream), one process a row: llama and fac_split at 1B, HF Llama compiled with each; the new GPU tests first.
set -u
BUDGET_S=575; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 150 python -m pytest -q -s -m gpu tests/test_residual_dtype.py -p no:cacheprovider --tb=short > $OUT/pytest_gpu.log 2>&1
tail -5 $OUT/pytest_gpu.log; grep "^{" $OUT/pytest_gpu.log
STEPS=5 WARMUP=3 LIMIT=90 bench 1b llama_fp32 "{model: llama}" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=90 bench 1b llama_bf16 "{model: llama, residual_dtype: autocast}" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=90 bench 1b fac_fp32 "{model: flowhn, split: fac_split}" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=90 bench 1b fac_bf16 "{model: flowhn, split: fac_split, residual_dtype: autocast}" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=90 PEERS=[hf_llama_compiled] bench 1b hf_fp32 "" 2>&1 | tail -1
STEPS=5 WARMUP=3 LIMIT=90 PEERS=[hf_llama_compiled] bench 1b hf_bf16 "" residual_dtype=autocast 2>&1 | tail -1
tables
echo "== rows"
for f in $T/*.md; do grep -hE "^\| (llama|flowhn|hf)" $f | sed "s|^|$(basename $f .md) |"; done
