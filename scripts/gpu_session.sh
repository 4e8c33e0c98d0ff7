#!/usr/bin/env bash
# One device call: GPU tests, kernel checks, the benchmark table, a short train.py run per
# architecture. Logs go to $OUT; the last lines printed are a short table.
set -uo pipefail
source .whl/install-wheels.sh || exit 1
export PYTHONPATH="$PWD/src:$PYTHONPATH" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1 FLOWHN_CACHE=/tmp/flowhn-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
stage=${1:-all}
gpu=$(python3 -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_"))')
if [[ $stage == all || $stage == tests ]]; then
  python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
  timeout 240 python3 scripts/gpu_check_kernels.py 2>&1 | tail -25
fi
if [[ $stage == all || $stage == bench ]]; then
  for scale in ${BENCH_SCALES:-135m 1b}; do
    timeout 420 python3 -m flowhn.bench scale=$scale steps=${BENCH_STEPS:-10} warmup=${BENCH_WARMUP:-4} \
      output="$OUT/bench_${gpu}.md" ${BENCH_ARGS:-} > "$OUT/bench_${scale}.log" 2>&1
    tail -22 "$OUT/bench_${scale}.log"
  done
fi
if [[ $stage == all || $stage == train ]]; then
  for arch in ${TRAIN_ARCHS:-flowhn llama mamba mamba2 jamba shm hymba}; do
    timeout 300 python3 train.py model=$arch scale=${TRAIN_SCALE:-135m} logger=csv trainer.max_steps=${TRAIN_STEPS:-40} \
      trainer.val_check_interval=${TRAIN_STEPS:-40} trainer.limit_val_batches=2 callbacks.throughput.warmup_steps=15 \
      callbacks.throughput.window=5 compile=${TRAIN_COMPILE:-false} hydra.run.dir=/tmp/runs/$arch > "$OUT/train_$arch.log" 2>&1
    python3 -c "import json;s=json.load(open('/tmp/runs/$arch/summary.json'));print('$arch', s['status'], 'tps=%s mfu=%s params=%s ratio=%s err=%s' % (s.get('tps'), s.get('mfu'), s.get('params'), s.get('split_ratio'), s.get('error')))" | tee -a "$OUT/train_summary.txt"
  done
fi
