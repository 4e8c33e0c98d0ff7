#!/usr/bin/env bash
# Issue 15 on 2 GPUs (nvidia-h200-x2), one call, < 9 min:  bash scripts/gpu_ddp.sh
#   1. flowhn fac_split, 2 GPUs, compile on: SIGTERM to every rank (the process group) once step 112
#      is logged (10 warm-up + 100 timed steps) -> all processes gone < 60 s, exit 143, summary
#      "stopped" with the tps measured until then and the time to the first step; then the same
#      command resumes (compile=false: may change on resume) and is stopped again 5 steps later.
#   2. python sweep.py hydra/launcher=torchrun hydra.launcher.parallel=2 trainer.devices=1
#      split=no_split,fac_split (two 1-GPU jobs at once, each on its own GPU; compile on; 112 steps):
#      the 1-GPU flowhn rows; results.csv must hold each job's tps.
#   3. as 1 with trainer.ddp.optimize_ddp=false (one graph, no DDPOptimizer split): start-up cost of
#      the split, and what its overlap buys.
#   4. llama, 2 GPUs then 1 GPU, stopped like 1 (no resume).
#   5. with GPU_DDP_1B=1 and time left: llama 1B on 1 and 2 GPUs (compile takes minutes).
# GPU_DDP_PLAN=scaling runs instead what the first run (eighteenth session, experiments/bench/H200_ddp.md)
# left open, one row after the other: fac_split on 1 GPU without CUDA graphs (compile_mode=null; the
# 2-GPU rows run without them, the 1-GPU default has them), on 2 GPUs without DDPOptimizer
# (optimize_ddp=false: is its graph split the 2.6x start-up?), and on 2 GPUs with CUDA graphs
# (compile_mode=reduce-overhead, never tried under DDP).
# Every run is train.py at 135m, bf16, batch 16 x 1024 per GPU; throughput is ThroughputMonitor's
# median over 10-step windows after 10 warm-up steps. Each phase's limit shrinks to fit
# GPU_DDP_BUDGET_S (470 s after the wheels are installed; later phases get less when earlier ones
# ran long). Back in $OUT: stops.jsonl (one line per run), sweep_results.csv, logs.tgz (every log),
# table.txt; the table is printed last.
set -uo pipefail
source .whl/install-wheels.sh >/dev/null || exit 1
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
export FLOWHN_CACHE=/tmp/flowhn-cache NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET_S=${GPU_DDP_BUDGET_S:-470}; T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
COMMON=(scale=135m logger=csv +logger.csv.flush_logs_every_n_steps=10 trainer.log_every_n_steps=10
        trainer.val_check_interval=1000 trainer.limit_val_batches=2 callbacks.throughput.warmup_steps=10
        callbacks.throughput.window=10 callbacks.checkpoint.every_n_train_steps=1000 callbacks.progress.refresh_rate=50)

# Starts a train.py command in its own process group, SIGTERMs the whole group once metrics.csv
# has step >= STOP_AT, and reports how the stop went (one JSON line to $OUT/stops.jsonl).
cat > /tmp/stop_probe.py <<'EOF'
import csv, json, os, signal, subprocess, sys, time
from pathlib import Path
label, run_dir, stop_at, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cmd = sys.argv[5:]
log = open(os.environ["OUT"] + f"/{label}.log", "w")
t0 = time.time()
proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

def max_step():
    try:
        with open(run_dir / "csv" / "metrics.csv", newline="") as f:
            return max((int(r["step"]) for r in csv.DictReader(f) if r.get("step")), default=-1)
    except (OSError, ValueError, KeyError):
        return -1

def members():
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == proc.pid and f[0] not in "ZX":
            out.append(int(stat.parent.name))
    return out

result = {"label": label}
while proc.poll() is None and max_step() < stop_at and time.time() - t0 < limit:
    time.sleep(0.5)
if proc.poll() is None:
    result["ranks_seen"] = len(members())
    t_sig = time.time(); os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pass
    while members() and time.time() - t_sig < 90:
        time.sleep(0.2)
    result["gone_s"] = round(time.time() - t_sig, 1)
    if members():
        os.killpg(proc.pid, signal.SIGKILL); result["killed"] = True
proc.wait()
result["rc"] = proc.returncode
result["wall_s"] = round(time.time() - t0, 1)
try:
    s = json.loads((run_dir / "summary.json").read_text())
except (OSError, ValueError):
    s = {}
result.update({k: s.get(k) for k in ("status", "steps", "num_devices", "tps", "tps_per_device", "mfu", "first_step_s", "error")})
ckpt = run_dir / "checkpoints" / "last.ckpt"
result["last_ckpt"] = ckpt.exists()
print(json.dumps(result), flush=True)
with open(os.environ["OUT"] + "/stops.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
EOF
export OUT
probe() {  # label run_dir stop_at limit_s overrides...
  local label=$1 dir=$2 stop=$3 limit=$4; shift 4
  timeout $((limit + 60)) python3 /tmp/stop_probe.py "$label" "$dir" "$stop" "$limit" python3 train.py "${COMMON[@]}" \
    hydra.run.dir="$dir" "$@"
}
R=/tmp/ddp_runs; rm -rf $R; mkdir -p $R
lim() { local want=$1 reserve=$2 l; l=$(( $(left) - reserve )); (( l < want )) && want=$l; (( want < 20 )) && want=20; echo $want; }
STOP=112  # 10 warm-up steps + 10 windows of 10 = 100 timed steps (+2: the last window closes)

SWEEP_RC=-; SWEEP_S=0
if [[ ${GPU_DDP_PLAN:-first} == scaling ]]; then
  probe 1gpu-flowhn-fac-nographs $R/flowhn1_nographs $STOP $(lim 120 350) model=flowhn split=fac_split trainer.devices=1 \
    trainer.max_steps=2000 compile_mode=null
  probe ddp2-flowhn-fac-no_optimize_ddp $R/flowhn2_noopt $STOP $(lim 200 170) model=flowhn split=fac_split trainer.devices=2 \
    trainer.max_steps=2000 trainer.ddp.optimize_ddp=false
  probe ddp2-flowhn-fac-graphs $R/flowhn2_graphs $STOP $(lim 200 5) model=flowhn split=fac_split trainer.devices=2 \
    trainer.max_steps=2000 compile_mode=reduce-overhead
else
# 1. flowhn fac_split, 2 GPUs, compile on: throughput, then the preemption check (SIGTERM to every rank)
probe ddp2-flowhn-fac $R/flowhn2 $STOP $(lim 200 250) model=flowhn split=fac_split trainer.devices=2 trainer.max_steps=2000
# ... and the same command resumes from the stopped step (compile=false: may change on resume), stopped again
FIRST_STOP=$(python3 -c "import json;print([json.loads(l) for l in open('$OUT/stops.jsonl') if '\"ddp2-flowhn-fac\"' in l][-1].get('steps') or 0)")
probe ddp2-flowhn-fac-resume $R/flowhn2 $((FIRST_STOP + 5)) $(lim 80 230) model=flowhn split=fac_split trainer.devices=2 \
  trainer.max_steps=2000 compile=false

# 2. the sweep: two 1-GPU jobs at once (compile on), each completes 120 steps
SWEEP_S=0; s0=$(date +%s)
timeout $(lim 180 170) python3 sweep.py hydra/launcher=torchrun hydra.launcher.parallel=2 trainer.devices=1 \
  split=no_split,fac_split "${COMMON[@]}" trainer.max_steps=$STOP --root $R --name sweep > "$OUT/sweep.log" 2>&1
SWEEP_RC=$?; SWEEP_S=$(( $(date +%s) - s0 ))
for j in $R/sweep/split=*; do
  python3 - "$j" <<'EOF2' >> "$OUT/stops.jsonl"
import json, sys; from pathlib import Path
d = Path(sys.argv[1])
try:
    s = json.loads((d / "summary.json").read_text())
except (OSError, ValueError):
    s = {"status": "missing"}
print(json.dumps({"label": "sweep-1gpu-flowhn-" + d.name.split("=")[1], **{k: s.get(k) for k in (
    "status", "steps", "num_devices", "tps", "tps_per_device", "mfu", "first_step_s", "wall_time_s", "error")}}))
EOF2
done
cp $R/sweep/results.csv "$OUT/sweep_results.csv" 2>/dev/null

# 3. flowhn fac_split, 2 GPUs, without DDPOptimizer (one graph): does the graph split cost the start-up?
probe ddp2-flowhn-fac-no_optimize_ddp $R/flowhn2_noopt $STOP $(lim 150 130) model=flowhn split=fac_split trainer.devices=2 \
  trainer.max_steps=2000 trainer.ddp.optimize_ddp=false

# 4. llama: 2 GPUs, then 1 GPU
probe ddp2-llama $R/llama2 $STOP $(lim 130 60) model=llama trainer.devices=2 trainer.max_steps=2000
probe 1gpu-llama $R/llama1 $STOP $(lim 110 5) model=llama trainer.devices=1 trainer.max_steps=2000

# 5. optional, while time is left
if [[ ${GPU_DDP_1B:-0} == 1 ]] && (( $(left) > 240 )); then
  probe 1gpu-llama-1b $R/llama1b1 60 $(( $(left) / 2 - 10 )) model=llama scale=1b trainer.devices=1 trainer.max_steps=2000
  probe ddp2-llama-1b $R/llama1b2 60 $(lim 300 10) model=llama scale=1b trainer.devices=2 trainer.max_steps=2000
fi
fi

(
echo "sweep rc=$SWEEP_RC in ${SWEEP_S}s; results.csv:"; cut -d, -f1-12 "$OUT/sweep_results.csv" 2>/dev/null | head -4
python3 - <<'EOF'
import json, os
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/stops.jsonl")]
def model(label, devices):  # the 1-GPU row a run compares with: same model, same CUDA-graph setting
    name = "llama" if "llama" in label else ("flowhn-no_split" if "no_split" in label else "flowhn-fac_split")
    # compile_mode=auto: CUDA graphs on one GPU only; the labels name the rows that differ from it
    graphs = ("nographs" not in label) if devices == 1 else label.endswith("-graphs")
    return name + ("-1b" if label.endswith("-1b") else "") + ("" if graphs else " no graphs")
one = {model(r["label"], 1): r["tps_per_device"] for r in rows if r.get("num_devices") == 1 and r.get("tps_per_device")}
print(f"\n{'run':38s} {'status':8s} {'rc':>4s} {'gone_s':>6s} {'steps':>5s} {'tok/s':>9s} {'tok/s/GPU':>9s} {'vs 1GPU':>7s} {'1st step s':>10s}")
for r in rows:
    base = one.get(model(r["label"], r.get("num_devices")))
    eff = f"{r['tps_per_device'] / base:.1%}" if r.get("tps_per_device") and base and r.get("num_devices") == 2 else ""
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else format("-", ">" + fmt.split(".")[0].rstrip("df"))
    print(f"{r['label']:38s} {str(r.get('status')):8s} {f(r.get('rc'), '4d')} {f(r.get('gone_s'), '6.1f')} {f(r.get('steps'), '5d')} "
          f"{f(r.get('tps'), '9.0f')} {f(r.get('tps_per_device'), '9.0f')} {eff:>7s} {f(r.get('first_step_s'), '10.1f')}")
EOF
echo "total $(( $(date +%s) - T0 ))s"
) 2>&1 | tee "$OUT/table.txt"
tar czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log 2>/dev/null) && rm -f "$OUT"/*.log
