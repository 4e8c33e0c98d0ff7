#!/usr/bin/env bash
# Fourteenth session, call C (nvidia-h200-x2): the channel-last Gluon scan's tile (channels a thread) and the
# split rows it should help (FAC's SSM branch scans 369 of 1024 steps).
# GPU 0: gpu_mamba1.py --scan (row-major inputs / mixer views through the copies / in place, and the in-place
#        sweep over GLUON_CL_VECTOR), then mamba 135M in place at the sweep's best vector at the 135M layer,
#        and through the copies (FLOWHN_SCAN_CHANNEL_LAST=0), one after the other.
# GPU 1: flowhn/fac_split and flowhn/no_split at 1B, through the copies then in place, one after the other.
set -u
BUDGET_S=550; source scripts/gpu_call_lib.sh
(
  export CUDA_VISIBLE_DEVICES=0
  echo "$(date +%T) scan layouts"
  timeout 260 python3 scripts/gpu_mamba1.py --scan --sweep-budget-s 230 > $OUT/scan_layouts.stdout 2>&1; echo "scan rc $?"
  best=$(awk '/^Scan 16x1536x1024x16/{on=1} /^Scan 16x4096x1024/{on=0} on && /channels a thread/ {gsub(/[(),:]/," "); print $(NF-1), $8","$9}' \
    $OUT/mamba1.log | sort -n | head -1 | cut -d" " -f2)
  echo "best vector at the 135M layer: ${best:-none}"
  FLOWHN_SCAN_CL_VECTOR=${best:-2,1} LIMIT=90 bench 135m mamba_cl_best "{model: mamba}"
  FLOWHN_SCAN_CHANNEL_LAST=0 LIMIT=90 bench 135m mamba_rm "{model: mamba}"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  for split in fac_split no_split; do
    FLOWHN_SCAN_CHANNEL_LAST=0 LIMIT=120 STEPS=5 WARMUP=3 bench 1b ${split}_rm "{model: flowhn, split: $split}"
    LIMIT=120 STEPS=5 WARMUP=3 bench 1b ${split}_cl "{model: flowhn, split: $split}"
  done
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|rc [0-9]|best|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-180; done
grep -hE "^\| (mamba|flowhn)" $OUT/tables.md | head; grep -E "^scan " $OUT/scan_layouts.stdout
