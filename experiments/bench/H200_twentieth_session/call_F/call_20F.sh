#!/usr/bin/env bash
# Twentieth session, call F (nvidia-h200, one GPU): the bench's GPU test that failed in call E (its
# optimizer_in_graph row got the bench's master weights; such a row now keeps fp32 weights and torch's
# AdamW), and the master-weight GPU tests again.
set -u
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python -m pytest -q -m gpu -n 2 -p no:cacheprovider --tb=short tests/test_bench.py tests/test_master_weights.py \
  > $OUT/pytest_gpu.log 2>&1; echo "pytest rc $?"
grep -E "^(FAILED|ERROR)|passed|failed" $OUT/pytest_gpu.log | tail -5
