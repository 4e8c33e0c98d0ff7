#!/usr/bin/env bash
# Eighth session, call B (nvidia-h200-x2): what bounds the Mamba-1 scan's Gluon backward.
# GPU 0: scripts/gpu_scan_ablate.py: variants that leave one stage out, 2 and 4 lanes a channel.
# GPU 1: ncu (--clock-control none) on the walking backward and forward at 16x4096x1024x16 bf16, default tile:
#        every section (--set full), then the backward's per-instruction stall samples (source page, SASS, csv).
set -u
export PYTHONUNBUFFERED=1
P="python3 scripts/gpu_scan_profile.py gluon,4,2,8,sequence --no-profiler"
(
  export CUDA_VISIBLE_DEVICES=0; echo "$(date +%T) ablate"
  timeout 400 python3 scripts/gpu_scan_ablate.py --lanes 2 4 > $OUT/ablate.log 2>&1; echo "rc $?"
  echo "$(date +%T) gpu0 done"
) > $OUT/gpu0.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1; echo "$(date +%T) ncu full"; which ncu
  timeout 200 ncu --clock-control none -k regex:_scan_.*_seq_kernel -c 2 --set full $P > $OUT/ncu_full.log 2>&1; echo "rc $?"
  echo "$(date +%T) ncu source"
  timeout 200 ncu --clock-control none -k regex:_scan_bwd_seq_kernel -c 1 --section SourceCounters --section WarpStateStats \
    --page source --print-source sass --csv $P > /tmp/bwd_sass.csv 2>/tmp/ncu_src.err; echo "rc $?"
  tail -3 /tmp/ncu_src.err; gzip -c /tmp/bwd_sass.csv > $OUT/bwd_sass.csv.gz; ls -la $OUT
  echo "$(date +%T) gpu1 done"
) > $OUT/gpu1.log 2>&1 &
wait
for g in 0 1; do echo "== GPU $g"; cat $OUT/gpu$g.log; done
grep -E "^\||^NVIDIA" $OUT/ablate.log
grep -E "_seq_kernel \(|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|One or More Eligible|Warp Cycles Per Issued|No Eligible|Block Limit" $OUT/ncu_full.log
