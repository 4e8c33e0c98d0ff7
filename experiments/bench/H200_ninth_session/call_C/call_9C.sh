#!/usr/bin/env bash
# Ninth session, call C (nvidia-h200-x2): the rest of the tables at this code (f9b54ea), the backward's stages
# timed again, and one more backward variant (a warp-level re-layout of the dB/dC products instead of the
# shared product tile: logs/calls/gluon_CVT.py, since committed as e699547) checked against float64 and timed.
# GPU 0: gpu_scan_tiles.py (this kernel and gluon_CVT.py), gpu_scan_ablate.py at 2 and 4 lanes, 1B no_split, shm.
# GPU 1: 1B jamba, hymba; 135M ae_split, fa_split, llama, mamba2, HF Llama compiled.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 450 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tiles"
  OUT=/tmp timeout 100 python3 scripts/gpu_scan_tiles.py --budget-s 50 --before-gluon logs/calls/gluon_CVT.py \
    > /dev/null 2>&1; cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  echo "$(date +%T) ablate"
  timeout 170 python3 scripts/gpu_scan_ablate.py --lanes 2 4 > $OUT/ablate.log 2>&1; echo "ablate rc $?"
  echo "$(date +%T) 1b no_split, shm; $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true \
    profile_steps=1 profile_top=4 peers=[] 'entries=[{model: flowhn, split: no_split},{model: shm}]' output=$T/1b_ns_shm.md \
    hydra.run.dir=/tmp/a
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) 1b jamba, hymba"
  timeout 200 python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=4 peers=[] \
    'entries=[{model: jamba},{model: hymba}]' output=$T/1b_jamba_hymba.md hydra.run.dir=/tmp/b
  echo "$(date +%T) 135m; $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true \
    profile_steps=1 profile_top=4 peers=[hf_llama_compiled] \
    'entries=[{model: flowhn, split: ae_split},{model: flowhn, split: fa_split},{model: llama},{model: mamba2}]' \
    output=$T/135m.md hydra.run.dir=/tmp/c
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|ablate rc|Error|still allocated" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -4
grep -E "^\|" $OUT/ablate.log | tail -14
