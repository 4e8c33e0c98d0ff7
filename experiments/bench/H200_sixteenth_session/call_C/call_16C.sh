#!/usr/bin/env bash
# Sixteenth session, call C (nvidia-h200): the conv + x_proj op's GPU tests (call B's ran out of time before
# four of them); fac_split 1B this code / 424a064 (logs/calls/base), one after the other; this code's
# fac_split, shm, hymba, jamba at 135M (the in_proj split and the conv + x_proj op reach every Mamba-1 mixer).
set -u
BUDGET_S=555; source scripts/gpu_call_lib.sh
echo "$(date +%T) gpu tests"
timeout 110 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_triton_conv.py -k "conv_proj_gpu" > $OUT/pytest.log 2>&1
echo "pytest rc $?"; tail -3 $OUT/pytest.log
STEPS=5 WARMUP=3 LIMIT=85 bench 1b fac_new "{model: flowhn, split: fac_split}"
( export PYTHONPATH=$PWD/logs/calls/base/src:$PYTHONPATH; cd logs/calls/base
  STEPS=5 WARMUP=3 LIMIT=85 bench 1b fac_base "{model: flowhn, split: fac_split}" )
LIMIT=60 bench 135m fac_new "{model: flowhn, split: fac_split}"
LIMIT=60 bench 135m shm_new "{model: shm}"
LIMIT=60 bench 135m hymba_new "{model: hymba}"
LIMIT=100 bench 135m jamba_new "{model: jamba}"
tables
echo "== rows"; grep -hE "^\| (mamba|flowhn|shm|hymba|jamba)" $OUT/tables.md
