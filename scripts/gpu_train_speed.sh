#!/usr/bin/env bash
# Issue 14's "train.py measured as well as the bench" on one GPU, at 135M, 16 x 1024, bf16:
#   1. train.py (ThroughputMonitor, medians of 10-step windows after 10 warm-up steps, 130 steps,
#      validation only at the end, no checkpoint) for each of MODELS (a model, or a FlowHN split), with the code of BEFORE_TAR
#      (a `git archive <commit> src conf train.py | gzip`, default logs/before.tar.gz: the code before
#      the sync-free training step) and with this tree, with each fused-loss implementation in FUSED;
#   2. the bench rows of the same models and losses (`python -m flowhn.bench`, one process);
#   3. the GPU tests of the training step (tests/test_cuda_graphs.py: no host sync inside a step).
# Usage (device call; carry .whl, logs/before.tar.gz and logs/flowhn-cache, the corpus BPE trained here):
#   source .whl/install-wheels.sh >/dev/null || exit 1; bash scripts/gpu_train_speed.sh
# Knobs: MODELS (llama fac_split; a model may repeat), FUSED (liger chunked), CODES (before after),
# BENCH (1), BENCH_FUSED ($FUSED), TESTS (1), STEPS (130), DEADLINE_S (540, from the script's start),
# EXTRA (more train.py overrides), SCALE (135m; 1b: the same runs at 1B, the bench rows too), RUN_TIMEOUT_S
# (240: one train.py run's limit; a 1B run compiles for ~2 minutes).
# Results: $OUT/train_speed.csv (one row per train.py run; first_step_s, the seconds to the first
# optimizer step, is mostly compile: a measure of the host's speed), $OUT/bench_$SCALE.md, logs; a table last.
set -uo pipefail
started=$(date +%s)
DEADLINE_S=${DEADLINE_S:-540}
left() { echo $((DEADLINE_S - ($(date +%s) - started))); }
python3 -c "import hydra" 2>/dev/null || source .whl/install-wheels.sh >/dev/null || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/runs"
exec > >(tee -a "$OUT/train_speed.log") 2>&1
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1 FLOWHN_CACHE=/tmp/flowhn-cache
DEPS_PATH=${PYTHONPATH:-}  # where install-wheels.sh put hydra & co.
export PYTHONPATH="$PWD/src${DEPS_PATH:+:$DEPS_PATH}"
[[ -d logs/flowhn-cache && ! -d $FLOWHN_CACHE ]] && cp -r logs/flowhn-cache "$FLOWHN_CACHE"
BEFORE_TAR=${BEFORE_TAR:-logs/before.tar.gz}
MODELS=${MODELS:-llama fac_split}
FUSED=${FUSED:-liger chunked}
STEPS=${STEPS:-130} SCALE=${SCALE:-135m}
CODES=${CODES:-before after} BENCH=${BENCH:-1} TESTS=${TESTS:-1}
echo "== $(date -u +%FT%TZ) $(python3 -c 'import torch; print(torch.cuda.get_device_name(), torch.__version__)')"

is_split() { [[ $1 == *_split ]]; }  # a FlowHN split (no_split, fac_split, ...), else a model name
# model -> train.py overrides (the split ablation's 135M preset: corpus BPE, 16 x 1024)
overrides() {
  local m=$1
  echo "experiment=split_ablation_gpu_small eval=default logger=csv trainer.max_steps=$STEPS trainer.limit_val_batches=1" \
    "trainer.val_check_interval=100000 trainer.log_every_n_steps=10 callbacks.throughput.warmup_steps=10 callbacks.throughput.window=10" \
    "callbacks.checkpoint.every_n_train_steps=100000" \
    "$(is_split "$m" && echo split=$m || echo model=$m)" scale=$SCALE ${EXTRA:-}
}

echo "code,model,fused_loss,tok_s,mfu,step_ms,max_mem_gib,first_step_s,wall_s" > "$OUT/train_speed.csv"
# The GPU tests first: short, and what the claims rest on.
[[ $TESTS == 1 ]] && timeout 150 python3 -m pytest -q -rA --tb=short -m gpu tests/test_cuda_graphs.py > "$OUT/gpu_tests.log" 2>&1

run_index=0
train_run() {  # code(before|after) model fused_loss
  local code=$1 m=$2 fused=$3 name="$((++run_index))_$1_$2_$3" src=$PWD t0
  local dir=/tmp/train_runs/$name  # the run folder stays here; its log and summary go to $OUT/runs
  if [[ $code == before ]]; then
    mkdir -p /tmp/before && tar xzf "$BEFORE_TAR" -C /tmp/before && src=/tmp/before
  fi
  t0=$(date +%s)
  # shellcheck disable=SC2046
  PYTHONPATH="$src/src${DEPS_PATH:+:$DEPS_PATH}" timeout ${RUN_TIMEOUT_S:-240} python3 "$src/train.py" $(overrides "$m") \
    $([[ $fused != default ]] && echo fused_loss=$fused) hydra.run.dir="$dir" > "$OUT/runs/$name.log" 2>&1
  cp "$dir/summary.json" "$OUT/runs/$name.summary.json" 2>/dev/null
  python3 - "$dir" "$code" "$m" "$fused" "$(( $(date +%s) - t0 ))" >> "$OUT/train_speed.csv" <<'PY'
import json, sys
d, code, model, fused, wall = sys.argv[1:]
try:
    s = json.load(open(f"{d}/summary.json"))
    print(f"{code},{model},{fused},{s['tps']},{s['mfu']},{s['step_time_ms']},{s['max_mem_gib']},{s['first_step_s']},{wall}")
except Exception as exc:
    print(f"{code},{model},{fused},,,,,,{wall} ({type(exc).__name__})")
PY
}

for m in $MODELS; do
  [[ " $CODES " == *" before "* ]] && (( $(left) > 130 )) && train_run before "$m" default
  if [[ " $CODES " == *" after "* ]]; then
    for f in $FUSED; do (( $(left) > 130 )) && train_run after "$m" "$f"; done
  fi
done

entries=""
for m in $(tr ' ' '\n' <<< "$MODELS" | awk 'NF && !seen[$0]++'); do
  for f in ${BENCH_FUSED:-$FUSED}; do
    loss=$([[ $f != default ]] && echo ", fused_loss: $f")  # default: the bench's own (auto), as train.py's
    e=$(is_split "$m" && echo "{model: flowhn, split: $m$loss}" || echo "{model: $m$loss}")
    entries+="${entries:+, }$e"
  done
done
if [[ $BENCH == 1 ]] && (( $(left) > 150 )); then
  timeout $(( $(left) - 20 )) python3 -m flowhn.bench scale=$SCALE steps=30 warmup=5 peers=[] "entries=[$entries]" \
    output="$OUT/bench_$SCALE.md" hydra.run.dir=/tmp/bench_$SCALE > "$OUT/bench_$SCALE.log" 2>&1
fi
echo "== done in $(( $(date +%s) - started )) s"
grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" 2>/dev/null | tail -8
grep -E "^\| " "$OUT/bench_$SCALE.md" 2>/dev/null
python3 -c "import csv, sys; [print(' | '.join(f'{c:>12}' for c in r)) for r in csv.reader(open(sys.argv[1]))]" "$OUT/train_speed.csv"
