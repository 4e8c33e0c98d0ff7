#!/usr/bin/env bash
# Twentieth session, call C (nvidia-h200, one GPU): bf16 Linear weights with fp32 masters in the optimizer
# (MasterWeightAdamW, optim.master_weights / the bench's master_weights). Its GPU tests (the Triton update
# against float64 at sizes off its 4096-element tile; the bench's compiled step against fp32 weights), then
# llama and fac_split 1B with master_weights=false and true, alternating, in this call.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 150 python -m pytest -q -m gpu tests/test_master_weights.py -p no:cacheprovider 2>&1 | tail -4 | tee $OUT/pytest_gpu.log
STEPS=5 WARMUP=3 LIMIT=95 bench 1b llama_fp32 "{model: llama}" master_weights=false 2>&1 | tail -2
STEPS=5 WARMUP=3 LIMIT=95 bench 1b llama_master "{model: llama}" master_weights=true 2>&1 | tail -2
STEPS=5 WARMUP=3 LIMIT=95 bench 1b fac_fp32 "{model: flowhn, split: fac_split}" master_weights=false 2>&1 | tail -2
STEPS=5 WARMUP=3 LIMIT=95 bench 1b fac_master "{model: flowhn, split: fac_split}" master_weights=true 2>&1 | tail -2
tables
echo "== rows (fp32 weights, then bf16 weights + masters)"
for t in llama_fp32 llama_master fac_fp32 fac_master; do grep -hE "^\| (llama|flowhn)" $T/1b_$t.md | sed "s/^/$t /"; done
