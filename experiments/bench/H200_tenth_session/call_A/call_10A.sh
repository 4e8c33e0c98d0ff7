#!/usr/bin/env bash
# Tenth session, call A (nvidia-h200-x2).
# GPU 0: the conv's walking backward: GPU tests (float64), gpu_mamba1.py --conv (every backward timed, tile
#        sweeps), then mamba 1B with FLOWHN_CONV_BWD=staged / walk (separate processes, same GPU).
# GPU 1: gpu_ssd.py --chunks 64,128,256 (the SSD chunk size checked and timed), mamba2 1B with chunk 64 / 128,
#        then the idle gaps of mamba 1B (scripts/gpu_host_profile.py).
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 530 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) conv tests"
  timeout 150 python3 -m pytest -q -rf -m gpu tests/test_triton_conv.py -p no:cacheprovider > $OUT/pytest_conv.log 2>&1
  rc=$?; echo "conv tests rc $rc"; tail -2 $OUT/pytest_conv.log
  echo "$(date +%T) gpu_mamba1 --conv"
  timeout 250 python3 scripts/gpu_mamba1.py --conv > $OUT/mamba1_conv.stdout 2>&1; echo "mamba1 rc $?"
  for kernel in staged walk; do echo "$(date +%T) mamba 1B conv $kernel, $(left) s left"
    [ $rc = 0 ] && (( $(left) > 75 )) && FLOWHN_CONV_BWD=$kernel timeout $(( $(left) - 5 > 110 ? 110 : $(left) - 5 )) \
      python3 -m flowhn.bench scale=1b steps=5 warmup=3 profile=true profile_steps=1 profile_top=6 peers=[] \
      'entries=[{model: mamba}]' output=$T/1b_mamba_conv_$kernel.md hydra.run.dir=/tmp/m_$kernel; done
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) ssd chunks"
  timeout 270 python3 scripts/gpu_ssd.py --chunks 64,128,256 > $OUT/ssd_chunks.stdout 2>&1; echo "ssd rc $?"
  echo "$(date +%T) mamba2 1B chunk 64, 128; $(left) s left"
  (( $(left) > 90 )) && timeout $(( $(left) - 5 > 180 ? 180 : $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=5 \
    warmup=3 profile=true profile_steps=1 profile_top=6 peers=[] \
    'entries=[{model: mamba2},{model: mamba2, model.ssm_chunk_size: 128}]' output=$T/1b_mamba2_chunks.md hydra.run.dir=/tmp/c
  echo "$(date +%T) gaps, $(left) s left"
  (( $(left) > 60 )) && timeout $(( $(left) - 5 )) python3 scripts/gpu_host_profile.py --scale 1b --steps 3 --warmup 3 mamba \
    > /dev/null 2>&1; echo "gaps rc $?"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|passed|failed|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-220; done
grep -E "^\| [0-9]" $OUT/ssd_chunks.log 2>/dev/null
grep -E "walk|staged|recompute" $OUT/mamba1.log 2>/dev/null | grep -E "best|fwd\+bwd" | tail -8
grep -E "^\| spec|^\| mamba" $OUT/host_profile.log 2>/dev/null | tail -2
