#!/usr/bin/env bash
# Twelfth session, call B (nvidia-h200-x2), this code (bf16 SSD states, mamba2 1B keeps its chunk states,
# mamba 135M remakes its scan inputs).
# GPU 0: the SSD's GPU tests; mamba2 1B profiled to 40 kernels (its "copy/cast" 39 ms a step, by name);
#        the conv's walking pair at default tiles, then its tile sweeps (kernel time).
# GPU 1: 135M llama with HF Llama compiled (same process), hymba and mamba (the final lean norm and
#        remake defaults); hymba 1B with CUDA graphs (compile_mode reduce-overhead) against the default.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 545 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
bench() {  # $1 scale, $2 tag, $3 entry, $4 extra args
  local limit=100; [ "$1" = 1b ] && limit=140
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=${PEERS:-[]} "entries=[$3]" ${4:-} output=$T/$1_$2.md hydra.run.dir=/tmp/r_$RANDOM
}
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) ssd GPU tests"
  timeout 200 python3 -m pytest -q -rf -m gpu tests/test_triton_ssd.py -p no:cacheprovider > $OUT/pytest_ssd.log 2>&1
  echo "ssd tests rc $?"; tail -2 $OUT/pytest_ssd.log
  STEPS=5 WARMUP=3 bench 1b mamba2_top40 "{model: mamba2}" "profile=true profile_steps=1 profile_top=40"
  echo "$(date +%T) conv, $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 scripts/gpu_mamba1.py --conv --kernel-time \
    --sweep-budget-s $(( $(left) - 110 > 20 ? $(left) - 110 : 20 )) > $OUT/conv.stdout 2>&1
  echo "conv rc $?"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  PEERS=[hf_llama_compiled] bench 135m llama_hf "{model: llama}"
  bench 135m hymba "{model: hymba}"
  bench 135m mamba "{model: mamba}"
  STEPS=5 WARMUP=3 bench 1b hymba "{model: hymba}"
  STEPS=5 WARMUP=3 bench 1b hymba_graphs "{model: hymba, compile_mode: reduce-overhead}"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "walk fwd, walk bwd|floor\)|best " $OUT/conv.stdout | head -12
grep -E "^\| \`" $T/1b_mamba2_top40.md | head -40 | cut -c1-120
