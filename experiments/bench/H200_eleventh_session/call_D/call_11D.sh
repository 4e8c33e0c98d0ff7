#!/usr/bin/env bash
# Eleventh session, call D (nvidia-h200-x2): the committed code (23c95fe, scale.lean_activations).
# GPU 0: GPU tests of the paths the lean activations run through (CUDA-graph training steps, MoE dispatch,
#        branch streams, the fused loss). GPU 1: 135M llama and mamba (lean on), 1B llama (lean off).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 400 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
( export CUDA_VISIBLE_DEVICES=0
  timeout 330 python3 -m pytest -q -rf -m gpu tests/test_cuda_graphs.py tests/test_moe.py tests/test_branch_streams.py \
    tests/test_fused_loss.py -p no:cacheprovider > $OUT/pytest.log 2>&1
  echo "tests rc $?"; tail -3 $OUT/pytest.log ) > $OUT/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1
  for e in "135m {model: llama}" "135m {model: mamba}" "1b {model: llama}"; do
    s=${e%% *}; ent=${e#* }
    echo "$(date +%T) $s $ent, $(left) s left"
    (( $(left) > 60 )) && timeout $(( $(left) - 5 > 110 ? 110 : $(left) - 5 )) python3 -m flowhn.bench scale=$s \
      steps=$([ $s = 1b ] && echo 5 || echo 20) warmup=$([ $s = 1b ] && echo 3 || echo 6) peers=[] "entries=[$ent]" \
      output=$T/${s}_$(echo $ent | tr -dc a-z_).md hydra.run.dir=/tmp/r_$RANDOM
  done ) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
