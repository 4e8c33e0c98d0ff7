#!/usr/bin/env bash
# Eleventh session, call C (nvidia-h200-x2): the norms keeping x̂ in bf16 and SwiGLU's product recomputed, at
# 1B: this code on GPU 0, f2cb21b's (logs/calls/before_11 first on PYTHONPATH) on GPU 1, at the same time;
# then HF Llama compiled at 135M (for llama's ratio; the before side's harness).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 500 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
rows() {  # $1 tag; entries follow
  local tag=$1; shift
  for e in "$@"; do
    echo "$(date +%T) 1B $tag $e, $(left) s left"
    (( $(left) > 70 )) && timeout $(( $(left) - 5 > 110 ? 110 : $(left) - 5 )) python3 -m flowhn.bench scale=1b \
      steps=5 warmup=3 peers=[] "entries=[$e]" output=$T/1b_${tag}_$(echo $e | tr -dc a-z_).md \
      hydra.run.dir=/tmp/r_$RANDOM
  done
}
ENTRIES=("{model: hymba}" "{model: llama}" "{model: flowhn, split: fac_split}" "{model: mamba}" "{model: shm}")
( export CUDA_VISIBLE_DEVICES=0; rows after "${ENTRIES[@]}"; echo "$(date +%T) gpu0 done" ) > $OUT/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1; export PYTHONPATH=$PWD/logs/calls/before_11/src:$PYTHONPATH
  rows before "${ENTRIES[@]:0:4}"
  echo "$(date +%T) 135M hf_llama_compiled, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > 90 ? 90 : $(left) - 5 )) python3 -m flowhn.bench scale=135m \
    steps=20 warmup=6 peers=[hf_llama_compiled] "entries=[]" output=$T/135m_hf.md hydra.run.dir=/tmp/h_$RANDOM
  echo "$(date +%T) gpu1 done" ) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
