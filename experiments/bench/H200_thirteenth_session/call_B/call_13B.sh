#!/usr/bin/env bash
# Thirteenth session, call B (nvidia-h200-x2), code at HEAD + scripts.
# GPU 0: the SSD against mamba-ssm's Triton SSD and fla's chunk_simple_gla (timing first, then float64 checks).
# GPU 1: ncu on our SSD kernels at the Mamba-2 1B layer (kept states); mamba2 350M with its default (recompute);
#        mamba2 135M profiled.
set -u
export PYTHONUNBUFFERED=1
started=$(date +%s); left() { echo $(( 540 - ($(date +%s) - started) )); }
T=/tmp/tables; mkdir -p $T
python3 -m pip install -q --no-index --no-deps --target /tmp/libs logs/libs/*.whl || exit 1
LIBS=/tmp/libs; SDIST=$(ls logs/libs/mamba_ssm-*.tar.gz)
bench() {  # $1 scale, $2 tag, $3 entry, $4 extra args
  local limit=${LIMIT:-90}
  echo "$(date +%T) $1 $2 $3, $(left) s left"
  (( $(left) > 50 )) && timeout $(( $(left) - 5 > limit ? limit : $(left) - 5 )) python3 -m flowhn.bench scale=$1 \
    steps=${STEPS:-20} warmup=${WARMUP:-6} peers=${PEERS:-[]} "entries=[$3]" ${4:-} output=$T/$1_$2.md hydra.run.dir=/tmp/r_$RANDOM
}
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) ssd against the libraries"
  PYTHONPATH=$PYTHONPATH:$LIBS timeout $(( $(left) - 10 )) python3 scripts/gpu_library_kernels.py --parts ssd \
    --mamba-ssm $SDIST > $OUT/ssd.stdout 2>&1; echo "ssd rc $?"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  echo "$(date +%T) ncu"
  S="--section LaunchStats --section Occupancy --section WarpStateStats --section SpeedOfLight --section SchedulerStats --section MemoryWorkloadAnalysis"
  timeout 150 ncu --clock-control none --profile-from-start off -k regex:_chunk $S python3 scripts/gpu_ssd.py --profile-range \
    > $OUT/ncu_ssd.log 2>&1; echo "ncu rc $?"
  STEPS=10 WARMUP=4 LIMIT=170 bench 350m mamba2_recompute "{model: mamba2}"
  bench 135m mamba2 "{model: mamba2}" "profile=true profile_steps=1 profile_top=12"
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
cat $T/*.md > $OUT/tables.md 2>/dev/null
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|Error" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-200; done
grep -E "^  [A-Za-z_]+.*(Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit Reg|Warp Cycles Per Issued|Memory Throughput|Compute \(SM\) Th)|^  _chunk|_kernel" $OUT/ncu_ssd.log | cut -c1-150 | head -80
grep -E "kernels .* ms|FAIL|ERROR|PASS" $OUT/library_ssd.log | cut -c1-150
