#!/usr/bin/env bash
# Seventh session, call D (nvidia-h200-x2): the 135M bench with this session's defaults (Gluon scan walking
# the sequence, prefetching SSD state pass, RoPE tables), CUDA graphs, profiled; then on GPU 1 mamba 1B's
# peak memory with FLOWHN_SCAN_WALK=sequence and =chunks, each the first row of its own process.
set -u
started=$(date +%s); left() { echo $(( 470 - ($(date +%s) - started) )); }
B="python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=8"
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) start"
  timeout 440 $B peers=[hf_llama_compiled] 'entries=[{model: llama},{model: flowhn, split: fac_split},{model: flowhn, split: no_split},{model: shm}]' \
    output=$T/135m_gpu0.md hydra.run.dir=/tmp/b0; echo "$(date +%T) done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) start"
  timeout 290 $B peers=[] 'entries=[{model: mamba},{model: mamba2},{model: jamba},{model: hymba}]' \
    output=$T/135m_gpu1.md hydra.run.dir=/tmp/b1
  for w in sequence chunks; do echo "$(date +%T) mamba 1B memory, walk $w, $(left) s left"
    (( $(left) > 40 )) && FLOWHN_SCAN_WALK=$w timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=3 warmup=2 profile=false \
      peers=[] 'entries=[{model: mamba}]' output=$T/mem_$w.md hydra.run.dir=/tmp/m_$w; done
  echo "$(date +%T) done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|WARNING|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
