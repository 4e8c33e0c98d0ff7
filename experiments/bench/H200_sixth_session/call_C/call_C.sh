#!/usr/bin/env bash
# 135M table over two GPUs of one nvidia-h200-x2, plus the scan checks (logs/calls/scan_checks.sh) on GPU 1
# before its rows. CUDA graphs (compile_mode auto), every row profiled for GPU-busy %.
set -u
B="python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=12"
CUDA_VISIBLE_DEVICES=0 timeout 530 $B peers=[hf_llama_compiled] \
  'entries=[{model: llama},{model: llama, optimizer_in_graph: true},{model: flowhn, split: fac_split},{model: flowhn, split: fac_split, optimizer_in_graph: true},{model: flowhn, split: no_split},{model: flowhn, split: ae_split},{model: flowhn, split: fa_split}]' \
  output=$OUT/135m_gpu0.md hydra.run.dir=/tmp/b0 > $OUT/135m_gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  DEADLINE_S=210 bash logs/calls/scan_checks.sh > $OUT/scan_checks.out 2>&1
  timeout 300 $B peers=[] 'entries=[{model: shm},{model: mamba},{model: mamba2},{model: jamba},{model: hymba}]' \
    output=$OUT/135m_gpu1.md hydra.run.dir=/tmp/b1 > $OUT/135m_gpu1.log 2>&1
) &
wait
cat $OUT/scan_checks.out | tail -25
for g in 0 1; do echo "== GPU $g"; grep -h "Row(" $OUT/135m_gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
