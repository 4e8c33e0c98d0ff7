#!/usr/bin/env bash
# Eighteenth session, call C (nvidia-h200): call B's keep-off training runs ended above the kept-states and
# PyTorch runs at every seed (seed 0 +0.6, 1 +0.18, 2 +0.02-0.06 in validation loss at step 199). One step's
# gradients of that model (FlowHN 135M FAC_Split) by path against the float64 PyTorch path, then the scan's
# float64 GPU tests.
set -u
export PYTHONUNBUFFERED=1
timeout 150 python3 scripts/gpu_grad_parity.py > $OUT/grad_parity.txt 2>&1; echo "grad parity rc $?"
timeout 120 python3 scripts/gpu_grad_parity.py --batch 2 experiment=kernel_parity split=no_split >> $OUT/grad_parity.txt 2>&1; echo "grad parity no_split rc $?"
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels.py -k "scan" -x -p no:cacheprovider > $OUT/pytest_scan.txt 2>&1; echo "pytest rc $?"
tail -3 $OUT/pytest_scan.txt
grep -v "^$" $OUT/grad_parity.txt | grep -E "^\||Mamba-1|worst" 
