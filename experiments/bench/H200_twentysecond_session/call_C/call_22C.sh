#!/usr/bin/env bash
# Twenty-second session, call C (nvidia-h200): call B's fp32-stream runs (master weights on, the default since
# the twentieth session) ended at 5.10 and 5.05, the nineteenth session's same command (fp32 weights) at 4.96
# and 4.88. The same command with optim.master_weights=false, each residual dtype twice, four processes at once.
set -u
export FLOWHN_CACHE=$PWD/logs/flowhn-cache PYTHONUNBUFFERED=1
train() {  # NAME OVERRIDES...
  local name=$1; shift
  timeout 240 python3 train.py experiment=kernel_parity seed=0 split=fac_split logger=csv 'eval.tasks=[]' \
    hydra.run.dir=$OUT/$name model.ssm_backend=triton "$@" > $OUT/$name.log 2>&1; echo "$name rc $?"
}
train nomw_fp32_a residual_dtype=fp32 optim.master_weights=false & train nomw_fp32_b residual_dtype=fp32 optim.master_weights=false &
train nomw_bf16_a residual_dtype=autocast optim.master_weights=false & train nomw_bf16_b residual_dtype=autocast optim.master_weights=false &
wait
python3 scripts/val_loss_table.py "$OUT" nomw_fp32_a nomw_fp32_b nomw_bf16_a nomw_bf16_b | tee $OUT/parity.md
grep -h "master\|MasterWeight" $OUT/nomw_fp32_a.log | head -5
(cd $OUT && mkdir -p parity && for r in nomw_fp32_a nomw_fp32_b nomw_bf16_a nomw_bf16_b; do
  cp $(find $r -name metrics.csv | head -1) parity/$r.csv 2>/dev/null; cp $r.log parity/; done
  tar czf parity.tgz parity && rm -rf nomw_* parity)
