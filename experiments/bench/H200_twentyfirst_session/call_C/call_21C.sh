#!/usr/bin/env bash
# Twenty-first session, call C (nvidia-h200: one GPU, 16 cores): issue 13's mamba-ssm anchor again, with
# causal-conv1d trimmed to fp32/bf16 and width 4 (call B: mamba-ssm built in 119 s, causal-conv1d's backward
# with all nine type pairs and three widths not in 330 s). While it builds (CPU), the bench-step
# master-weight GPU test that failed in call A runs again with its traceback (call A had the stacked
# projections on; they are reverted).
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
( timeout 150 python -m pytest -q -m gpu tests/test_master_weights.py -k "bench_step" --tb=long -p no:cacheprovider \
    > $OUT/pytest_gpu.log 2>&1; echo "bench-step test rc $?" >> $OUT/pytest_gpu.log ) &
BUILD_S=250 ANCHOR_S=500 bash scripts/gpu_mamba_ssm_anchor.sh
wait
echo "== bench-step test"; grep -E "passed|failed|rc |Error|^E " $OUT/pytest_gpu.log | tail -15
