#!/usr/bin/env bash
# Eighteenth session, call B (nvidia-h200, one GPU): issue 13's end-to-end check with two more seeds.
# FlowHN 135M FAC_Split trained 200 steps (experiment=kernel_parity, eager) with the Triton path at its
# default (states kept), the Triton path with keep off, and the PyTorch path, seeds 1 and 2: six processes
# at once on this GPU (losses compared, not speed; the seventeenth session's call E had seed 0).
set -u
export FLOWHN_CACHE=$PWD/logs/flowhn-cache
run() {  # NAME SEED OVERRIDES...
  local name=$1 seed=$2; shift 2
  timeout ${LIMIT:-430} python3 train.py experiment=kernel_parity seed=$seed split=fac_split logger=csv 'eval.tasks=[]' \
    hydra.run.dir=$OUT/$name "$@" > $OUT/$name.log 2>&1; echo "$name rc $?"
}
for seed in 1 2; do
  run torch_s$seed $seed model.ssm_backend=torch &
  run triton_keep_s$seed $seed model.ssm_backend=triton &
  run triton_nokeep_s$seed $seed model.ssm_backend=triton model.ssm_keep_scan_states=false &
done
wait
python3 - <<'PY'
import csv, glob, os
out = os.environ["OUT"]
runs = [f"{p}_s{s}" for s in (1, 2) for p in ("triton_keep", "triton_nokeep", "torch")]
val = {}
for r in runs:
    for path in glob.glob(f"{out}/{r}/**/metrics.csv", recursive=True):
        for row in csv.DictReader(open(path)):
            if row.get("val/loss"):
                val.setdefault(int(row["step"]), {})[r] = float(row["val/loss"])
print("| step | " + " | ".join(runs) + " |\n|---:|" + "---:|" * len(runs))
for step in sorted(val):
    print(f"| {step} | " + " | ".join(f"{val[step][r]:.4f}" if r in val[step] else "—" for r in runs) + " |")
PY
# A call brings back at most 8 files: each run's metrics.csv and log in one archive.
cd $OUT && mkdir -p parity && for r in *_s?; do cp $(find $r -name metrics.csv | head -1) parity/$r.csv 2>/dev/null; cp $r.log parity/; done
tar czf parity.tgz parity && rm -rf *_s? *_s?.log parity
