#!/usr/bin/env bash
# Device calls for the GPU work, by stage (each fits one 10-minute call):
#   tests    GPU tests (-m gpu), and train.py (flowhn, 135m) with compile=auto
#   kernels  scripts/gpu_check_kernels.py: scan accuracy against float64, scratch memory, bandwidth
#   streams  flowhn at 1B, eager, with and without model.branch_streams
#   bench    python -m flowhn.bench at BENCH_SCALE (1b or 135m) for BENCH_ENTRIES/BENCH_PEERS, with profiles
#   train    train.py per architecture (TRAIN_ARCHS, TRAIN_SCALE, TRAIN_STEPS, TRAIN_COMPILE)
# Logs go to $OUT; the last lines printed are a short table. Wheels: source .whl/install-wheels.sh.
set -uo pipefail
source .whl/install-wheels.sh >/dev/null || exit 1
export PYTHONPATH="$PWD/src:$PYTHONPATH" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1 FLOWHN_CACHE=/tmp/flowhn-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
stage=${1:-tests}
gpu=$(python3 -c 'import torch; print(torch.cuda.get_device_name().split()[1])')  # H100, H200, ...
if [[ $stage == tests ]]; then
  timeout 240 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tail -15 > "$OUT/gpu_tests.log"
  timeout 200 python3 train.py model=flowhn scale=135m logger=csv trainer.max_steps=40 trainer.val_check_interval=40 \
    trainer.limit_val_batches=2 callbacks.throughput.warmup_steps=15 callbacks.throughput.window=5 compile=auto \
    hydra.run.dir=/tmp/runs/flowhn > "$OUT/train_flowhn_compiled.log" 2>&1
  tail -4 "$OUT/gpu_tests.log"
  python3 -c "import json;s=json.load(open('/tmp/runs/flowhn/summary.json'));print('train.py flowhn 135m compile=auto:', s['status'], 'tps=%s mfu=%s err=%s' % (s.get('tps'), s.get('mfu'), s.get('error')))"
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
    timeout 300 python3 train.py model=$arch scale=${TRAIN_SCALE:-135m} logger=csv trainer.max_steps=${TRAIN_STEPS:-40} \
      trainer.val_check_interval=${TRAIN_STEPS:-40} trainer.limit_val_batches=2 callbacks.throughput.warmup_steps=15 \
      callbacks.throughput.window=5 compile=${TRAIN_COMPILE:-false} hydra.run.dir=/tmp/runs/$arch > "$OUT/train_$arch.log" 2>&1
    python3 -c "import json;s=json.load(open('/tmp/runs/$arch/summary.json'));print('$arch', s['status'], 'tps=%s mfu=%s params=%s ratio=%s err=%s' % (s.get('tps'), s.get('mfu'), s.get('params'), s.get('split_ratio'), s.get('error')))" | tee -a "$OUT/train_summary.txt"
  done
fi
