#!/usr/bin/env bash
# Fourteenth session, call E (nvidia-h200-x2): the 135M rows call D left, in place (GPU 0, the default) against
# through the copies (GPU 1, FLOWHN_SCAN_CHANNEL_LAST=0), at the same time.
set -u
BUDGET_S=280; source scripts/gpu_call_lib.sh
rows() {
  LIMIT=75 bench 135m hymba_$1 "{model: hymba}"
  LIMIT=80 bench 135m jamba_$1 "{model: jamba}"
  LIMIT=70 bench 135m no_split_$1 "{model: flowhn, split: no_split}"
}
( export CUDA_VISIBLE_DEVICES=0; rows cl; echo "$(date +%T) gpu0 done" ) > $OUT/gpu0.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=1 FLOWHN_SCAN_CHANNEL_LAST=0; rows rm; echo "$(date +%T) gpu1 done" ) > $OUT/gpu1.log 2>&1 &
wait
tables
for g in 0 1; do echo "== GPU $g"; grep -hE "^[0-9:]{8} |Row\(|Error|skipped" $OUT/gpu$g.log | sed -E "s/^.*Row\(//" | cut -c1-170; done
