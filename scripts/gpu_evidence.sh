#!/usr/bin/env bash
# Issue 18's GPU evidence, by stage, using every visible GPU (one job per GPU: no two timed runs share one).
#   bash scripts/gpu_evidence.sh ablation        # split ablation, 4 splits x 3 seeds at 135M (experiment=split_ablation_gpu_small)
#   bash scripts/gpu_evidence.sh ladder          # the 1B seq_len ladder, resumable (FA_FAC_PROFILE=1: a 135M FA vs FAC profile first)
#   bash scripts/gpu_evidence.sh all             # ablation, then the ladder in the time left
#   ABLATION_EXPERIMENT=kernel_parity bash scripts/gpu_evidence.sh ablation
#                                                # the same stage for another 135M seeds preset (issue 13's
#                                                # Triton-vs-PyTorch parity: 2 backends x 2 seeds)
# Sizes measured on one H200 (2026-11-29), each block compiled on its own: a ladder row takes 4-20 s
# (mamba2 the longest) after ~90 s of start-up, so 35 rows fit one call (17 took 330 s on a cold
# machine; fac_split rows once took ~50 s, running into dynamo's recompile limit, fixed since: one
# graph per span). An ablation job takes
# 96-159 s when its split compiles cold and 36-78 s from the inductor cache (the first on a machine
# is cold; a call on a machine still warm keeps the cache), after 50-60 s of corpus and BPE before
# the first: the 12 jobs took four calls on one GPU, carrying the untarred sweep folder between them.
# The ladder stops starting rows when its time is up (DEADLINE_S after the script starts, default
# 540) and starts from experiments/seqlen_study/throughput_<GPU>.csv when that is committed,
# skipping the rows in it: commit $OUT/seqlen_ladder.csv there and call again to fill the rest.
# Logs and results go to $OUT (at most 8 files, written as the work goes: a call cut short keeps
# them); the last lines printed are a short table.
# Knobs: DEADLINE_S (540); ABLATION_SEEDS (e.g. 0,1; default the preset's 0,1,2); ABLATION_OVERRIDES
# (extra sweep overrides, e.g. "eval=default" to skip the zero-shot fixtures); FA_FAC_PROFILE (0);
# LADDER_COMPILE (blocks, or true: whole model); LADDER_LENGTHS ([1024,8192,16384,4096,2048]: the
# order rows are run in).
set -uo pipefail
started=$(date +%s)
DEADLINE_S=${DEADLINE_S:-540}
left() { echo $((DEADLINE_S - ($(date +%s) - started))); }
python3 -c "import hydra" 2>/dev/null || source .whl/install-wheels.sh >/dev/null || exit 1
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
export FLOWHN_CACHE=${FLOWHN_CACHE:-/tmp/flowhn-cache}
# Every process shares torch's default inductor/AOTAutograd cache (/tmp/torchinductor_$USER, FX graph
# cache on by default): the seed-1/2 runs, and a second call on a machine still warm, start from the
# graphs compiled before.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/evidence.log") 2>&1
ngpu=$(python3 -c 'import torch; print(torch.cuda.device_count())')
gpu=$(python3 -c 'import torch; print(torch.cuda.get_device_name().split()[1])')  # H100, H200, ...
echo "== $(date -u +%FT%TZ) $ngpu x $(python3 -c 'import torch; print(torch.cuda.get_device_name())'), torch $(python3 -c 'import torch; print(torch.__version__)'), stages: ${*:-ablation}"
stages=" ${*:-ablation} "; [[ $stages == *" all "* ]] && stages=" ablation ladder "
EXPERIMENT=${ABLATION_EXPERIMENT:-split_ablation_gpu_small}
SWEEP=$PWD/logs/sweeps/$EXPERIMENT
LADDER_SEED=experiments/seqlen_study/throughput_${gpu}.csv

ablation() {
  # The preset's fixture zero-shot needs lm-eval (not in the GPU image: scripts/gpu_wheels.sh puts its
  # wheels into .whl);
  # twelve jobs that each fail on it at start-up cost minutes, so check once here.
  if [[ " ${ABLATION_OVERRIDES:-} " != *" eval=default "* ]] && ! python3 -c "import flowhn.evaluation" 2>/dev/null; then
    echo "ablation: lm-eval does not import here ($(python3 -c 'import flowhn.evaluation' 2>&1 | tail -1)); not started"
    return 1
  fi
  # The BPE (49,152 tokens, trained on the corpus) once, before four jobs would wait on it together.
  EXPERIMENT=$EXPERIMENT python3 - <<'PY'
import os
from pathlib import Path
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
    dm = instantiate(compose("train", overrides=[f"experiment={os.environ['EXPERIMENT']}"]).data)
dm.prepare_data(); dm.setup("fit")
print(f"corpus: {len(dm.train_dataloader())} training batches of 16 x 1024 per epoch")
PY
  mkdir -p "$SWEEP"
  # The sweep folder goes to $OUT as a tarball every 20 s (summaries, metrics, logs; no checkpoints),
  # so a call cut short still brings back every job it finished. Jobs whose summary says completed
  # are skipped when the sweep runs again: untar the tarball into logs/sweeps/$EXPERIMENT
  # here, carry that folder, and call the stage again to run the rest (ABLATION_SEEDS picks seeds).
  snapshot() {
    (cd "$SWEEP" && tar czf "$OUT/.sweep.tmp" --exclude='wandb' --exclude='checkpoints' --exclude='index.html' . 2>/dev/null) \
      && mv -f "$OUT/.sweep.tmp" "$OUT/${EXPERIMENT}_sweep.tar.gz"
  }
  # One job per GPU; a job running ABLATION_TIMEOUT_MIN minutes is stopped and recorded as failed. Near the deadline
  # the multirun under sweep.py (train.py -m) gets SIGTERM: its launcher stops the running jobs
  # (SIGTERM: each saves a checkpoint within its 60 s grace and records itself as stopped) and writes
  # results.csv. 120 s are left for that and the summary. (Not SIGINT: bash starts a background
  # job with SIGINT ignored, Python then installs no KeyboardInterrupt handler, and the launcher
  # went on starting jobs until it was killed; 2026-11-29.)
  python3 sweep.py experiment="$EXPERIMENT" logger=csv hydra.launcher.parallel="$ngpu" \
    hydra.launcher.timeout_min=${ABLATION_TIMEOUT_MIN:-4} hydra.sweep.dir="$SWEEP" ${ABLATION_SEEDS:+seed=$ABLATION_SEEDS} \
    ${ABLATION_OVERRIDES:-} > "$SWEEP/sweep.log" 2>&1 &
  local sweep_pid=$! ticks=0
  while kill -0 "$sweep_pid" 2>/dev/null; do
    sleep 5
    (( ++ticks % 4 == 0 )) && snapshot
    if (( $(left) < 120 )); then
      echo "ablation: deadline, stopping the sweep"
      kill -TERM $(ps -o pid= --ppid "$sweep_pid") 2>/dev/null
      break
    fi
  done
  for _ in $(seq 18); do kill -0 "$sweep_pid" 2>/dev/null || break; sleep 5; done
  kill -0 "$sweep_pid" 2>/dev/null && { echo "ablation: the sweep did not stop in 90 s; killed"; pkill -KILL -P "$sweep_pid"; kill -KILL "$sweep_pid"; }
  wait "$sweep_pid" 2>/dev/null
  tail -14 "$SWEEP/sweep.log"
  # The report's seed table (mean ± spread per split) and loss curves (one line per seed).
  python3 -m flowhn.report "$SWEEP" --out "$SWEEP/report" > /dev/null
  cp "$SWEEP/report/seeds.md" "$SWEEP/report/seed_curves.png" "$OUT/"
  rm -rf "${SWEEP:?}"/*/checkpoints
  snapshot
}

ladder() {
  # Each block compiled on its own (LADDER_COMPILE=blocks): one block's graph per length instead of
  # the whole 1B model's, so the 35 compiles fit the device time; LADDER_COMPILE=true compiles whole.
  local c=${LADDER_COMPILE:-blocks} parts=() pids=() models=()
  models=("{model: flowhn, split: fac_split, compile: $c}" "{model: llama, compile: $c}"
    "{model: flowhn, split: fa_split, compile: $c}" "{model: mamba, compile: $c}"
    "{model: flowhn, split: no_split, compile: $c}" "{model: mamba2, compile: $c}" "{model: shm, compile: $c}")
  [[ -f $LADDER_SEED ]] && echo "ladder: starting from $LADDER_SEED ($(($(wc -l < "$LADDER_SEED") - 1)) rows)"
  for ((g = 0; g < ngpu; g++)); do
    local entries="" i
    for ((i = g; i < ${#models[@]}; i += ngpu)); do entries+="${entries:+, }${models[i]}"; done
    [[ -z $entries ]] && continue
    local part=$OUT/ladder_gpu$g.csv  # under $OUT: a call that runs out of time still brings back its rows
    if [[ -f $LADDER_SEED ]]; then cp "$LADDER_SEED" "$part"; else rm -f "$part"; fi
    (
      export CUDA_VISIBLE_DEVICES=$g
      if ((g == 0)) && [[ ${FA_FAC_PROFILE:-0} == 1 ]]; then
        # FA vs FAC at 135M with the kernel time per category (experiments/split_ablation/RESULTS.md): both
        # give every block 564 attention / 460 SSM tokens. Each row in a fresh process (isolate=true: no
        # row inherits the compiled code and heap of the ones before), each split twice in both orders
        # (fa, fac, fac, fa) for the run-to-run spread; then FAC at r = 0.546875 (560 / 464 tokens,
        # multiples of 16) and AE (512 / 512): do lengths that are not multiples of 8 cost time?
        local fa="{model: flowhn, split: fa_split}" fac="{model: flowhn, split: fac_split}"
        timeout 360 python3 -m flowhn.bench scale=135m steps=20 warmup=4 profile=true profile_steps=2 peers=[] isolate=true \
          "entries=[$fa, $fac, $fac, $fa, {model: flowhn, split: fac_split, split.ratio: 0.546875}, {model: flowhn, split: ae_split}]" \
          output=/tmp/ladder_logs/fa_vs_fac_profile.md hydra.run.dir=/tmp/bench_profile > /tmp/ladder_logs/profile.log 2>&1
        cp /tmp/ladder_logs/fa_vs_fac_profile.md "$OUT/fa_vs_fac_profile_${gpu}.md" 2>/dev/null \
          || grep "Row(" /tmp/ladder_logs/profile.log > "$OUT/fa_vs_fac_profile_${gpu}.md"  # cut short: the rows it logged
      fi
      budget=$(( $(left) - 100 ))  # the last row started may take ~90 s (a 36-layer 1B compile)
      # master_weights=false: the committed ladder CSV, which a call fills in, was measured with fp32 weights
      # and torch's fused AdamW (before the bench's master weights); a new ladder drops it.
      ((budget > 0)) && timeout $(( $(left) - 5 )) python3 -m flowhn.bench scale=1b steps=6 warmup=3 peers=[] master_weights=false \
        seqlen_ladder=${LADDER_LENGTHS:-[1024,8192,16384,4096,2048]} tokens_per_step=16384 "entries=[$entries]" time_budget_s=$budget \
        csv="$part" hydra.run.dir=/tmp/bench_ladder$g > "$OUT/ladder_gpu$g.log" 2>&1
    ) &
    pids+=($!); parts+=("$part")
  done
  wait "${pids[@]}"
  python3 -c "import sys; from flowhn.bench import merge_ladder_csvs; merge_ladder_csvs(sys.argv[2:], sys.argv[1])" \
    "$OUT/seqlen_ladder.csv" "$LADDER_SEED" "${parts[@]}"
  python3 - "$OUT/seqlen_ladder.csv" "$OUT/seqlen_ladder_${gpu}.md" <<'EOF'
import sys, torch
from flowhn.bench import ladder_markdown, read_ladder_csv
rows = read_ladder_csv(sys.argv[1])
head = (f"### {torch.cuda.get_device_name()}, scale 1b, 16,384 tokens per step (batch = 16,384 / seq_len), "
        f"compiled as each row says, bf16 autocast, fused AdamW, torch {torch.__version__}")
open(sys.argv[2], "w").write(ladder_markdown(rows, head) + "\n")
missing = 35 - sum(r["status"] in ("ok", "OOM") for r in rows.values())
print(f"ladder: {len(rows)} rows in the CSV, {missing} of the 7 x 5 still to measure (call the stage again)")
EOF
}

mkdir -p /tmp/ladder_logs
[[ $stages == *" ablation "* ]] && ablation
if [[ $stages == *" ladder "* ]]; then
  if (( $(left) > 150 )); then ladder; else echo "ladder: $(left) s left, not started"; fi
fi
echo "== done in $(( $(date +%s) - started )) s; files: $(ls "$OUT" | tr '\n' ' ')"
[[ -f $OUT/fa_vs_fac_profile_${gpu}.md ]] && { echo; grep -E "^\| flowhn|kernel time|Row\(" "$OUT/fa_vs_fac_profile_${gpu}.md" | cut -c1-200; }
[[ -f $OUT/seqlen_ladder_${gpu}.md ]] && { echo; grep -E "^\|" "$OUT/seqlen_ladder_${gpu}.md"; }
[[ -f $OUT/seeds.md ]] && { echo; grep -E "^\|" "$OUT/seeds.md"; }
exit 0
