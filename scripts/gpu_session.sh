#!/usr/bin/env bash
# Device calls for the GPU work, by stage; one call may run several (bash scripts/gpu_session.sh tests kernels):
#   tests    GPU tests (-m gpu)
#   kernels  scripts/gpu_check_kernels.py: scan accuracy against float64, scratch memory, bandwidth
#   streams  flowhn at 1B, eager, with and without model.branch_streams
#   bench    python -m flowhn.bench at BENCH_SCALE (1b or 135m) for BENCH_ENTRIES/BENCH_PEERS, with profiles
#   train    train.py per architecture (TRAIN_ARCHS, TRAIN_SCALE, TRAIN_STEPS, TRAIN_COMPILE, TRAIN_SCOPES)
# Logs go to $OUT; the last lines printed are a short table. Wheels: source .whl/install-wheels.sh.
set -uo pipefail
source .whl/install-wheels.sh >/dev/null || exit 1
export PYTHONPATH="$PWD/src:$PYTHONPATH" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1 FLOWHN_CACHE=/tmp/flowhn-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
gpu=$(python3 -c 'import torch; print(torch.cuda.get_device_name().split()[1])')  # H100, H200, ...
for stage in "${@:-tests}"; do
if [[ $stage == tests ]]; then
  timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -q -m gpu tests -p no:cacheprovider -rs 2>&1 | tail -25 > "$OUT/gpu_tests.log"
  tail -6 "$OUT/gpu_tests.log"
fi
if [[ $stage == kernels ]]; then
  timeout 200 python3 scripts/gpu_check_kernels.py > /dev/null 2>&1
  grep -A12 "^Summary" "$OUT/kernels.log"
fi
if [[ $stage == streams ]]; then
  timeout 200 python3 -m flowhn.bench scale=1b steps=4 warmup=2 compile=false peers=[] output="$OUT/streams_${gpu}.md" \
    'entries=[{model: flowhn, split: fac_split}, {model: flowhn, split: fac_split, model.branch_streams: true}, {model: flowhn, split: no_split}, {model: flowhn, split: no_split, model.branch_streams: true}]' \
    > "$OUT/streams.log" 2>&1
  grep "^| flowhn" "$OUT/streams_${gpu}.md"
fi
if [[ $stage == bench ]]; then
  scale=${BENCH_SCALE:-1b}; tag=${BENCH_TAG:-$scale}
  timeout ${BENCH_TIMEOUT:-560} python3 -m flowhn.bench scale=$scale steps=${BENCH_STEPS:-5} warmup=${BENCH_WARMUP:-3} \
    profile=true profile_steps=1 output="$OUT/bench_${gpu}_${tag}.md" ${BENCH_ENTRIES:+"entries=$BENCH_ENTRIES"} \
    ${BENCH_PEERS:+"peers=$BENCH_PEERS"} > "$OUT/bench_${tag}.log" 2>&1
  grep -E "^\| [a-z]" "$OUT/bench_${gpu}_${tag}.md" | grep -v "category\|top kernel" | head -20 || grep "Row(" "$OUT/bench_${tag}.log"
fi
if [[ $stage == train ]]; then
  for arch in ${TRAIN_ARCHS:-flowhn llama mamba mamba2 jamba shm hymba}; do
  for scope in ${TRAIN_SCOPES:-model}; do
    run=$arch-$scope
    timeout 300 python3 train.py model=$arch scale=${TRAIN_SCALE:-135m} logger=csv trainer.max_steps=${TRAIN_STEPS:-40} \
      trainer.val_check_interval=${TRAIN_STEPS:-40} trainer.limit_val_batches=2 callbacks.throughput.warmup_steps=15 \
      callbacks.throughput.window=5 compile=${TRAIN_COMPILE:-auto} compile_scope=$scope hydra.run.dir=/tmp/runs/$run \
      > "$OUT/train_$run.log" 2>&1
    python3 -c "import json;s=json.load(open('/tmp/runs/$run/summary.json'));print('$arch compile=${TRAIN_COMPILE:-auto} scope=$scope', s['status'], 'tps=%s mfu=%s params=%s ratio=%s err=%s' % (s.get('tps'), s.get('mfu'), s.get('params'), s.get('split_ratio'), s.get('error')))" | tee -a "$OUT/train_summary.txt"
  done
  done
fi
done
