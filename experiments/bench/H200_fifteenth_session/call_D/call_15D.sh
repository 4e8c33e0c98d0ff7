#!/usr/bin/env bash
# Fifteenth session, call D (nvidia-h200-x2): fee6758 (GPU 0) against c02855a (GPU 1, logs/calls/base, run
# from there so its conf/ is used), the rows in pairs at the same time: the other models with a Mamba-1
# branch at 135M (shm, no_split, hymba), then no_split and shm at 1B (fac_split's ratios).
set -u
BUDGET_S=490; source scripts/gpu_call_lib.sh
rm -f /tmp/sync_*
ROOT=$PWD
pair() {
  touch /tmp/sync_${GPU}_$1; local other=$((1 - GPU))
  while [ ! -f /tmp/sync_${other}_$1 ] && (( $(left) > 60 )); do sleep 1; done
}
rows() {  # rows SIDE
  pair shm; LIMIT=85 bench 135m shm_$1 "{model: shm}"
  pair no_split; LIMIT=85 bench 135m no_split_$1 "{model: flowhn, split: no_split}"
  pair hymba; LIMIT=85 bench 135m hymba_$1 "{model: hymba}"
  pair no_split1b; LIMIT=110 STEPS=5 WARMUP=3 bench 1b no_split_$1 "{model: flowhn, split: no_split}"
  pair shm1b; LIMIT=110 STEPS=5 WARMUP=3 bench 1b shm_$1 "{model: shm}"
  echo "$(date +%T) done"
}
( export CUDA_VISIBLE_DEVICES=0 GPU=0; rows new ) > $OUT/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1 GPU=1; cd logs/calls/base; export PYTHONPATH=$ROOT/logs/calls/base/src:$PYTHONPATH
  python3 -c "import flowhn; print('base code:', flowhn.__file__)"; rows base ) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |base code|Error|skipped" $OUT/gpu$g.log | cut -c1-200; done
for f in $T/*.md; do echo "$(basename $f): $(grep -hE '^\| (shm|flowhn|hymba)' $f | head -1)"; done
