#!/usr/bin/env bash
# Seventeenth session, call D (nvidia-h200, one GPU): the new defaults (the scan keeps its sub-chunk states in
# flowhn, shm, jamba): fac_split 1B profiled (its scan's kernel time with the states kept); the 135M rows
# whose default changed (fac_split, shm, no_split, jamba), and jamba 135M with keep off, one after the other.
set -u
BUDGET_S=480; source scripts/gpu_call_lib.sh
STEPS=5 WARMUP=3 LIMIT=95 bench 1b fac "{model: flowhn, split: fac_split}" "profile=true profile_steps=1 profile_top=12"
LIMIT=65 bench 135m fac "{model: flowhn, split: fac_split}"
LIMIT=65 bench 135m shm "{model: shm}"
LIMIT=85 bench 135m jamba_on "{model: jamba}"
LIMIT=65 bench 135m nosplit "{model: flowhn, split: no_split}"
LIMIT=85 bench 135m jamba_off "{model: jamba, model.ssm_keep_scan_states: false}"
tables
echo "== rows"; grep -hE "^\| (flowhn|jamba|shm)" $OUT/tables.md
