#!/usr/bin/env python
"""Check every GPU scan backend against the float64 reference, then time it.

  PYTHONPATH=src python scripts/gpu_check_kernels.py            # accuracy, memory, timing table
  PYTHONPATH=src python scripts/gpu_check_kernels.py --sweep    # also time Triton tile choices

1. Accuracy: fresh random inputs (seed printed), the allocator's cache poisoned with NaN first so any
   output element a kernel forgets to write shows up; relative error ‖out − ref‖/‖ref‖ of the output and
   of every gradient against the float64 sequential reference fed the same inputs.
2. Memory: the Triton Mamba-1 forward+backward's scratch (peak allocation beyond inputs, output and
   gradients) must be far below the B·D·L·N·4 bytes a materialised state would take.
3. Timing: forward+backward median (triton.testing.do_bench). Minimum bytes moved = forward reads each
   input once and writes the output once; backward reads each input and dy once and writes one gradient
   per input: 3·(input bytes) + 2·(output bytes). GB/s = that / time, compared with the bandwidth of a
   large device-to-device copy (bytes read + written).
Writes the same text to $OUT/kernels.log when $OUT is set. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench

from flowhn.kernels import available_backends, selective_scan, ssd
from flowhn.kernels.testing import (ScriptLog, compare, copy_bandwidth, dtype_name, poison_allocator_cache, reference_fn,
                                    scan_inputs, ssd_inputs)
from flowhn.kernels.triton_scan import BWD_SUB_BLOCKS, selective_scan_triton

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DTYPES = (torch.float32, torch.bfloat16)
CHECK_SCAN = (2, 1536, 1024, 16)  # B, D, L, N
CHECK_SSD = (2, 1024, 24, 64, 1, 128)  # B, L, H, P, G, N
BENCH_SCAN = [(16, 4096, 1024, 16), (16, 4096, 369, 16)]  # 1B Mamba layer; 1B FAC split's SSM share
BENCH_SSD = [(8, 1024, 24, 64, 1, 128)]
SCAN_BACKENDS = ("triton", "mamba_ssm", "torch")
SSD_BACKENDS = ("triton", "mamba_ssm", "torch")

log = ScriptLog()





def kernel_fn(kind, backend):
    return functools.partial(selective_scan if kind == "selective_scan" else ssd, backend=backend)


def make_inputs(kind, shape, dtype, seed):
    if kind == "selective_scan":
        return scan_inputs(*shape, dtype=dtype, device="cuda", seed=seed)
    return ssd_inputs(*shape, dtype=dtype, device="cuda", seed=seed)


def check_accuracy(kind, shape, backend, dtype, seed):
    poison_allocator_cache()
    errors = compare(kernel_fn(kind, backend), reference_fn(kind), make_inputs(kind, shape, dtype, seed))
    worst = max(errors.values(), key=lambda v: float("inf") if v != v else v)  # NaN counts as worst
    ok = worst <= TOL[dtype]
    log(f"  {kind:14s} {backend:9s} {dtype_name(dtype):8s} {'PASS' if ok else 'FAIL'}  "
        + "  ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    return ok, worst


def bench(fn, inputs):
    """Median ms of forward+backward, and the minimum bytes that must move."""
    tensors = {k: v.detach().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    flags = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    out = fn(**tensors, **flags)
    dy = torch.randn_like(out)

    def step():
        fn(**tensors, **flags).backward(dy)

    ms = do_bench(step, grad_to_none=list(tensors.values()), return_mode="median")
    in_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return ms, 3 * in_bytes + 2 * out.numel() * out.element_size()


def scan_scratch_bytes(shape, dtype):
    """Peak memory of a Triton forward+backward beyond what stays allocated (inputs, dy, output, grads)."""
    inputs = scan_inputs(*shape, dtype=dtype, device="cuda", seed=0)
    tensors = {k: v.requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    dy = torch.randn(shape[:3], device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = selective_scan(**tensors, delta_softplus=True, backend="triton")
    out.backward(dy)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()


def sweep_tiles(shape, dtype):
    log(f"\nTile sweep, Triton Mamba-1, shape {shape}, {dtype_name(dtype)} (forward / forward+backward; "
        f"backward programs walk {BWD_SUB_BLOCKS} channel blocks):")
    inputs = scan_inputs(*shape, dtype=dtype, device="cuda", seed=0)
    for chunk in (32, 64):
        for block_d in (4, 8, 16, 32):
            for warps in (1, 2, 4):
                if block_d * chunk > 2048 or block_d * chunk < 32 * warps:
                    continue
                fn = functools.partial(selective_scan_triton, block_d=block_d, chunk=chunk, num_warps=warps)
                with torch.no_grad():
                    fwd = do_bench(lambda: fn(**inputs), return_mode="median")
                ms, _ = bench(fn, inputs)
                log(f"  chunk={chunk:3d} block_d={block_d:2d} warps={warps}  {fwd:.3f} / {ms:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="also time Triton Mamba-1 tile choices")
    parser.add_argument("--seed", type=int, default=None, help="input seed (default: fresh)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check_kernels.py: no CUDA device")
    if os.environ.get("OUT"):
        log.open(os.path.join(os.environ["OUT"], "kernels.log"))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    started = time.time()
    backends = available_backends("cuda")
    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    log(f"backends: {backends}   seed: {seed}")

    rows, failures = [], []
    log("\nAccuracy vs float64 reference (relative L2 error of output and every gradient):")
    accuracy = {}
    for kind, shape, names in (("selective_scan", CHECK_SCAN, SCAN_BACKENDS), ("ssd", CHECK_SSD, SSD_BACKENDS)):
        for backend in (b for b in names if b in backends):
            for dtype in DTYPES:
                ok, worst = check_accuracy(kind, shape, backend, dtype, seed)
                accuracy[kind, backend, dtype] = worst
                if not ok:
                    failures.append(f"{kind}/{backend}/{dtype_name(dtype)} accuracy")

    log("\nTriton Mamba-1 scratch memory (must be far below the B·D·L·N·4 bytes of materialised states):")
    for dtype in DTYPES:
        shape = BENCH_SCAN[0]
        scratch, states = scan_scratch_bytes(shape, dtype), 4 * shape[0] * shape[1] * shape[2] * shape[3]
        ok = scratch < states / 8
        log(f"  {shape} {dtype_name(dtype)}: scratch {scratch / 2**20:.1f} MiB vs states {states / 2**20:.0f} MiB "
            f"({scratch / states:.3f}) {'PASS' if ok else 'FAIL'} (limit 1/8)")
        if not ok:
            failures.append(f"scratch memory {dtype_name(dtype)}")

    bandwidth = copy_bandwidth()
    log(f"\nDevice-to-device copy bandwidth (1 GiB, read + write): {bandwidth:.0f} GB/s")
    log("Timing fwd+bwd; min bytes = 3·inputs + 2·output (fwd: read inputs, write out; bwd: read inputs + dy, "
        "write grads)")
    # The PyTorch Mamba-1 path is the CPU fallback; at these shapes its chunk tensors take most of the GPU.
    for kind, shapes, names in (("selective_scan", BENCH_SCAN, SCAN_BACKENDS[:2]), ("ssd", BENCH_SSD, SSD_BACKENDS)):
        for shape in shapes:
            for backend in (b for b in names if b in backends):
                for dtype in DTYPES:
                    ms, nbytes = bench(kernel_fn(kind, backend), make_inputs(kind, shape, dtype, seed))
                    gbs = nbytes / ms / 1e6
                    rows.append((f"{kind}/{backend}", "x".join(map(str, shape)), dtype_name(dtype),
                                 accuracy.get((kind, backend, dtype), float("nan")), ms, nbytes / 1e6, gbs,
                                 100 * gbs / bandwidth))
                    log(f"  {rows[-1][0]} {rows[-1][1]} {rows[-1][2]}: {ms:.3f} ms")

    if args.sweep:
        for dtype in DTYPES:
            sweep_tiles(BENCH_SCAN[0], dtype)

    log(f"\nSummary ({time.time() - started:.0f} s; rel-err from the accuracy shapes "
        f"{CHECK_SCAN} / {CHECK_SSD}, worst of output and gradients):")
    header = f"{'kernel':24s} {'shape':18s} {'dtype':9s} {'rel-err':>8s} {'ms':>8s} {'min MB':>8s} " \
             f"{'GB/s':>7s} {'% copy':>7s}"
    log(header)
    log("-" * len(header))
    for name, shape, dtype, err, ms, mb, gbs, pct in rows:
        log(f"{name:24s} {shape:18s} {dtype:9s} {err:8.1e} {ms:8.3f} {mb:8.0f} {gbs:7.0f} {pct:6.1f}%")
    log("FAILED: " + "; ".join(failures) if failures else "ALL CHECKS PASSED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
