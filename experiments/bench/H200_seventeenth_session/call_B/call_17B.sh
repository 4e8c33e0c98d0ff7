#!/usr/bin/env bash
# Seventeenth session, call B (nvidia-h200, one GPU): (1) the scan's kernel time (torch.profiler), keep
# off/on with each backward vector, at FAC's 369-step shares and the mamba 1B layer; (2) fac_split 1B with
# CUDA graphs, states kept and not (the second profiled, top 40 kernels); (3) jamba 1B (issue 14's 35 %
# target, last measured in the ninth session).
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
echo "$(date +%T) scan"
timeout 170 python3 scripts/gpu_mamba1.py --scan --kernel-time --scan-shapes 2,3,1 --sweep-first 6 \
  --sweep-budget-s 160 > $OUT/scan.stdout 2>&1; echo "scan rc $?"

STEPS=5 WARMUP=3 LIMIT=100 bench 1b fac_graphs_keep "{model: flowhn, split: fac_split, compile_mode: reduce-overhead, model.ssm_keep_scan_states: true}"
STEPS=5 WARMUP=3 LIMIT=110 bench 1b fac_graphs "{model: flowhn, split: fac_split, compile_mode: reduce-overhead}" "profile=true profile_steps=1 profile_top=40"
STEPS=5 WARMUP=3 LIMIT=100 bench 1b jamba "{model: jamba}"
tables
echo "== scan"; grep -E "^Scan|in place" $OUT/scan.stdout | head -40
echo "== rows"; grep -hE "^\| (flowhn|jamba)" $OUT/tables.md
