#!/usr/bin/env bash
# Tenth session, call C (nvidia-h200-x2): this session's three changes together (the walking conv kernels as
# the default, the scan backward's dout made contiguous in the traced backward, the bench's kernel table and
# GPU-busy from the profile's trace).
# GPU 0: GPU tests (scan, conv, bench/perf), then mamba 1B before (7fd0066's src and conf) and after, separate
#        processes on one GPU.
# GPU 1: 135M mamba, hymba, mamba2 (CUDA graphs), then 1B mamba2 and hymba.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 530 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 220 python3 -m pytest -q -rf -m gpu tests/test_kernels.py tests/test_triton_conv.py tests/test_bench.py \
    tests/test_perf.py -k "gluon or selective_scan_gpu or conv or bench or cuda" -p no:cacheprovider > $OUT/pytest.log 2>&1
  rc=$?; echo "tests rc $rc"; tail -2 $OUT/pytest.log
  for side in before after; do echo "$(date +%T) mamba 1B $side, $(left) s left"
    [ $side = before ] && pp=logs/calls/before_10/src:$PYTHONPATH || pp=$PYTHONPATH
    (( $(left) > 70 )) && PYTHONPATH=$pp timeout $(( $(left) - 5 > 110 ? 110 : $(left) - 5 )) python3 -m flowhn.bench \
      scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=6 peers=[] 'entries=[{model: mamba}]' \
      output=$T/1b_mamba_$side.md hydra.run.dir=/tmp/m_$side; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) 135m"
  timeout 260 python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=6 peers=[] \
    'entries=[{model: mamba},{model: hymba},{model: mamba2}]' output=$T/135m.md hydra.run.dir=/tmp/c
  echo "$(date +%T) 1b mamba2, hymba; $(left) s left"
  (( $(left) > 80 )) && timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true \
    profile_steps=1 profile_top=6 peers=[] 'entries=[{model: mamba2},{model: hymba}]' output=$T/1b_m2_hymba.md \
    hydra.run.dir=/tmp/d
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-230; done
grep -E "^\*\*|^\| (ssm scan|conv|copy/cast|gemm) " $OUT/tables.md | cut -c1-120
