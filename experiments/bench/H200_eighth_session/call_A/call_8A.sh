#!/usr/bin/env bash
# Eighth session, call A (nvidia-h200-x2).
# GPU 0: scripts/gpu_scan_tiles.py (4-lanes-a-channel Gluon candidates against the default, float64 checks
#        first), then mamba 1B with FLOWHN_SCAN_LANES=2 and =4 (separate processes, same GPU, profiled).
# GPU 1: 135M ae_split, fa_split, shm, no_split with the final defaults (CUDA graphs, profiled); then 1B hymba
#        (sequence walk) and mamba as the second row of the process (b941be1: no "still allocated" warning).
set -u
started=$(date +%s); left() { echo $(( 545 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tiles"
  OUT=/tmp timeout 200 python3 scripts/gpu_scan_tiles.py --budget-s 170 > /dev/null 2>&1
  cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  for lanes in 2 4; do echo "$(date +%T) mamba 1B lanes $lanes, $(left) s left"
    (( $(left) > 60 )) && FLOWHN_SCAN_LANES=$lanes timeout $(( $(left) - 10 > 170 ? 170 : $(left) - 10 )) python3 -m flowhn.bench \
      scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=10 peers=[] 'entries=[{model: mamba}]' \
      output=$T/lanes_$lanes.md hydra.run.dir=/tmp/l_$lanes; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) 135m"
  timeout 280 python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=8 peers=[] \
    'entries=[{model: flowhn, split: ae_split},{model: flowhn, split: fa_split},{model: shm},{model: flowhn, split: no_split}]' \
    output=$T/135m.md hydra.run.dir=/tmp/b1
  echo "$(date +%T) 1b hymba, mamba; $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 8 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=false peers=[] \
    'entries=[{model: hymba},{model: mamba}]' output=$T/1b.md hydra.run.dir=/tmp/h1
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|WARNING|still allocated|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-220; done
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -9
