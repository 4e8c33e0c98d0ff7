#!/usr/bin/env bash
# Twenty-second session, call B (nvidia-h200): (1) training with a bf16 residual stream against fp32: FlowHN
# 135M FAC_Split, experiment=kernel_parity (eager, 200 steps), seed 0, each setting twice, four processes at
# once (losses compared, not speed). (2) the 135M rows, one process each: llama, fac_split, HF Llama
# compiled, each with residual_dtype=fp32 and =autocast.
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
export FLOWHN_CACHE=$PWD/logs/flowhn-cache
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
train() {  # NAME OVERRIDES...
  local name=$1; shift
  timeout 200 python3 train.py experiment=kernel_parity seed=0 split=fac_split logger=csv 'eval.tasks=[]' \
    hydra.run.dir=$OUT/$name model.ssm_backend=triton "$@" > $OUT/$name.log 2>&1; echo "$name rc $?"
}
train fp32_a residual_dtype=fp32 & train fp32_b residual_dtype=fp32 &
train bf16_a residual_dtype=autocast & train bf16_b residual_dtype=autocast &
wait
python3 scripts/val_loss_table.py "$OUT" fp32_a fp32_b bf16_a bf16_b | tee $OUT/parity.md
(cd $OUT && mkdir -p parity && for r in fp32_a fp32_b bf16_a bf16_b; do
  cp $(find $r -name metrics.csv | head -1) parity/$r.csv 2>/dev/null; cp $r.log parity/; done
  tar czf parity.tgz parity && rm -rf fp32_? bf16_? *.log parity)
LIMIT=70 bench 135m llama_fp32 "{model: llama}" 2>&1 | tail -1
LIMIT=70 bench 135m llama_bf16 "{model: llama, residual_dtype: autocast}" 2>&1 | tail -1
LIMIT=70 bench 135m fac_fp32 "{model: flowhn, split: fac_split}" 2>&1 | tail -1
LIMIT=70 bench 135m fac_bf16 "{model: flowhn, split: fac_split, residual_dtype: autocast}" 2>&1 | tail -1
LIMIT=70 PEERS=[hf_llama_compiled] bench 135m hf_fp32 "" 2>&1 | tail -1
LIMIT=70 PEERS=[hf_llama_compiled] bench 135m hf_bf16 "" residual_dtype=autocast 2>&1 | tail -1
tables
echo "== rows"
for f in $T/*.md; do grep -hE "^\| (llama|flowhn|hf)" $f | sed "s|^|$(basename $f .md) |"; done
