#!/usr/bin/env bash
# Nineteenth session, call C (nvidia-h200, one GPU): (1) the scan's and the conv's backward ops return their
# partial sums (dA, dD, dbias; dweight, dbias) and fp32 dB, dC, summed and cast in the traced backward: GPU tests
# against float64; (2) fac_split 1B with it, profiled (40 kernels: ATen's reduce_kernel was 97 launches a
# step in call A); (3) cuBLAS's memsets: scripts/gpu_gemm_memsets.py, llama 1B's GEMMs under four settings.
set -u
BUDGET_S=545; source scripts/gpu_call_lib.sh
timeout 100 python3 scripts/gpu_gemm_memsets.py > $OUT/gemm_memsets.log 2>&1; echo "memsets rc $?"
timeout 210 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_conv.py tests/test_kernels.py \
  -k "conv or A_as_its_log or mamba1_mixer or (triton_selective_scan_gpu and float32)" > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $?"; tail -3 $OUT/pytest_gpu.log
STEPS=5 WARMUP=3 LIMIT=110 bench 1b fac_partials "{model: flowhn, split: fac_split}" "profile=true profile_steps=1 profile_top=40"
tables
echo "== memsets"; cat $OUT/gemm_memsets.log | grep -v "^$" | tail -30
echo "== rows"; grep -hE "^\| flowhn" $OUT/tables.md
grep -E "^\| (gemm|ssm scan|copy/cast|elementwise|optimizer|conv|other) |reduce_kernel|Memset|GPU kernel time" $OUT/tables.md
