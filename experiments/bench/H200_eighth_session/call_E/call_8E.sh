#!/usr/bin/env bash
# Eighth session, call E (nvidia-h200-x2): the Gluon scan backward summing dB/dC once a sub-chunk (new default)
# and the prefetch option.
# GPU 0: the scan's GPU tests (every walk and option against float64), then 1B no_split and jamba (new default).
# GPU 1: gpu_scan_tiles.py, the per-step-sums kernel (89fed75) against the new one and its options, float64
#        checks first; then 1B mamba with the new default and with FLOWHN_SCAN_PREFETCH=1 (separate processes),
#        fac_split; then 135M ae_split and fa_split with the Triton loss.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 500 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 300 python3 -m pytest -q -rf -m gpu tests/test_kernels.py -k "gluon or selective_scan_gpu" -p no:cacheprovider \
    > $OUT/pytest.log 2>&1; echo "tests rc $?"; tail -4 $OUT/pytest.log
  echo "$(date +%T) 1b no_split, jamba; $(left) s left"
  (( $(left) > 90 )) && timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=false peers=[] \
    'entries=[{model: flowhn, split: no_split},{model: jamba}]' output=$T/1b_gpu0.md hydra.run.dir=/tmp/e0
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) tiles"
  OUT=/tmp timeout 130 python3 scripts/gpu_scan_tiles.py --budget-s 110 --before-gluon logs/calls/gluon_scan_per_step_sums.py \
    > /dev/null 2>&1; cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  for p in 0 1; do echo "$(date +%T) mamba 1B prefetch $p, $(left) s left"
    (( $(left) > 80 )) && FLOWHN_SCAN_PREFETCH=$p timeout $(( $(left) - 5 > 120 ? 120 : $(left) - 5 )) python3 -m flowhn.bench \
      scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=4 peers=[] 'entries=[{model: mamba}]' \
      output=$T/mamba_p$p.md hydra.run.dir=/tmp/p$p; done
  echo "$(date +%T) fac 1b, $(left) s left"
  (( $(left) > 80 )) && timeout $(( $(left) - 5 > 110 ? 110 : $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 \
    profile=false peers=[] 'entries=[{model: flowhn, split: fac_split}]' output=$T/fac_1b.md hydra.run.dir=/tmp/f1
  echo "$(date +%T) 135m ae, fa; $(left) s left"
  (( $(left) > 70 )) && timeout $(( $(left) - 3 )) python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=false peers=[] \
    'entries=[{model: flowhn, split: ae_split},{model: flowhn, split: fa_split}]' output=$T/135m_aefa.md hydra.run.dir=/tmp/a1
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|passed|failed|tests rc|Error|still allocated" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "^FAILED" $OUT/pytest.log | head -10
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -6
