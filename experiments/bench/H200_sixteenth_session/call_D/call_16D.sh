#!/usr/bin/env bash
# Sixteenth session, call D (nvidia-h200): every Mamba-1 scan GPU test on this code (the Gluon kernels'
# KEEP=False path was restructured too); then mamba 135M at its new default (states kept) and 424a064's
# (logs/calls/base), one after the other on this GPU.
set -u
BUDGET_S=465; source scripts/gpu_call_lib.sh
echo "$(date +%T) gpu tests"
timeout 250 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels.py -k "selective_scan or gluon or mamba1" \
  > $OUT/pytest.log 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest.log
LIMIT=65 bench 135m mamba_new "{model: mamba}"
( export PYTHONPATH=$PWD/logs/calls/base/src:$PYTHONPATH; cd logs/calls/base
  LIMIT=65 bench 135m mamba_base "{model: mamba}" )
tables
echo "== rows"; grep -hE "^\| mamba" $OUT/tables.md
