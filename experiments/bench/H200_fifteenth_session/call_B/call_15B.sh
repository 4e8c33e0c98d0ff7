#!/usr/bin/env bash
# Fifteenth session, call B (nvidia-h200-x2): this code (GPU 0) against c02855a (GPU 1, logs/calls/base,
# run from there so its conf/ is used), the rows in pairs at the same time. This code's backward takes
# channel-last memory in the row-major tiles' layout from 512 steps (cl_vector (8, 0)) and reads dz's gate
# factor and softplus's slope from shared memory.
# Pairs: mamba 135M (this side profiled) | mamba 135M; fac_split 1B | fac_split 1B; jamba 135M | jamba 135M;
# then this side alone: mamba 135M with model.ssm_remake_scan_inputs=false, mamba 1B.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
rm -f /tmp/sync_*
ROOT=$PWD
pair() {  # pair NAME: wait (while time is left) until the other GPU reaches NAME too
  touch /tmp/sync_${GPU}_$1; local other=$((1 - GPU))
  while [ ! -f /tmp/sync_${other}_$1 ] && (( $(left) > 60 )); do sleep 1; done
}
(
  export CUDA_VISIBLE_DEVICES=0 GPU=0
  pair mamba; LIMIT=100 bench 135m mamba_new "{model: mamba}" "profile=true profile_steps=1 profile_top=40"
  pair fac1b; LIMIT=120 STEPS=5 WARMUP=3 bench 1b fac_new "{model: flowhn, split: fac_split}"
  pair jamba; LIMIT=150 bench 135m jamba_new "{model: jamba}"
  LIMIT=85 bench 135m mamba_keep_new "{model: mamba, model.ssm_remake_scan_inputs: false}"
  LIMIT=110 STEPS=5 WARMUP=3 bench 1b mamba1b_new "{model: mamba}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1 GPU=1
  cd logs/calls/base; export PYTHONPATH=$ROOT/logs/calls/base/src:$PYTHONPATH
  python3 -c "import flowhn; print('base code:', flowhn.__file__)"
  pair mamba; LIMIT=100 bench 135m mamba_base "{model: mamba}"
  pair fac1b; LIMIT=120 STEPS=5 WARMUP=3 bench 1b fac_base "{model: flowhn, split: fac_split}"
  pair jamba; LIMIT=150 bench 135m jamba_base "{model: jamba}"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|base code|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
ls $T; for f in $T/*.md; do echo "$(basename $f): $(grep -hE '^\| (mamba|flowhn|jamba)' $f | head -1)"; done
