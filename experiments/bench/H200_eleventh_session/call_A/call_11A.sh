#!/usr/bin/env bash
# Eleventh session, call A (nvidia-h200-x2): what the tenth session left unmeasured, with its code (f2cb21b).
# GPU 0: the Mamba-1 scan's GPU tests with the 1-warp backward (FLOWHN_SCAN_BWD_WARPS=1); the conv's two
#        walking kernels at their default tiles timed together (kernel time); mamba 1B and fac_split 1B with
#        the 1-warp backward against 2 warps (separate processes, one after the other).
# GPU 1: 1B mamba2, hymba, shm (the conv's copy fix was not in their rows), then llama with HF Llama compiled.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 480 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
bench1b() {  # $1 tag, $2 entry, $3 peers, $4 cap seconds
  echo "$(date +%T) 1B $1 $2, $(left) s left"
  (( $(left) > 70 )) && timeout $(( $(left) - 5 > $4 ? $4 : $(left) - 5 )) python3 -m flowhn.bench scale=1b \
    steps=5 warmup=3 profile=true profile_steps=1 profile_top=6 "peers=$3" "entries=[$2]" \
    output=$T/1b_$1.md hydra.run.dir=/tmp/m_$RANDOM
}
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) scan tests, 1-warp backward"
  FLOWHN_SCAN_BWD_WARPS=1 timeout 120 python3 -m pytest -q -rf -m gpu tests/test_kernels.py \
    -k "gluon or selective_scan_gpu" -p no:cacheprovider > $OUT/pytest_1warp.log 2>&1
  echo "tests rc $?"; tail -2 $OUT/pytest_1warp.log
  echo "$(date +%T) conv at defaults"
  timeout 70 python3 scripts/gpu_mamba1.py --conv --kernel-time --sweep-budget-s 0 > $OUT/conv.stdout 2>&1
  echo "conv rc $?"; grep -E "walk fwd, walk bwd|floor" $OUT/mamba1.log | head -6
  FLOWHN_SCAN_BWD_WARPS=1 bench1b mamba_w1 "{model: mamba}" "[]" 100
  bench1b mamba_w2 "{model: mamba}" "[]" 100
  FLOWHN_SCAN_BWD_WARPS=1 bench1b fac_w1 "{model: flowhn, split: fac_split}" "[]" 100
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  bench1b mamba2 "{model: mamba2}" "[]" 110
  bench1b hymba "{model: hymba}" "[]" 100
  bench1b shm "{model: shm}" "[]" 100
  bench1b llama "{model: llama}" "[hf_llama_compiled]" 160
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error|floor" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-230; done
grep -hE "^\| [a-zA-Z]" $OUT/tables.md | grep -vE "^\| (model|category|top kernel)" | grep -E "tok|ok" | cut -c1-140
