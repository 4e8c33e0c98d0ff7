#!/usr/bin/env python
"""One Mamba-1 scan configuration at the issue's shape: CUDA time per kernel of a forward + backward.

  PYTHONPATH=src python scripts/gpu_scan_profile.py channels,64,64,1 states,64,8,1,8
  ncu --clock-control none -k regex:_scan_bwd -c 1 --section SchedulerStats --section WarpStateStats \\
      --section Occupancy python scripts/gpu_scan_profile.py channels,64,64,1 --no-profiler

Each argument is a candidate of scripts/gpu_scan_tiles.py (its ``configure`` tuple, comma-separated):
``channels,<chunk>,<channels>,<warps>`` or
``states,<chunk>,<channels>,<warps>,<blocks>``. bf16, B=16, D=4096, L=1024, N=16 unless --shape.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_scan_tiles import candidate_name, configure  # noqa: E402

from flowhn.kernels.testing import scan_inputs  # noqa: E402


def parse(text):
    loop, *numbers = text.split(",")
    return (loop, *(int(n) for n in numbers))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+")
    parser.add_argument("--shape", default="16,4096,1024,16", help="B,D,L,N")
    parser.add_argument("--no-profiler", action="store_true", help="just run (for ncu)")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    for text in args.candidates:
        candidate = parse(text)
        fn = configure(*candidate)
        inputs = scan_inputs(*shape, dtype=torch.bfloat16, device="cuda", seed=0)
        leaves = {k: v.requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        flags = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        dy = torch.randn_like(fn(**leaves, **flags))
        for _ in range(2):
            fn(**leaves, **flags).backward(dy)
        torch.cuda.synchronize()
        if args.no_profiler:
            fn(**leaves, **flags).backward(dy)
            torch.cuda.synchronize()
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn(**leaves, **flags).backward(dy)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        print(f"\nKernels of one forward + backward, {candidate_name(*candidate)}, {shape} bf16 (ms):")
        for e in sorted(events, key=lambda e: -e.device_time_total)[:10]:
            print(f"  {e.device_time_total / 1e3:8.3f}  {e.key[:100]}")


if __name__ == "__main__":
    main()
