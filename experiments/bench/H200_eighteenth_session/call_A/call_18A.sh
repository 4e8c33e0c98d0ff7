#!/usr/bin/env bash
# Eighteenth session, call A (nvidia-h200, one GPU): where fac_split 1B's 7.2 ms a step without a kernel go
# (95 % busy with its kernels at 150.1 ms, 149 ms needed for 50 % MFU), and llama 1B's (53.4 % MFU, 55 %
# wanted): gpu_host_profile's idle gaps on the device timeline, host-late share, the kernels around the
# largest gaps. Then jamba 1B profiled (issue 14's >= 90 % busy, not profiled last session).
set -u
BUDGET_S=540; source scripts/gpu_call_lib.sh
timeout 330 python3 scripts/gpu_host_profile.py --scale 1b --warmup 3 --steps 5 flowhn/fac_split llama \
  > $OUT/host_profile.stdout 2>&1; echo "host profile rc $?"
STEPS=5 WARMUP=3 LIMIT=110 bench 1b jamba "{model: jamba}" "profile=true profile_steps=1 profile_top=12"
tables
echo "== host profile"; grep -A4 "^| spec" $OUT/host_profile.log
grep -E "^=== " $OUT/host_profile.log
echo "== rows"; grep -hE "^\| (jamba)" $OUT/tables.md
