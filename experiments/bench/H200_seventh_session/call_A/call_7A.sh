#!/usr/bin/env bash
# Seventh session, call A (nvidia-h200-x2): the three A/Bs written last session, each pair in separate
# processes on one GPU. GPU 0: state-pass kernels, mamba2 135M loop vs prefetch, llama 1B RoPE tables off/on.
# GPU 1: mamba and fac_split 1B with the Triton vs the Gluon scan.
set -u
B="python3 -m flowhn.bench steps=10 warmup=3 profile=true profile_steps=1 profile_top=15 peers=[]"
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) state pass"; timeout 90 python3 scripts/gpu_ssd.py --state-pass > /tmp/state_pass.out 2>&1; tail -30 /tmp/state_pass.out
  for v in loop prefetch; do echo "$(date +%T) mamba2 $v"
    FLOWHN_SSD_STATE_PASS=$v timeout 150 $B scale=135m steps=20 warmup=6 'entries=[{model: mamba2}]' output=$T/mamba2_$v.md hydra.run.dir=/tmp/r_$v; done
  for v in 0 1; do echo "$(date +%T) rope $v"
    FLOWHN_ROPE_TABLES=$v timeout 170 $B scale=1b 'entries=[{model: llama}]' output=$T/llama_rope$v.md hydra.run.dir=/tmp/r_rope$v; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  for v in triton gluon; do echo "$(date +%T) scan $v"
    FLOWHN_SCAN_KERNELS=$v timeout 260 $B scale=1b steps=5 'entries=[{model: mamba},{model: flowhn, split: fac_split}]' output=$T/scan_$v.md hydra.run.dir=/tmp/r_$v; done
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|^\||FAIL|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-220; done
