#!/usr/bin/env bash
# Fifteenth session, call E (nvidia-h200-x2): where fac_split and no_split 1B spend their kernel time with
# this session's code (f10ee6f), one profiled row on each GPU at the same time (issue 13's ratio targets).
set -u
BUDGET_S=250; source scripts/gpu_call_lib.sh
P="profile=true profile_steps=1 profile_top=25"
( export CUDA_VISIBLE_DEVICES=0; LIMIT=200 STEPS=5 WARMUP=3 bench 1b fac_profiled "{model: flowhn, split: fac_split}" "$P" ) > $OUT/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1; LIMIT=200 STEPS=5 WARMUP=3 bench 1b no_split_profiled "{model: flowhn, split: no_split}" "$P" ) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Error|skipped" $OUT/gpu$g.log | cut -c1-200; done
grep -hE "^\| (flowhn|ssm scan|gemm|copy|conv|elementwise|attention|gather|cross|optimizer|norm)" $OUT/tables.md | head -40
