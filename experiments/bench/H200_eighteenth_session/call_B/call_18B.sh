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
python3 scripts/val_loss_table.py "$OUT" triton_keep_s1 triton_nokeep_s1 torch_s1 triton_keep_s2 triton_nokeep_s2 \
  torch_s2
# A call brings back at most 8 files: each run's metrics.csv and log in one archive.
cd $OUT && mkdir -p parity && for r in *_s?; do cp $(find $r -name metrics.csv | head -1) parity/$r.csv 2>/dev/null; cp $r.log parity/; done
tar czf parity.tgz parity && rm -rf *_s? *_s?.log parity
