#!/usr/bin/env python
"""Whether cuBLAS's ~400 `Memset (Device)` a training step (one before most `nvjet` GEMMs at llama and
fac_split 1B, eighteenth session) depend on its workspace, and what each setting costs the GEMMs.

  python scripts/gpu_gemm_memsets.py                  # every setting below, one subprocess each
  python scripts/gpu_gemm_memsets.py --one            # this process's environment only

cuBLAS reads its workspace settings when a handle is made, so each setting runs in a process of its own.
A setting times the GEMMs of a llama 1B layer (16 × 1024 tokens, d_model 2048, SwiGLU 5632, bf16) as training
runs them (F.linear's forward, its input gradient and its weight gradient), by kernel time from
torch.profiler (mean of 20 calls each), and counts the memsets and GEMM kernels a call launches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from torch.profiler import ProfilerActivity, profile

TOKENS, MODEL, HIDDEN = 16 * 1024, 2048, 5632
# (name, weight's out × in): q/o, k/v (GQA 256), gate/up, down
LAYERS = [("q,o", (MODEL, MODEL)), ("k,v", (256, MODEL)), ("gate,up", (HIDDEN, MODEL)), ("down", (MODEL, HIDDEN))]
SETTINGS = {  # name -> environment added
    "default": {},
    "no workspace": {"CUBLAS_WORKSPACE_CONFIG": ":0:0", "CUBLASLT_WORKSPACE_SIZE": "0"},
    "workspace 64 MiB": {"CUBLAS_WORKSPACE_CONFIG": ":65536:2", "CUBLASLT_WORKSPACE_SIZE": "65536"},
    "cublasLt preferred": {"TORCH_BLAS_PREFER_CUBLASLT": "1"},
}
CALLS = 20


def gemms():
    """(name, fn) for each GEMM of a layer's F.linear in training: forward, input gradient, weight gradient."""
    out = []
    for name, (n_out, n_in) in LAYERS:
        x = torch.randn(TOKENS, n_in, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(TOKENS, n_out, device="cuda", dtype=torch.bfloat16)
        out += [(f"{name} fwd", lambda x=x, w=w: x @ w.t()), (f"{name} dx", lambda dy=dy, w=w: dy @ w),
                (f"{name} dw", lambda dy=dy, x=x: dy.t() @ x)]
    return out


def measure() -> dict:
    rows = {}
    for name, fn in gemms():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(CALLS):
                fn()
            torch.cuda.synchronize()
        events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        memsets = [e for e in events if "memset" in e.name.lower()]
        kernels = [e for e in events if "memset" not in e.name.lower() and "memcpy" not in e.name.lower()]
        rows[name] = dict(ms=sum(e.device_time for e in kernels) / CALLS / 1e3, memsets=len(memsets) / CALLS,
                          kernels=len(kernels) / CALLS, kernel=kernels[0].name[:60] if kernels else "")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", action="store_true", help="measure in this process and print JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure()))
        return
    results = {}
    for setting, env in SETTINGS.items():
        proc = subprocess.run([sys.executable, __file__, "--one"], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode:
            print(f"{setting}: failed\n{proc.stderr[-2000:]}")
            continue
        results[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    if not results:
        sys.exit("gpu_gemm_memsets.py: no setting ran")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; GEMM kernel ms a call (memsets a call), "
          f"then each setting's kernels")
    names = list(next(iter(results.values())))
    print("\n| GEMM | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r[name]['ms']:.4f} ({r[name]['memsets']:g})" for r in results.values()) + " |")
    print("| all 12 | " + " | ".join(f"{sum(r[n]['ms'] for n in names):.4f}" for r in results.values()) + " |")
    for setting, r in results.items():
        print(f"\n{setting}: " + "; ".join(f"{n}: {r[n]['kernels']:g} x `{r[n]['kernel']}`" for n in names))


if __name__ == "__main__":
    main()
