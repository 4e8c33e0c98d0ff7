#!/usr/bin/env bash
# Nineteenth session, call A (nvidia-h200, one GPU): (1) the scan taking Mamba's A_log (A = -exp(A_log) in the
# Gluon kernels, dA_log from dA in the backward): GPU tests against float64; (2) the walking forward's register
# cap, 128 (default) against none, kernel time, one process each; (3) fac_split 1B with the fold against
# 5989284's code (logs/before/src) one after the other, the after row profiled with 40 kernels.
set -u
BUDGET_S=545; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py \
  -k "A_as_its_log or mamba1_mixer_triton" > $OUT/pytest_gpu.log 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest_gpu.log
for cap in 128 0; do
  FLOWHN_SCAN_FWD_MAXNREG=$cap timeout 110 python3 scripts/gpu_mamba1.py --scan --kernel-time --scan-shapes 1,2 \
    --sweep-first 2 > $OUT/scan_cap$cap.log 2>&1; echo "scan cap $cap rc $?"
done
STEPS=5 WARMUP=3 LIMIT=100 bench 1b fac_after "{model: flowhn, split: fac_split}" "profile=true profile_steps=1 profile_top=40"
PYTHONPATH=$PWD/logs/before/src:$PYTHONPATH STEPS=5 WARMUP=3 LIMIT=95 bench 1b fac_before "{model: flowhn, split: fac_split}"
tables
echo "== scan (fwd+bwd ms, kernel time)"; for cap in 128 0; do echo "cap $cap"; grep -E "in place|Scan " $OUT/scan_cap$cap.log; done
echo "== rows"; grep -hE "^\| flowhn" $OUT/tables.md
grep -E "^\| (gemm|ssm scan|copy/cast|elementwise|optimizer|attention)" $OUT/tables.md
