#!/usr/bin/env bash
# Thirteenth session, call C (nvidia-h200-x2): the SSD's dx kernel with its tiles loaded in storage dtype and
# used up early (fewer spills). GPU 0 = this code, GPU 1 = HEAD 63c05dd (logs/calls/before_13), at the same time.
# GPU 0: SSD GPU tests (float64 checks); SSD kernel times; mamba2 135M and 1B rows.
# GPU 1: the same times and rows with the code before.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 560 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
bench() {  # $1 scale, $2 tag, $3 entry, $4 extra args
  local limit=${LIMIT:-90}
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=${PEERS:-[]} "entries=[$3]" ${4:-} output=$T/$1_$2.md hydra.run.dir=/tmp/r_$RANDOM
}
kernels() {  # $1 tag
  mkdir -p $OUT/$1; OUT=$OUT/$1 timeout 100 python3 scripts/gpu_library_kernels.py --parts ssd --no-checks --no-fla \
    > $OUT/$1/ssd.stdout 2>&1; echo "kernels $1 rc $?"
}
(
  export CUDA_VISIBLE_DEVICES=0
  kernels after
  bench 135m mamba2_after "{model: mamba2}"
  LIMIT=140 STEPS=5 WARMUP=3 bench 1b mamba2_after "{model: mamba2}" "profile=true profile_steps=1 profile_top=8"
  echo "$(date +%T) SSD GPU tests"
  timeout $(( $(left) - 5 )) python3 -m pytest -q -rf -m gpu tests/test_triton_ssd.py -p no:cacheprovider > $OUT/pytest_ssd.log 2>&1
  echo "ssd tests rc $?"; tail -2 $OUT/pytest_ssd.log
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  export PYTHONPATH=$PWD/logs/calls/before_13/src:$PYTHONPATH
  kernels before
  bench 135m mamba2_before "{model: mamba2}"
  LIMIT=140 STEPS=5 WARMUP=3 bench 1b mamba2_before "{model: mamba2}" "profile=true profile_steps=1 profile_top=8"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
for t in after before; do echo "== $t"; grep -E "kernels .* ms" $OUT/$t/library_ssd.log | cut -c1-260; done
grep -hE "_chunk|_state_pass" $OUT/tables.md | cut -c1-120 | head -20
