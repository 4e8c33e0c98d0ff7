#!/usr/bin/env bash
# Tenth session, call D (nvidia-h200-x2): the conv backward's dout made contiguous in the traced backward too
# (call C showed a second eager strided copy a layer, 0.42 ms at mamba 1B), and the other rows' tables with
# this session's code and the trace-based kernel table / GPU busy.
# GPU 0: GPU tests (conv, Mamba-1 scan), then 1B mamba, fac_split, no_split.
# GPU 1: the bench's own GPU test (profile tables from the trace), then 135M mamba, fac_split, no_split, shm,
#        jamba, llama (CUDA graphs).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 470 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 170 python3 -m pytest -q -rf -m gpu tests/test_kernels.py tests/test_triton_conv.py \
    -k "gluon or selective_scan_gpu or conv" -p no:cacheprovider > $OUT/pytest.log 2>&1
  echo "tests rc $?"; tail -2 $OUT/pytest.log
  for e in "{model: mamba}" "{model: flowhn, split: fac_split}" "{model: flowhn, split: no_split}"; do
    echo "$(date +%T) 1B $e, $(left) s left"
    (( $(left) > 75 )) && timeout $(( $(left) - 5 > 110 ? 110 : $(left) - 5 )) python3 -m flowhn.bench scale=1b \
      steps=5 warmup=3 profile=true profile_steps=1 profile_top=6 peers=[] "entries=[$e]" \
      output=$T/1b_$(echo $e | tr -dc a-z_).md hydra.run.dir=/tmp/m_$RANDOM; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) bench gpu test"
  timeout 150 python3 -m pytest -q -rf -m gpu tests/test_bench.py -p no:cacheprovider > $OUT/pytest_bench.log 2>&1
  echo "bench test rc $?"; tail -2 $OUT/pytest_bench.log
  for e in "{model: mamba}" "{model: flowhn, split: fac_split}" "{model: flowhn, split: no_split}" "{model: shm}" \
           "{model: jamba}" "{model: llama}"; do
    echo "$(date +%T) 135M $e, $(left) s left"
    (( $(left) > 50 )) && timeout $(( $(left) - 5 > 90 ? 90 : $(left) - 5 )) python3 -m flowhn.bench scale=135m \
      steps=20 warmup=6 profile=true profile_steps=1 profile_top=6 peers=[] "entries=[$e]" \
      output=$T/135m_$(echo $e | tr -dc a-z_).md hydra.run.dir=/tmp/s_$RANDOM; done
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-230; done
grep -E "^\*\*|elementwise_kernel<128, 4" $OUT/tables.md | cut -c1-120
