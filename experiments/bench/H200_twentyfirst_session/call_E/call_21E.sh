#!/usr/bin/env bash
# Twenty-first session, call E (nvidia-h200: one GPU, 16 cores): call D's bench row "mamba" ran our model on
# mamba-ssm's kernels (ssm_backend=auto then preferred mamba_ssm when it imported); auto now takes ours. The
# anchor again: build, then the bench (our mamba 1B on our kernels against mamba-ssm's MambaLMHeadModel,
# same call), then mamba-ssm's backend tests with the SSD's TF32 tolerance.
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
BUILD_S=150 ANCHOR_S=300 ANCHOR_STAGES=bench bash scripts/gpu_mamba_ssm_anchor.sh
export PYTHONPATH=/tmp/mamba_site:$PYTHONPATH
timeout 75 python3 -m pytest -q -rs -m gpu tests/test_kernels.py -k mamba_ssm -p no:cacheprovider > $OUT/pytest_mamba_ssm.log 2>&1
echo "mamba_ssm tests rc $?"; tail -3 $OUT/pytest_mamba_ssm.log
