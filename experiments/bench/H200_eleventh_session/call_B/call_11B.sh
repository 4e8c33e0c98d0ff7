#!/usr/bin/env bash
# Eleventh session, call B (nvidia-h200-x2): what the backward keeps. The RMSNorm keeps x̂ in bf16 (not the
# fp32 residual), SwiGLU's silu(gate)·up and Mamba-1's Δ are recomputed in the backward. 135M rows (CUDA
# graphs) with this code on GPU 0 and with f2cb21b's (logs/calls/before_11 first on PYTHONPATH) on GPU 1, at
# the same time; peak memory and tok/s. No profile (time).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 500 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
rows() {  # $1 tag; entries follow
  local tag=$1; shift
  for e in "$@"; do
    echo "$(date +%T) 135M $tag $e, $(left) s left"
    (( $(left) > 45 )) && timeout $(( $(left) - 5 > 100 ? 100 : $(left) - 5 )) python3 -m flowhn.bench scale=135m \
      steps=20 warmup=6 peers=[] "entries=[$e]" output=$T/135m_${tag}_$(echo $e | tr -dc a-z_).md \
      hydra.run.dir=/tmp/r_$RANDOM
  done
}
ENTRIES=("{model: llama}" "{model: mamba}" "{model: hymba}" "{model: shm}" "{model: flowhn, split: no_split}"
         "{model: jamba}" "{model: flowhn, split: fac_split}" "{model: mamba2}")
( export CUDA_VISIBLE_DEVICES=0; rows after "${ENTRIES[@]}"; echo "$(date +%T) gpu0 done" ) > $OUT/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1; export PYTHONPATH=$PWD/logs/calls/before_11/src:$PYTHONPATH
  rows before "${ENTRIES[@]}"; echo "$(date +%T) gpu1 done" ) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
