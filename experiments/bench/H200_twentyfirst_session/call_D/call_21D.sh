#!/usr/bin/env bash
# Twenty-first session, call D (nvidia-h200: one GPU, 16 cores): the mamba-ssm anchor once more. Call C built
# both trimmed packages in 104 s, then its import check imported the extension before torch (libc10.so not
# found); now torch first. Then mamba-ssm's backend tests, its kernels against ours, its Mamba LM in the bench.
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
BUILD_S=200 ANCHOR_S=470 bash scripts/gpu_mamba_ssm_anchor.sh
