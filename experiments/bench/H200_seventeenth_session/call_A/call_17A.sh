#!/usr/bin/env bash
# Seventeenth session, call A (nvidia-h200, one GPU): (1) the GPU tests the sixteenth session fixed but did
# not re-run (channel-last scan against float64 with its spy fixed; the Mamba-1 mixer keep on/off);
# (2) fac_split 1B at its default compile and with CUDA graphs (reduce-overhead: never measured at 1B for
# FAC, which ran 95 % GPU-busy); (3) llama 1B at its default compile and with inductor's GEMM autotuning
# (max-autotune-no-cudagraphs: Triton GEMM templates against cuBLAS, epilogue fusion), one after the other.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
echo "$(date +%T) gpu tests"
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py \
  -k "channel_last_matches_reference or mamba1_mixer" > $OUT/pytest.log 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest.log
STEPS=5 WARMUP=3 LIMIT=80 bench 1b fac_default "{model: flowhn, split: fac_split}"
STEPS=5 WARMUP=3 LIMIT=100 bench 1b fac_graphs "{model: flowhn, split: fac_split, compile_mode: reduce-overhead}"
STEPS=5 WARMUP=3 LIMIT=75 bench 1b llama_default "{model: llama}"
STEPS=5 WARMUP=3 LIMIT=200 bench 1b llama_autotune "{model: llama, compile_mode: max-autotune-no-cudagraphs}" > $OUT/autotune.log 2>&1
tail -5 $OUT/autotune.log
tables
echo "== rows"; grep -hE "^\| (flowhn|llama)" $OUT/tables.md
