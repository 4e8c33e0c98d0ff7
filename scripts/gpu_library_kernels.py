#!/usr/bin/env python
"""Issue 13's "measure the well-kept libraries first": three pieces of our Mamba path against the Triton
kernels of mamba-ssm and fla, on one GPU, each checked against float64 before it is timed.

  pip install --no-index --no-deps --target /tmp/libs logs/libs/*.whl     # fla-core and einops (pure Python)
  PYTHONPATH=src:/tmp/libs python scripts/gpu_library_kernels.py --mamba-ssm logs/mamba_src/mamba_ssm-*.tar.gz
  ... --parts conv --fla-gluon      # fla's conv with its Gluon kernels (FLA_GLUON=1), in a process of its own

Pieces (bf16 unless said; forward + backward):
* ssd: Mamba-2's SSD. Ours (`triton_ssd.ssd_gpu`, states recomputed and kept); mamba-ssm's
  `mamba_chunk_scan_combined` (Triton; imported from its source distribution without building its CUDA
  extensions: the package's ``__init__`` imports the compiled Mamba-1 scan, so a bare package module stands
  in for it and only ``mamba_ssm.ops.triton`` is loaded); fla's `chunk_simple_gla` (scalar-decay linear
  attention, the SSD with q = C, k = B, v = dt·x, g = dt·A, scale 1, plus D·x; it takes one q, k per head,
  so the groups' B and C are repeated over their heads first, and that copy is timed with it).
* conv: the causal depthwise conv1d + bias + SiLU on a strided (B, L, C) view, as the mixers pass it
  (a column slice of in_proj's output). Ours (`triton_conv`) against fla's `causal_conv1d` (Triton).
* norm: Mamba-2's gated RMSNorm, norm(y · silu(z)) · w per group of channels (norm_before_gate=False).
  Ours is the plain `RMSNorm(groups)` path compiled by inductor (what the model runs; in the model inductor
  may fuse it further with its neighbours); fla's `rmsnorm_fn` (the same kernel as mamba-ssm's
  `layernorm_gated`).

Checks: relative L2 error of the output and every gradient against the float64 definition
(`reference.ssd_sequential`, `causal_conv1d_silu_reference`, the norm in float64) at shapes that are not
multiples of the tiles, bf16 and fp32 (after the timing). Timing: "kernel ms" = the GPU time of every kernel of one
forward + backward (the profiler's trace; launch gaps excluded), "wall ms" = do_bench's median of a
forward + backward (launches included). A table is printed last.
"""

from __future__ import annotations

import argparse
import functools
import glob
import os
import sys
import tarfile
import tempfile
import types

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from flowhn.kernels.testing import ScriptLog, dtype_name, errors_against, reference_fn, reference_result, ssd_inputs
from flowhn.kernels.torch_conv import causal_conv1d_silu_reference
from flowhn.perf.profile import profile_steps

log = ScriptLog()
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
SSD_CHECKS = [(3, 333, 6, 48, 6, 80), (2, 1000, 8, 64, 2, 128)]  # (batch, length, heads, head_dim, groups, N)
SSD_TIMED = [("Mamba-2 135M layer", (16, 1024, 24, 64, 1, 128)),
             ("Mamba-2 1B layer", (16, 1024, 64, 64, 1, 128)),
             ("issue 13's shape", (8, 1024, 24, 64, 1, 128))]
# conv: (batch, length, channels, row stride of the in_proj output it is a slice of)
CONV_CHECKS = [(2, 1000, 1000, 1100), (3, 77, 4352, 8512)]
CONV_TIMED = [("Mamba-1 1B x (16x1024x4096 of 8192)", (16, 1024, 4096, 8192)),
              ("Mamba-2 1B xBC (16x1024x4352 of 8512)", (16, 1024, 4352, 8512)),
              ("Mamba-2 135M xBC (16x1024x1792 of 3352)", (16, 1024, 1792, 3352))]
# norm: (batch, length, channels, groups)
NORM_CHECKS = [(2, 333, 1000, 2)]
NORM_TIMED = [("Mamba-2 1B (16x1024x4096)", (16, 1024, 4096, 1)),
              ("Mamba-2 135M (16x1024x1536)", (16, 1024, 1536, 1))]
EPS = 1e-5


# ----------------------------------------------------------------------------------------------------------
# the libraries


def load_mamba_ssm_triton(sdist: str):
    """mamba-ssm's ``mamba_chunk_scan_combined`` from its source distribution, without its CUDA extensions."""
    root = tempfile.mkdtemp(prefix="mamba_ssm_src_")
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    (package_dir,) = glob.glob(os.path.join(root, "*", "mamba_ssm"))
    package = types.ModuleType("mamba_ssm")  # stands in for __init__, which imports selective_scan_cuda
    package.__path__ = [package_dir]
    sys.modules["mamba_ssm"] = package
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def ssd_ours(recompute):
    from flowhn.kernels.triton_ssd import ssd_gpu

    return functools.partial(ssd_gpu, chunk_size=64, recompute=recompute, impl="triton")


def ssd_mamba_ssm(combined):
    def run(x, dt, A, B, C, D=None):  # flowhn.kernels.mamba_ssm_ops.ssd_mamba_ssm's call
        return combined(x, dt, A.float(), B, C, 64, D=None if D is None else D.float())
    return run


def ssd_fla(x, dt, A, B, C, D=None):
    from fla.ops.simple_gla import chunk_simple_gla

    rep = x.shape[2] // B.shape[2]
    q, k = C.repeat_interleave(rep, dim=2), B.repeat_interleave(rep, dim=2)
    v = (x * dt[..., None]).to(x.dtype)
    y, _ = chunk_simple_gla(q, k, v, g=dt.float() * A.float(), scale=1.0)
    if D is not None:
        y = y + (D[:, None] * x).to(y.dtype)
    return y.to(x.dtype)


def conv_ours(x, weight, bias):
    from flowhn.kernels.triton_conv import causal_conv1d_silu_triton

    return causal_conv1d_silu_triton(x, weight, bias)


def conv_fla(x, weight, bias):
    from fla.modules.causal_conv1d import causal_conv1d

    return causal_conv1d(x, weight, bias, activation="silu", backend="triton")[0]


def gated_norm_reference(y, z, weight, groups=1):
    dtype = y.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    h = (y.to(acc) * F.silu(z.to(acc))).unflatten(-1, (groups, -1))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return (h.flatten(-2) * weight.to(acc)).to(dtype)


def norm_ours():
    """The module's own forward, compiled, with the given tensor as its weight (one module per width)."""
    from flowhn.nn.norm import RMSNorm

    modules = {}

    @torch.compile(dynamic=False)
    def forward(norm, y, z, weight):
        return torch.func.functional_call(norm, {"weight": weight}, (y, z)).to(y.dtype)

    def run(y, z, weight, groups=1):
        key = (y.shape[-1], groups, y.device)
        if key not in modules:
            modules[key] = RMSNorm(y.shape[-1], EPS, groups).to(y.device)
        return forward(modules[key], y, z, weight)
    return run


def norm_fla(y, z, weight, groups=1):
    from fla.modules.norm.layernorm_gated import rmsnorm_fn

    return rmsnorm_fn(y, weight, None, z=z, eps=EPS, group_size=y.shape[-1] // groups, norm_before_gate=False)


# ----------------------------------------------------------------------------------------------------------
# inputs, checks, timing


def strided_conv_inputs(batch, length, channels, row_stride, dtype, seed=0):
    """x a column slice of a (batch, length, row_stride) tensor, as in_proj's output is split in the mixers."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float64)  # noqa: E731
    return {"x": make(batch, length, row_stride).to(dtype)[..., :channels],
            "weight": (0.5 * make(channels, 4)).to(dtype), "bias": (0.1 * make(channels)).to(dtype)}


def norm_inputs(batch, length, channels, groups, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float64)  # noqa: E731
    return {"y": make(batch, length, channels).to(dtype), "z": make(batch, length, channels).to(dtype),
            "weight": (1 + 0.1 * make(channels)).to(dtype)}, {"groups": groups}


def worst(errors):
    return max(errors.values(), key=lambda v: float("inf") if v != v else v)


def check(label, fn, inputs, reference, dtype, **static):
    try:
        errors = errors_against(functools.partial(fn, **static), inputs, reference)
    except Exception as exc:  # a library that cannot run a case is reported, the others go on
        log(f"  {label:44s} {dtype_name(dtype):8s} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        return False
    bad = worst(errors)
    ok = bad <= TOL[dtype]
    log(f"  {label:44s} {dtype_name(dtype):8s} {'PASS' if ok else 'FAIL'}  worst {bad:.1e}  "
        + "  ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    return ok


def timed(fn, inputs, **static):
    """(kernel ms, wall ms, launches) of one forward + backward, after a warm-up (compiles, autotuning)."""
    tensors = {k: v.detach().requires_grad_() for k, v in inputs.items() if v is not None}
    out = fn(**tensors, **static)
    dy = torch.randn_like(out)

    def step():
        fn(**tensors, **static).backward(dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    wall = do_bench(step, grad_to_none=list(tensors.values()), return_mode="median")
    breakdown = profile_steps(step, steps=5)
    kernel = sum(row[2] for row in breakdown.top_kernels)
    launches = sum(row[3] for row in breakdown.top_kernels)
    return kernel, wall, launches, breakdown


def run_piece(name, candidates, checks, timed_shapes, make_inputs, ref, rows, with_checks=True):
    """Timing first (bf16), then the float64 checks (the reference computed once per shape and dtype)."""
    log(f"\n== {name}: forward + backward, bf16")
    timings = []
    for shape_label, shape in timed_shapes:
        inputs, static = make_inputs(shape, torch.bfloat16)
        for label, fn in candidates:
            try:
                kernel, wall, launches, breakdown = timed(fn, inputs, **static)
            except Exception as exc:
                log(f"  {shape_label:40s} {label:24s} ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                timings.append((shape_label, label, float("nan"), float("nan"), 0))
                continue
            timings.append((shape_label, label, kernel, wall, launches))
            top = ", ".join(f"{n[:48]} {ms:.3f}" for n, _, ms, _ in breakdown.top_kernels[:5])
            log(f"  {shape_label:40s} {label:24s} kernels {kernel:7.3f} ms  wall {wall:7.3f} ms  "
                f"{launches:.0f} launches  [{top}]")
            torch.cuda.empty_cache()
    if not with_checks:
        rows.extend((name, shape_label, label, kernel, wall, launches, None)
                    for shape_label, label, kernel, wall, launches in timings)
        return
    log(f"\n== {name}: float64 checks (relative L2 error of the output and every gradient; tol fp32 1e-4, bf16 2e-2)")
    passed = {label: True for label, _ in candidates}
    for shape in checks:
        for dtype in (torch.bfloat16, torch.float32):
            inputs, static = make_inputs(shape, dtype)
            reference = reference_result(functools.partial(ref, **static), inputs)
            for label, fn in candidates:
                passed[label] &= check(f"{label} {'x'.join(map(str, shape))}", fn, inputs, reference, dtype, **static)
    rows.extend((name, shape_label, label, kernel, wall, launches, passed[label])
                for shape_label, label, kernel, wall, launches in timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="ssd,conv,norm")
    parser.add_argument("--mamba-ssm", help="mamba-ssm's source distribution (.tar.gz)")
    parser.add_argument("--no-checks", action="store_true", help="timing only")
    parser.add_argument("--no-fla", action="store_true", help="leave fla's candidates out")
    parser.add_argument("--fla-gluon", action="store_true", help="FLA_GLUON=1: fla's Gluon kernels where it has them")
    args = parser.parse_args()
    if args.fla_gluon:
        os.environ["FLA_GLUON"] = "1"
    if os.environ.get("OUT"):
        suffix = args.parts.replace(",", "_") + ("_gluon" if args.fla_gluon else "")
        log.open(os.path.join(os.environ["OUT"], f"library_{suffix}.log"))
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    parts = args.parts.split(",")
    if "ssd" in parts:
        candidates = [("ours (states recomputed)", ssd_ours(True)), ("ours (states kept)", ssd_ours(False))]
        if args.mamba_ssm:
            candidates.append(("mamba-ssm 2.3.2 Triton", ssd_mamba_ssm(load_mamba_ssm_triton(args.mamba_ssm))))
        if not args.no_fla:
            candidates.append(("fla chunk_simple_gla", ssd_fla))

        def make(shape, dtype):
            return ssd_inputs(*shape, dtype=dtype, device="cuda"), {}
        run_piece("ssd", candidates, SSD_CHECKS, SSD_TIMED, make, reference_fn("ssd"), rows, not args.no_checks)
    if "conv" in parts:
        def make(shape, dtype):
            return strided_conv_inputs(*shape, dtype=dtype), {}
        run_piece("conv", [("ours", conv_ours), ("fla" + (" gluon" if args.fla_gluon else " triton"), conv_fla)],
                  CONV_CHECKS, CONV_TIMED, make, causal_conv1d_silu_reference, rows, not args.no_checks)
    if "norm" in parts:
        def make(shape, dtype):
            return norm_inputs(*shape, dtype=dtype)
        run_piece("gated norm", [("ours (inductor)", norm_ours()), ("fla rmsnorm_fn", norm_fla)],
                  NORM_CHECKS, NORM_TIMED, make, gated_norm_reference, rows, not args.no_checks)

    log("\n| piece | shape | implementation | kernel ms | wall ms | launches | float64 checks |")
    log("|---|---|---|---:|---:|---:|---|")
    for piece, shape, label, kernel, wall, launches, ok in rows:
        log(f"| {piece} | {shape} | {label} | {kernel:.3f} | {wall:.3f} | {launches:.0f} | {'—' if ok is None else 'pass' if ok else 'FAIL'} |")


if __name__ == "__main__":
    main()
