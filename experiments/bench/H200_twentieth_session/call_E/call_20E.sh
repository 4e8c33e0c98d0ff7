#!/usr/bin/env bash
# Twentieth session, call E (nvidia-h200, one GPU): every GPU test of the suite with master weights on by
# default on the GPU (train.py's optim.master_weights=auto, the bench's master_weights=auto), including the
# two master-weight GPU tests fixed after call D (the float64 reference now from the fp32 constants the
# kernel holds; the bench-step comparison after one step and by the loss after six).
set -u
BUDGET_S=400; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
timeout 330 python -m pytest -q -m gpu -n 4 -p no:cacheprovider --tb=short --ignore=tests/test_report.py \
  --ignore=tests/test_dashboard_browser.py tests 2>&1 | grep -vE "DEBUG|Warning|warn" > $OUT/pytest_gpu.log
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/pytest_gpu.log | tail -30
