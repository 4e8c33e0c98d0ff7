#!/usr/bin/env bash
# Twelfth session, call C (nvidia-h200-x2), this code: the lean norm rounds x̂ to bf16 before its weight again
# (c06dd6f's norm, whose output was weight·x̂ in fp32, kept x̂ and the next matmul's input on the GPU).
# GPU 0: the new GPU test of what a compiled llama keeps; 135M llama with HF Llama compiled (same process),
#        hymba, mamba, mamba2.
# GPU 1: c06dd6f's SSD (fp32 states) float64 checks with the seed of call A (its dA error against the bf16
#        states'), then 135M shm, no_split, fac_split, jamba with this code.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 520 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
bench() {  # $1 scale, $2 tag, $3 entry, $4 extra args
  local limit=${LIMIT:-90}
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=${PEERS:-[]} "entries=[$3]" ${4:-} output=$T/$1_$2.md hydra.run.dir=/tmp/r_$RANDOM
}
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) activation-memory GPU test"
  timeout 120 python3 -m pytest -q -rf -m gpu tests/test_activation_memory.py -p no:cacheprovider > $OUT/pytest_memory.log 2>&1
  echo "memory test rc $?"; tail -2 $OUT/pytest_memory.log
  LIMIT=190 PEERS=[hf_llama_compiled] bench 135m llama_hf "{model: llama}"
  bench 135m hymba "{model: hymba}"
  bench 135m mamba "{model: mamba}"
  bench 135m mamba2 "{model: mamba2}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; mkdir -p $OUT/ssd_before
  echo "$(date +%T) c06dd6f SSD checks, seed 1"
  PYTHONPATH=$PWD/logs/calls/before_12/src:$PYTHONPATH OUT=$OUT/ssd_before timeout 130 \
    python3 scripts/gpu_ssd.py --no-old --dtypes bfloat16 --seed 1 > $OUT/ssd_before/ssd.stdout 2>&1
  echo "ssd before rc $?"
  bench 135m shm "{model: shm}"
  bench 135m no_split "{model: flowhn, split: no_split}"
  bench 135m fac_split "{model: flowhn, split: fac_split}"
  bench 135m jamba "{model: jamba}"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-180; done
grep -E "PASS|FAIL|CRASH" $OUT/ssd_before/ssd.stdout | cut -c1-150
