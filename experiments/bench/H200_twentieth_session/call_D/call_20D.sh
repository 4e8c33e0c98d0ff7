#!/usr/bin/env bash
# Twentieth session, call D (nvidia-h200, one GPU): the master-weight GPU tests again, with their tracebacks
# (two failed in call C: a tolerance under fp32 rounding of cancelling terms; the other unread), then the
# 135M rows (CUDA graphs; the optimizer outside them) with master_weights=false and true, alternating.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 150 python -m pytest -q -m gpu tests/test_master_weights.py -p no:cacheprovider --tb=short 2>&1 > $OUT/pytest_gpu.log
grep -vE "Warning|warn" $OUT/pytest_gpu.log | tail -60
bench 135m llama_fp32 "{model: llama}" master_weights=false 2>&1 | tail -1
bench 135m llama_master "{model: llama}" master_weights=true 2>&1 | tail -1
bench 135m fac_fp32 "{model: flowhn, split: fac_split}" master_weights=false 2>&1 | tail -1
bench 135m fac_master "{model: flowhn, split: fac_split}" master_weights=true 2>&1 | tail -1
bench 135m mamba_fp32 "{model: mamba}" master_weights=false 2>&1 | tail -1
bench 135m mamba_master "{model: mamba}" master_weights=true 2>&1 | tail -1
tables
echo "== rows (fp32 weights, then bf16 weights + masters)"
for t in llama_fp32 llama_master fac_fp32 fac_master mamba_fp32 mamba_master; do grep -hE "^\| (llama|flowhn|mamba)" $T/135m_$t.md | sed "s/^/$t /"; done
