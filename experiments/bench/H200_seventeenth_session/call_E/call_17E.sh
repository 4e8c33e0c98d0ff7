#!/usr/bin/env bash
# Seventeenth session, call E (nvidia-h200, one GPU, the last ~200 s of device time): issue 13's end-to-end
# check refreshed for the kernels as they are now (Gluon scan reading the mixer's views in place, states
# kept, conv + x_proj op): FlowHN 135M FAC_Split trained 200 steps (experiment=kernel_parity, eager, seed 0)
# with the Triton path at its default (states kept), the Triton path with keep off, and the PyTorch path,
# the three processes at once on this GPU (losses compared, not speed). The BPE comes cached (logs/flowhn-cache).
set -u
export FLOWHN_CACHE=$PWD/logs/flowhn-cache
run() {  # NAME OVERRIDES...
  local name=$1; shift
  timeout 165 python3 train.py experiment=kernel_parity seed=0 split=fac_split logger=csv 'eval.tasks=[]' \
    hydra.run.dir=$OUT/$name "$@" > $OUT/$name.log 2>&1; echo "$name rc $?"
}
run triton_keep model.ssm_backend=triton &
run triton_nokeep model.ssm_backend=triton model.ssm_keep_scan_states=false &
run torch model.ssm_backend=torch &
wait
python3 scripts/val_loss_table.py "$OUT" triton_keep triton_nokeep torch
rm -rf $OUT/*/checkpoints
