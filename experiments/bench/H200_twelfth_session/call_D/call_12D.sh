#!/usr/bin/env bash
# Twelfth session, call D (nvidia-h200-x2), this code. GPU 0: the GPU test of what a compiled llama keeps
# (its expectation corrected after call C), then jamba 135M (cut by call C's limit). GPU 1: llama 135M, then
# HF Llama compiled 135M, one process each, same GPU (call C's limit cut HF).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 290 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
bench() {  # $1 tag, $2 entries, $3 peers
  echo "$(date +%T) 135m $1, $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 5 > 140 ? 140 : $(left) - 5 )) python3 -m flowhn.bench scale=135m \
    steps=20 warmup=6 peers=$3 "entries=$2" output=$T/135m_$1.md hydra.run.dir=/tmp/r_$RANDOM
}
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 90 python3 -m pytest -q -rf -m gpu tests/test_activation_memory.py -p no:cacheprovider > $OUT/pytest_memory.log 2>&1
  echo "memory test rc $?"; tail -1 $OUT/pytest_memory.log
  bench jamba "[{model: jamba}]" "[]"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  bench llama "[{model: llama}]" "[]"
  bench hf "[]" "[hf_llama_compiled]"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-180; done
