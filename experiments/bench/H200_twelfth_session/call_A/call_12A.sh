#!/usr/bin/env bash
# Twelfth session, call A (nvidia-h200-x2).
# Mamba-2: the pass over chunks hands on its states in bf16 (mamba-ssm's convention) where c06dd6f kept
# fp32. GPU 0 = this code: gpu_ssd.py bf16 float64 checks + kernel timings, mamba2 1B with SSD recompute
# (the 1B default) and without, mamba2 135M. GPU 1 = c06dd6f (logs/calls/before_12 first on PYTHONPATH):
# the same timings and rows, at the same time; then Mamba-1's remade scan inputs, mamba 135M and 1B,
# model.ssm_remake_scan_inputs false then true (this option is the same in both trees).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 540 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
bench() {  # $1 scale, $2 tag, $3 entry, $4 extra args
  local limit=100; [ "$1" = 1b ] && limit=130
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=[] "entries=[$3]" ${4:-} output=$T/$1_$2.md hydra.run.dir=/tmp/r_$RANDOM
}
PROF="profile=true profile_steps=1 profile_top=8"
(
  export CUDA_VISIBLE_DEVICES=0; mkdir -p $OUT/after
  echo "$(date +%T) gpu_ssd bf16 checks + timing"
  OUT=$OUT/after timeout 250 python3 scripts/gpu_ssd.py --no-old --dtypes bfloat16 --seed 1 > $OUT/after/ssd.stdout 2>&1
  echo "gpu_ssd rc $?"
  STEPS=5 WARMUP=3 bench 1b after_mamba2_recompute "{model: mamba2}" "$PROF"
  STEPS=5 WARMUP=3 bench 1b after_mamba2_keep "{model: mamba2, model.ssd_recompute: false}" "$PROF"
  bench 135m after_mamba2 "{model: mamba2}"
  bench 135m hymba_remake_false "{model: hymba}"
  bench 135m hymba_remake_true "{model: hymba, model.ssm_remake_scan_inputs: true}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; export PYTHONPATH=$PWD/logs/calls/before_12/src:$PYTHONPATH; mkdir -p $OUT/before
  echo "$(date +%T) gpu_ssd timing (before)"
  timeout 120 python3 scripts/gpu_ssd.py --no-old --timing bfloat16 --seed 1 > $OUT/before/ssd_timing.stdout 2>&1
  echo "gpu_ssd timing rc $?"
  STEPS=5 WARMUP=3 bench 1b before_mamba2_recompute "{model: mamba2}" "$PROF"
  bench 135m before_mamba2 "{model: mamba2}"
  bench 135m mamba_remake_false "{model: mamba}"
  bench 135m mamba_remake_true "{model: mamba, model.ssm_remake_scan_inputs: true}"
  STEPS=5 WARMUP=3 bench 1b mamba_remake_false "{model: mamba}"
  STEPS=5 WARMUP=3 bench 1b mamba_remake_true "{model: mamba, model.ssm_remake_scan_inputs: true}"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
echo "== ssd after"; grep -E "PASS|FAIL|CRASH|recompute=" $OUT/after/ssd.stdout | cut -c1-150 | tail -24
echo "== ssd before"; grep -E "recompute=" $OUT/before/ssd_timing.stdout | cut -c1-150
