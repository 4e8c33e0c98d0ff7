#!/usr/bin/env bash
# Nineteenth session, call B (nvidia-h200, one GPU): how far one command's training curve moves between runs.
# FlowHN 135M FAC_Split, experiment=kernel_parity (eager, 200 steps), seed 0, the Triton path with the states
# kept (the default) twice and with keep off twice: four processes at once (losses compared, not speed). The
# eighteenth session's keep-off runs ended higher than the kept and PyTorch paths at all three seeds (seed 0:
# 5.631 against 5.036) while every gradient matched float64; two runs of one command say whether that is
# run-to-run spread (dB/dC are summed by atomics, so no two runs are bit-identical) or the path.
set -u
export FLOWHN_CACHE=$PWD/logs/flowhn-cache PYTHONUNBUFFERED=1
run() {  # NAME OVERRIDES...
  local name=$1; shift
  timeout ${LIMIT:-480} python3 train.py experiment=kernel_parity seed=0 split=fac_split logger=csv 'eval.tasks=[]' \
    hydra.run.dir=$OUT/$name model.ssm_backend=triton "$@" > $OUT/$name.log 2>&1; echo "$name rc $?"
}
run keep_a & run keep_b & run nokeep_a model.ssm_keep_scan_states=false & run nokeep_b model.ssm_keep_scan_states=false &
wait
python3 scripts/val_loss_table.py "$OUT" keep_a keep_b nokeep_a nokeep_b
cd $OUT && mkdir -p parity && for r in keep_a keep_b nokeep_a nokeep_b; do
  cp $(find $r -name metrics.csv | head -1) parity/$r.csv 2>/dev/null; cp $r.log parity/; done
tar czf parity.tgz parity && rm -rf keep_? nokeep_? *.log parity
