#!/usr/bin/env bash
# Twenty-first session, call A (nvidia-h200, one GPU): (1) the master-weight GPU tests, with the new one: a
# compiled GPU run validates after fit with its fp32 weights (the dynamo reset never ran on a GPU). (2)
# fused_projections (q, k, v and gate, up as one GEMM each on stacked weights) false then true, same call:
# llama and fac_split at 1B, llama at 135M (CUDA graphs).
set -u
BUDGET_S=570; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 200 python -m pytest -q -m gpu tests/test_master_weights.py tests/test_fused_projections.py -p no:cacheprovider 2>&1 | tail -15 | tee $OUT/pytest_gpu.log
STEPS=5 WARMUP=3 LIMIT=95 bench 1b llama_sep "{model: llama, fused_projections: false}" 2>&1 | tail -2
STEPS=5 WARMUP=3 LIMIT=95 bench 1b llama_fused "{model: llama, fused_projections: true}" 2>&1 | tail -2
STEPS=5 WARMUP=3 LIMIT=95 bench 1b fac_sep "{model: flowhn, split: fac_split, fused_projections: false}" 2>&1 | tail -2
STEPS=5 WARMUP=3 LIMIT=95 bench 1b fac_fused "{model: flowhn, split: fac_split, fused_projections: true}" 2>&1 | tail -2
LIMIT=80 bench 135m llama_sep "{model: llama, fused_projections: false}" 2>&1 | tail -2
LIMIT=80 bench 135m llama_fused "{model: llama, fused_projections: true}" 2>&1 | tail -2
tables
echo "== rows (separate projections, then stacked)"
for f in $T/*_sep.md $T/*_fused.md; do grep -hE "^\| (llama|flowhn)" $f | sed "s|^|$(basename $f .md) |"; done
