#!/usr/bin/env python
"""Mamba-1 scan configurations at the issue's shape: GPU time per kernel of one forward + backward
(flowhn.perf.profile: by category and the top kernels).

  PYTHONPATH=src python scripts/gpu_scan_profile.py channels,64,64,1 states,64,8,1,8
  ncu --clock-control none -k regex:_scan_bwd -c 1 --section SchedulerStats --section WarpStateStats \\
      --section Occupancy python scripts/gpu_scan_profile.py channels,64,64,1 --no-profiler

Each argument is a candidate of scripts/gpu_scan_tiles.py (its ``configure`` tuple, comma-separated):
``channels,<chunk>,<channels>,<warps>`` or
``states,<chunk>,<channels>,<warps>,<blocks>`` or
``gluon,<fwd warps>,<bwd warps>,<sub-chunk>,<walk>[,<lanes a channel>]``. bf16, B=16, D=4096, L=1024, N=16 unless --shape.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_scan_tiles import candidate_name, configure, scan_calls  # noqa: E402

from flowhn.perf.profile import profile_steps  # noqa: E402


def parse(text):
    loop, *fields = text.split(",")
    return (loop, *(int(f) if f.isdigit() else f for f in fields))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+")
    parser.add_argument("--shape", default="16,4096,1024,16", help="B,D,L,N")
    parser.add_argument("--no-profiler", action="store_true", help="just run (for ncu)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    for text in args.candidates:
        candidate = parse(text)
        _, both, _ = scan_calls(configure(*candidate), shape, torch.bfloat16, "cuda")
        for _ in range(0 if args.no_profiler else 2):  # compile outside the measured call (ncu: one launch each)
            both()
        torch.cuda.synchronize()
        if args.no_profiler:
            both()
            torch.cuda.synchronize()
            continue
        print("\n" + profile_steps(both, steps=1).markdown(
            f"one forward + backward, {candidate_name(*candidate)}, {shape} bf16", top=10))


if __name__ == "__main__":
    main()
