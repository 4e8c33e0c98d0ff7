#!/usr/bin/env bash
# Nineteenth session, call G (nvidia-h200, one GPU): call F's fac_split 1B row (101,903 tok/s) came out 2.7 %
# under call C's (104,738) and its mamba 1B 1.8 % under call D's, on another lease. Whether the conv forward's
# wider tile has any part in it: fac_split 1B with the new forward tile and with the old one
# (FLOWHN_CONV_WALK_FWD_TILE=8,512,8,8), one after the other in this call.
set -u
BUDGET_S=230; source scripts/gpu_call_lib.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
STEPS=5 WARMUP=3 LIMIT=85 bench 1b fac_new "{model: flowhn, split: fac_split}"
FLOWHN_CONV_WALK_FWD_TILE=8,512,8,8 STEPS=5 WARMUP=3 LIMIT=85 bench 1b fac_old "{model: flowhn, split: fac_split}"
tables
echo "== rows (new tile, then old)"; grep -hE "^\| flowhn" $T/1b_fac_new.md $T/1b_fac_old.md
