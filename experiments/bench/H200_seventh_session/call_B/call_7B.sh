#!/usr/bin/env bash
# Seventh session, call B (nvidia-h200-x2): the 1B table with this session's defaults, one bench process per GPU,
# every row profiled (categories, top kernels). ENV_B: extra environment for both (the A/B winners).
set -u
B="python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=15"
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) start"
  env ${ENV_B:-} timeout 560 $B peers=[] 'entries=[{model: flowhn, split: fac_split},{model: flowhn, split: no_split},{model: shm},{model: mamba}]' \
    output=$T/1b_gpu0.md hydra.run.dir=/tmp/b0; echo "$(date +%T) done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) start"
  env ${ENV_B:-} timeout 560 $B peers=[hf_llama_compiled] 'entries=[{model: jamba},{model: llama},{model: mamba2},{model: hymba}]' \
    output=$T/1b_gpu1.md hydra.run.dir=/tmp/b1; echo "$(date +%T) done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|Error|Traceback" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-220; done
