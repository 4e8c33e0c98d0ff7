#!/usr/bin/env bash
# Seventeenth session, call C (nvidia-h200, one GPU): the full-length Mamba-1 hybrids at 1B with the scan's
# sub-chunk states kept and not (call B's kernel time: the backward 17-18 % faster at every shape), one row
# after the other on this GPU: no_split, shm (keep off, on), jamba (keep on; off was call B's row).
set -u
BUDGET_S=560; source scripts/gpu_call_lib.sh
export STEPS=5 WARMUP=3 LIMIT=95
bench 1b nosplit_off "{model: flowhn, split: no_split, model.ssm_keep_scan_states: false}"
bench 1b nosplit_on "{model: flowhn, split: no_split, model.ssm_keep_scan_states: true}"
bench 1b shm_off "{model: shm, model.ssm_keep_scan_states: false}"
bench 1b shm_on "{model: shm, model.ssm_keep_scan_states: true}"
bench 1b jamba_on "{model: jamba, model.ssm_keep_scan_states: true}"
tables
echo "== rows"; grep -hE "^\| (flowhn|jamba|shm)" $OUT/tables.md
