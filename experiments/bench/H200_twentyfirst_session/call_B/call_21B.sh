#!/usr/bin/env bash
# Twenty-first session, call B (nvidia-h200: one GPU, 16 cores): issue 13's mamba-ssm anchor. The trimmed
# build compiles ~10 CUDA files (sm_90 only, mamba-ssm's fp32/bf16 real scan, causal-conv1d), fewer than the
# 16 cores, so the one-GPU kind may build it as the 64-core kind would.
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader; nproc; free -g | head -2
BUILD_S=330 bash scripts/gpu_mamba_ssm_anchor.sh
