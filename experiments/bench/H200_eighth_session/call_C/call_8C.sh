#!/usr/bin/env bash
# Eighth session, call C (nvidia-h200-x2).
# GPU 0: GPU tests (scan kernels incl. dB/dC partials; fused loss incl. the new Triton one), then, if they
#        passed, scripts/gpu_scan_tiles.py (atomics vs partials), then mamba 1B with FLOWHN_SCAN_DB_DC=atomics
#        and =partials (separate processes, same GPU).
# GPU 1: 135M llama and fac_split, fused loss liger (default) vs triton (same process, CUDA graphs, profiled);
#        then llama 1B liger vs triton.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 540 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) tests"
  timeout 220 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_fused_loss.py -k "gluon or selective_scan_gpu or fused_loss" \
    -p no:cacheprovider > $OUT/pytest.log 2>&1; rc=$?; tail -5 $OUT/pytest.log
  echo "$(date +%T) tiles, $(left) s left"
  OUT=/tmp timeout 90 python3 scripts/gpu_scan_tiles.py --budget-s 70 > /dev/null 2>&1; cp /tmp/scan_tiles.log $OUT/ 2>/dev/null
  for m in atomics partials; do echo "$(date +%T) mamba 1B dB/dC $m, $(left) s left"
    (( $(left) > 70 )) && FLOWHN_SCAN_DB_DC=$m timeout $(( $(left) - 8 > 150 ? 150 : $(left) - 8 )) python3 -m flowhn.bench \
      scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=6 peers=[] 'entries=[{model: mamba}]' \
      output=$T/dbdc_$m.md hydra.run.dir=/tmp/d_$m; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) 135m"
  timeout 270 python3 -m flowhn.bench scale=135m steps=20 warmup=6 profile=true profile_steps=1 profile_top=6 peers=[] \
    'entries=[{model: llama},{model: llama, fused_loss: triton},{model: flowhn, split: fac_split},{model: flowhn, split: fac_split, fused_loss: triton}]' \
    output=$T/loss_135m.md hydra.run.dir=/tmp/c1
  echo "$(date +%T) 1b llama; $(left) s left"
  (( $(left) > 80 )) && timeout $(( $(left) - 8 )) python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=false peers=[] \
    'entries=[{model: llama},{model: llama, fused_loss: triton}]' output=$T/loss_1b.md hydra.run.dir=/tmp/c2
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|passed|failed|Error|still allocated" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-230; done
grep -E "FAILED|Error" $OUT/pytest.log | head -20
grep -E "^\|" $OUT/scan_tiles.log 2>/dev/null | tail -6
