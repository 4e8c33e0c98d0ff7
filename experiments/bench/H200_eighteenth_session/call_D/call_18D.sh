#!/usr/bin/env bash
# Eighteenth session, call D (nvidia-h200): call C found every path's gradients equal at initialisation
# (fp32: 1e-5 of the float64 PyTorch path's, all of them; bf16: the same 4e-2 for all). So the same check
# where training has taken the weights: seed 0 trained 60 steps with the Triton path, keep off (the run that
# jumped at step 39 in the seventeenth session's call E), then every path's gradients at its checkpoint.
set -u
export PYTHONUNBUFFERED=1 FLOWHN_CACHE=$PWD/logs/flowhn-cache
timeout 200 python3 train.py experiment=kernel_parity seed=0 split=fac_split logger=csv 'eval.tasks=[]' \
  trainer.max_steps=60 model.ssm_backend=triton model.ssm_keep_scan_states=false hydra.run.dir=/tmp/nokeep60 \
  > $OUT/train_nokeep60.log 2>&1; echo "train rc $?"
grep -h "val/loss" -r /tmp/nokeep60 --include=metrics.csv | head -1
python3 - <<'PY'
import csv, glob
for p in glob.glob("/tmp/nokeep60/**/metrics.csv", recursive=True):
    print([(r["step"], r["val/loss"]) for r in csv.DictReader(open(p)) if r.get("val/loss")])
PY
ckpt=$(find /tmp/nokeep60 -name "*.ckpt" | sort | tail -1); echo "checkpoint $ckpt"
timeout 150 python3 scripts/gpu_grad_parity.py --checkpoint $ckpt > $OUT/grad_parity_trained.txt 2>&1; echo "grad parity rc $?"
grep -v "^$" $OUT/grad_parity_trained.txt | grep -E "^\||mixers|worst"
