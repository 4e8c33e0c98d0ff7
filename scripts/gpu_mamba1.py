#!/usr/bin/env python
"""Mamba-1 path on one GPU: correctness of the new kernels against float64, then old vs new timings.

  PYTHONPATH=src python scripts/gpu_mamba1.py            # everything (about 4-5 minutes on an H200)
  PYTHONPATH=src python scripts/gpu_mamba1.py --quick    # no tile sweeps, no pytest
  PYTHONPATH=src python scripts/gpu_mamba1.py --conv     # only the conv: its accuracy, timings, sweeps

1. GPU tests: pytest -m gpu on tests/test_triton_conv.py and the Mamba-1 tests of tests/test_kernels.py.
2. Accuracy (rel. L2 error of output and every gradient vs the float64 definition; allocator cache
   poisoned with NaN first): Triton conv (strided input, L and C not tile multiples), the shifted
   PyTorch conv compiled, the Triton scan row-major (old layout) and channel-last (new), fp32 and bf16.
3. Conv at the 1B Mamba layer (16 × 1024 × 4096, width 4, bf16, x the hidden half of a (B, L, 8192)
   in_proj output): F.pad + F.conv1d + SiLU on the transposed view (old, eager and compiled) vs the
   Triton kernels (each backward: ``recompute``, ``staged``, ``walk``; triton_conv.BWD_KERNEL) vs the shifted
   multiply-adds compiled; a forward and a backward tile sweep per backward kernel; the floor
   = 5·B·L·C·2 bytes (fwd: read x, write out; bwd: read x and dy, write dx) at copy bandwidth.
4. Scan at the Mamba 135M layer (16×1536×1024×16), 16×4096×1024×16 (Mamba 1B's), 16×4096×369×16 and
   16×1536×369×16 (FAC's SSM share at 1B and 135M), bf16: row-major inputs (the kernels alone), the mixer's
   channel-last views through the row-major copies, and read in place; a sweep of the in-place tiles
   (SCAN_SWEEP: channels a thread, the backward's lanes a channel, warps, sub-chunk); the two
   floors: bytes (3·inputs + 2·output) at copy bandwidth, and exponentials (B·L·D·N forward +
   2·B·L·D·N backward) at special-function throughput (SMs × 16 per clock × 1.98 GHz).
   ``--scan``: only this section.
5. Mamba1Mixer forward+backward at 1B dims (d_model 2048, B=16, L=1024, bf16 autocast, compiled):
   the old forward (transposes, F.conv1d, padded scan) vs the new one with each GPU conv.
Prints a table last; writes the log to $OUT/mamba1.log when $OUT is set. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

import flowhn.kernels as kernels
import flowhn.kernels.triton_conv as triton_conv
import flowhn.kernels.triton_scan as triton_scan
from flowhn.kernels.testing import (ScriptLog, compare, copy_bandwidth, poison_allocator_cache, reference_fn,
                                    scan_inputs)
from flowhn.kernels.torch_conv import causal_conv1d_silu_shifted, compare_conv, conv_inputs
from flowhn.nn.ssm import Mamba1Mixer

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# Shapes (the --cpu-smoke flag swaps in tiny ones to exercise this script on the Triton interpreter).
SIZES = dict(
    acc_conv=[((2, 1000, 1536, 4), 3072), ((3, 77, 4352, 4), None)], acc_scan=(2, 1536, 1000, 16),
    acc_mixer=(128, 2, 300), conv=[((16, 1024, 4096, 4), 8192, "conv 1B mamba"),
                                   ((16, 1024, 4352, 4), 8512, "conv 1B mamba2 xBC")],
    scan=[(16, 1536, 1024, 16), (16, 4096, 1024, 16), (16, 4096, 369, 16), (16, 1536, 369, 16)], dt_rank=128,
    mixer=(2048, 16, 1024))
# The in-place scan's tile sweep: triton_scan attributes a point sets, the rest at their defaults.
# KEEP_STATES: the forward keeps the state after every sub-chunk for the backward (its two values first, as
# the A/B of the sixteenth session). GLUON_CL_VECTOR: (forward, backward) channels a thread at channel-last
# memory; GLUON_BWD_LANES, _BWD_WARPS, _SUB: the backward's lanes a channel, warps a program and sub-chunk.
SCAN_SWEEP = [
    dict(KEEP_STATES=False), dict(KEEP_STATES=True), dict(KEEP_STATES=True, GLUON_CL_VECTOR=(8, 0)),
    dict(KEEP_STATES=True, GLUON_CL_VECTOR=(8, 1)), dict(KEEP_STATES=True, GLUON_CL_VECTOR=(8, 2)),
    dict(KEEP_STATES=True, GLUON_CL_VECTOR=(8, 4)),
    dict(GLUON_CL_VECTOR=(8, 0)), dict(GLUON_CL_VECTOR=(8, 1)), dict(GLUON_CL_VECTOR=(8, 4)),
    dict(GLUON_BWD_LANES=4, GLUON_CL_VECTOR=(8, 0)), dict(GLUON_BWD_LANES=4, GLUON_CL_VECTOR=(8, 1)),
    dict(GLUON_BWD_LANES=4, GLUON_SUB=4, GLUON_CL_VECTOR=(8, 0)),
    dict(GLUON_BWD_LANES=4, GLUON_BWD_WARPS=4, GLUON_CL_VECTOR=(8, 0)),
    dict(GLUON_BWD_LANES=4, GLUON_BWD_WARPS=1, GLUON_CL_VECTOR=(8, 0)),
]
SMOKE_SIZES = dict(
    acc_conv=[((2, 13, 40, 4), 96)], acc_scan=(2, 12, 19, 4), acc_mixer=(8, 2, 11),
    conv=[((2, 16, 64, 4), 160, "conv smoke"), ((2, 16, 72, 4), 160, "conv smoke 2")],
    scan=[(2, 16, 40, 4), (2, 16, 23, 4)], dt_rank=4, mixer=(16, 2, 24))
KERNEL_TIME = False  # --kernel-time: fwd_bwd_ms reports GPU kernel time instead of wall time
WALK_ONLY = False  # --conv-walk: the conv sections time and sweep only the walking kernels
SWEEP_BUDGET_S = 210  # tile sweeps stop adding configs once the script has run this long
STARTED = time.time()
DEVICE = "cuda"
DTYPES = (torch.float32, torch.bfloat16)
BENCH_DTYPE = torch.bfloat16
MUFU_PER_SM_PER_CLOCK, CLOCK_HZ = 16, 1.98e9
log = ScriptLog()
rows: list[tuple] = []  # (section, variant, shape, ms, floor ms or nan, note)
failures: list[str] = []




def check(name, errors, tol):
    worst = max(errors.values(), key=lambda v: float("inf") if v != v else v)
    ok = worst <= tol
    log(f"  {name:46s} {'PASS' if ok else 'FAIL'} worst {worst:.1e}  "
        + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    if not ok:
        failures.append(name)
    return worst


def fwd_bwd_ms(fn, leaves, *, fwd_only=False):
    """ms of fn() (+ backward of its output under a fixed cotangent), gradients reset each time: median
    wall time (do_bench), or with KERNEL_TIME the GPU time of its kernels summed (torch.profiler, mean
    of 10 runs), which the host's launch overhead cannot inflate: kernels of ~0.1-1 ms launched with
    autograd's overhead between them, on a host shared with another GPU's run, read up to 40 % high in
    wall time (tenth session, call A)."""
    out = fn()
    dy = torch.randn_like(out)

    def step():
        if fwd_only:
            with torch.no_grad():
                fn()
        else:
            fn().backward(dy)

    if DEVICE != "cuda":  # --cpu-smoke: one timed call, the numbers mean nothing
        started = time.time()
        step()
        return (time.time() - started) * 1e3
    if not KERNEL_TIME:
        return do_bench(step, grad_to_none=leaves, return_mode="median")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            for leaf in leaves:
                leaf.grad = None
            step()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages()) / 10 / 1e3


def compile_fn(fn):
    return torch.compile(fn) if DEVICE == "cuda" else fn


# ---------------------------------------------------------------- accuracy

BACKWARD_KERNELS = triton_conv.BWD_KERNELS


@contextlib.contextmanager
def _conv_kernel(choice, kernel, prefix, tile):
    """triton_conv.<choice> = kernel and its tile constants <prefix>BLOCK_L, BLOCK_C, SEG_TILES, WARPS
    (``tile``, or as they are) while inside; all restored after. A forward ``tile`` is taken as given (its
    wider channel block for channels that are a multiple of it, WALK_FWD_WIDE_BLOCK_C, off)."""
    names = [prefix + n for n in ("BLOCK_L", "BLOCK_C", "SEG_TILES", "WARPS")]
    if tile and prefix == "WALK_FWD_":
        names.append("WALK_FWD_WIDE_BLOCK_C")
        tile = (*tile, 0)
    saved = getattr(triton_conv, choice), [getattr(triton_conv, n) for n in names]
    setattr(triton_conv, choice, kernel)
    for n, v in zip(names, tile or saved[1]):
        setattr(triton_conv, n, v)
    try:
        yield
    finally:
        setattr(triton_conv, choice, saved[0])
        for n, v in zip(names, saved[1]):
            setattr(triton_conv, n, v)


def conv_backward(kernel, tile=None):
    """The conv's backward kernel (and its tile: block_l, block_c, seg_tiles, warps) while inside."""
    return _conv_kernel("BWD_KERNEL", kernel, {"staged": "STAGED_", "walk": "WALK_"}.get(kernel, "BWD_"), tile)


def conv_forward(kernel, tile=None):
    """The conv's forward kernel ("tiles" or "walk"; the walk's tile: block_l, block_c, seg_tiles, warps)."""
    return _conv_kernel("FWD_KERNEL", kernel, "WALK_FWD_", tile)


def accuracy(seed, conv_only=False):
    log("\nAccuracy vs float64 (relative L2 error of the output and every gradient):")
    shifted_compiled = compile_fn(causal_conv1d_silu_shifted)
    for dtype in DTYPES:
        for shape, stride in SIZES["acc_conv"]:
            poison_allocator_cache()
            inputs = conv_inputs(*shape, dtype=dtype, device=DEVICE, row_stride=stride, seed=seed)
            tag = f"{'x'.join(map(str, shape))} {str(dtype)[6:]}"
            for kernel in BACKWARD_KERNELS:
                forward = "walk" if kernel == "walk" else "tiles"
                with conv_backward(kernel), conv_forward(forward):
                    check(f"conv triton, {forward} fwd, {kernel} bwd {tag}",
                          compare_conv(triton_conv.causal_conv1d_silu_triton, inputs), TOL[dtype])
            check(f"conv shifted compiled {tag}", compare_conv(shifted_compiled, inputs), TOL[dtype])
    if conv_only:
        return
    cl = lambda t: None if t is None else t.transpose(1, 2).contiguous().transpose(1, 2)
    for dtype in DTYPES:
        inputs = scan_inputs(*SIZES["acc_scan"], dtype=dtype, device=DEVICE, seed=seed)
        tag = f"{'x'.join(map(str, SIZES['acc_scan']))} {str(dtype)[6:]}"
        fn = functools.partial(kernels.selective_scan, backend="triton")
        poison_allocator_cache()
        check(f"scan row-major {tag}", compare(fn, reference_fn("selective_scan"), inputs), TOL[dtype])
        inputs = {k: cl(v) if k in ("u", "delta", "z", "B", "C") else v for k, v in inputs.items()}
        poison_allocator_cache()
        check(f"scan channel-last {tag}", compare(functools.partial(triton_scan.selective_scan_triton, channel_last=True),
                                                  reference_fn("selective_scan"), inputs), TOL[dtype])
    # The whole mixer, new path, against the same weights on the sequential reference (float64).
    torch.manual_seed(seed % 2**31)
    d_model, batch, length = SIZES["acc_mixer"]
    mixer = Mamba1Mixer(d_model=d_model, d_state=16, backend="triton").to(DEVICE).double()
    x = torch.randn(batch, length, d_model, device=DEVICE, dtype=torch.float64, requires_grad=True)
    got = [mixer(x)]
    got += torch.autograd.grad(got[0].square().sum(), [x, *mixer.parameters()])
    mixer.backend = "reference"
    want = [mixer(x)]
    want += torch.autograd.grad(want[0].square().sum(), [x, *mixer.parameters()])
    names = ["out", "dx"] + [f"d{n}" for n, _ in mixer.named_parameters()]
    from flowhn.kernels.testing import relative_error
    check("Mamba1Mixer triton vs reference fp64", {n: relative_error(a, b) for n, a, b in zip(names, got, want)},
          TOL[torch.float32])


# ---------------------------------------------------------------- conv timing

def conv_old(x, weight, bias):
    """The mixers' old path: (B, C, L) view, F.pad copy, cuDNN depthwise conv, SiLU, back to (B, L, C)."""
    width = weight.shape[1]
    out = F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), weight[:, None, :].to(x.dtype), bias.to(x.dtype),
                   groups=x.shape[2])
    return F.silu(out).transpose(1, 2)


def time_conv(bandwidth, sweep, shape, stride, label):
    batch, length, channels, width = shape
    inputs = conv_inputs(*shape, dtype=BENCH_DTYPE, device=DEVICE, row_stride=stride, seed=0)
    # A strided leaf (detach keeps the view's strides): dx is the kernel's contiguous (B, L, C) output,
    # with no scatter into a (B, L, row stride) gradient, which the mixer does as part of in_proj's.
    x = inputs["x"].detach().requires_grad_()
    w, b = inputs["weight"].requires_grad_(), inputs["bias"].requires_grad_()
    leaves = [x, w, b]
    nbytes = 5 * batch * length * channels * 2
    floor = nbytes / bandwidth / 1e6
    tag = f"{batch}x{length}x{channels} k{width}"
    variants = {  # name: (function, the Triton conv's forward and backward kernels while it runs)
        "triton, walk fwd, walk bwd": (triton_conv.causal_conv1d_silu_triton, ("walk", "walk")),
    } if WALK_ONLY else {
        "F.conv1d+SiLU eager (old)": (conv_old, None),
        "F.conv1d+SiLU compiled": (compile_fn(conv_old), None),
        "shifted madds compiled": (compile_fn(causal_conv1d_silu_shifted), None),
        **{f"triton, {kernel} bwd": (triton_conv.causal_conv1d_silu_triton, ("tiles", kernel))
           for kernel in BACKWARD_KERNELS},
        "triton, walk fwd, walk bwd": (triton_conv.causal_conv1d_silu_triton, ("walk", "walk")),
    }
    log(f"\n{label} {tag} bf16 (x: column view, row stride {stride}); floor {floor:.3f} ms "
        f"({nbytes / 1e6:.0f} MB at {bandwidth:.0f} GB/s)")
    for name, (fn, kernels_used) in variants.items():
        call = lambda fn=fn: fn(x, w, b)
        forward, backward = kernels_used or (triton_conv.FWD_KERNEL, triton_conv.BWD_KERNEL)
        with conv_backward(backward), conv_forward(forward):
            fwd = fwd_bwd_ms(call, leaves, fwd_only=True)
            ms = fwd_bwd_ms(call, leaves)
        log(f"  {name:28s} fwd {fwd:.3f}  fwd+bwd {ms:.3f} ms  ({ms / floor:.2f}x floor)")
        rows.append((label, name, tag, ms, floor, f"fwd {fwd:.3f}"))
    if sweep:
        sweep_conv_tiles(x, w, b, leaves, label, tag, floor)


def sweep_conv_tiles(x, w, b, leaves, label, tag, floor):
    best = (float("inf"), None)
    tiled = () if WALK_ONLY else ((16, 128, 4), (32, 64, 4), (32, 128, 4), (32, 256, 4), (64, 128, 4), (64, 256, 8),
                                  (128, 64, 4), (32, 128, 8))
    if tiled:
        log("  Triton forward tiles (block_l, block_c, warps): fwd ms")
    for bl, bc, nw in tiled:
        if time.time() - STARTED > SWEEP_BUDGET_S:
            break
        fn = functools.partial(triton_conv.causal_conv1d_silu_triton, block_l=bl, block_c=bc, num_warps=nw)
        fwd = fwd_bwd_ms(lambda: fn(x, w, b), leaves, fwd_only=True)
        best = min(best, (fwd, (bl, bc, nw)))
        log(f"    ({bl:3d}, {bc:3d}, {nw}) {fwd:.3f}")
    if tiled:
        log(f"  best forward tile {best[1]}: {best[0]:.3f} ms")
    log("  Triton walking forward tiles (block_l, block_c, seg_tiles, warps): fwd ms")
    best_walk = (float("inf"), None)
    for cfg in triton_conv.WALK_FWD_TILES:
        if time.time() - STARTED > SWEEP_BUDGET_S:
            break
        with conv_forward("walk", cfg):
            fwd = fwd_bwd_ms(lambda: triton_conv.causal_conv1d_silu_triton(x, w, b), leaves, fwd_only=True)
        best_walk = min(best_walk, (fwd, cfg))
        log(f"    {cfg} {fwd:.3f}")
    log(f"  best walking forward tile {best_walk[1]}: {best_walk[0]:.3f} ms")
    # The staged kernel's tiles (scripts/kernel_stats.py --conv on sm_90): 8 x 128 x 4 warps (the
    # default) has no spills in 128 registers; 16 x 128 x 4 the fewest instructions per element.
    tiles = {"recompute": ((16, 128, 8, 4), (32, 64, 8, 4), (32, 128, 4, 4), (32, 128, 8, 4), (32, 128, 16, 4),
                           (32, 256, 8, 8), (64, 128, 4, 8), (64, 64, 8, 4), (16, 256, 16, 4), (32, 128, 32, 4)),
             "staged": ((8, 128, 32, 4), (8, 128, 16, 4), (16, 128, 16, 4), (16, 128, 8, 4), (16, 64, 16, 2),
                        (16, 128, 16, 8), (32, 64, 16, 4), (8, 256, 16, 4), (16, 128, 32, 4), (4, 128, 32, 2)),
             "walk": triton_conv.WALK_TILES}
    for kernel in ("walk",) if WALK_ONLY else ("walk", "staged", "recompute"):
        log(f"  Triton {kernel} backward tiles (block_l, block_c, seg_tiles, warps): fwd+bwd ms (forward at its default)")
        best_bwd = (float("inf"), None)
        for cfg in tiles[kernel]:
            if time.time() - STARTED > SWEEP_BUDGET_S:
                break
            with conv_backward(kernel, cfg):
                ms = fwd_bwd_ms(lambda: triton_conv.causal_conv1d_silu_triton(x, w, b), leaves)
            best_bwd = min(best_bwd, (ms, cfg))
            log(f"    {cfg} {ms:.3f}")
        log(f"  best {kernel} backward tile {best_bwd[1]}: fwd+bwd {best_bwd[0]:.3f} ms")
        rows.append((label, f"triton, {kernel} bwd, best tile", tag, best_bwd[0], floor,
                     f"fwd {best_walk[1] if WALK_ONLY else best[1]} bwd {best_bwd[1]}"))


# ---------------------------------------------------------------- scan timing

def mixer_like_scan_inputs(batch, dim, length, state, dt_rank, seed=0):
    """Channel-last scan inputs laid out as Mamba1Mixer hands them over: u (conv output), delta
    (dt_proj output) and z (in_proj's second GEMM; the second half of one (B, L, 2D) output until the
    sixteenth session) contiguous (B, L, D), B and C column views of a (B, L, dt_rank + 2N) x_proj output;
    all seen as (B, D, L) / (B, N, L)."""
    ref = scan_inputs(batch, dim, length, state, dtype=BENCH_DTYPE, device=DEVICE, seed=seed)
    xproj = torch.empty(batch, length, dt_rank + 2 * state, device=DEVICE, dtype=BENCH_DTYPE)
    xproj[..., dt_rank:dt_rank + state] = ref["B"].transpose(1, 2)
    xproj[..., dt_rank + state:] = ref["C"].transpose(1, 2)
    out = dict(ref)
    out["u"] = ref["u"].transpose(1, 2).contiguous().transpose(1, 2)
    out["delta"] = ref["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    out["z"] = ref["z"].transpose(1, 2).contiguous().transpose(1, 2)
    out["B"] = xproj[..., dt_rank:dt_rank + state].transpose(1, 2)
    out["C"] = xproj[..., dt_rank + state:].transpose(1, 2)
    assert triton_scan.is_channel_last(out["u"]) and triton_scan.is_channel_last(out["z"])
    return ref, out


def scan_ms(inputs, fwd_only=False, channel_last=None):
    tensors = {k: v.detach().requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    flags = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    fn = functools.partial(triton_scan.selective_scan_triton, channel_last=channel_last)
    return fwd_bwd_ms(lambda: fn(**tensors, **flags), list(tensors.values()), fwd_only=fwd_only)


def time_scan(bandwidth, sweep):
    """The scan at SIZES["scan"]: row-major inputs (the kernels alone), the mixer's channel-last views sent
    through the row-major copies (channel_last=False: what the mixer ran before the Gluon kernels read
    them in place), and read in place (channel_last=True); with ``sweep``, the channel-last kernels at
    each point of SCAN_SWEEP (triton_scan attributes set for it)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" else 1
    mufu = sms * MUFU_PER_SM_PER_CLOCK * CLOCK_HZ
    for batch, dim, length, state in SIZES["scan"]:
        row_major, channel_last = mixer_like_scan_inputs(batch, dim, length, state, dt_rank=SIZES["dt_rank"])
        elems = batch * dim * length
        in_bytes = sum(t.numel() * t.element_size() for t in row_major.values() if isinstance(t, torch.Tensor))
        byte_floor = (3 * in_bytes + 2 * elems * 2) / bandwidth / 1e6
        exp_floor = 3 * elems * state / mufu * 1e3
        tag = f"{batch}x{dim}x{length}x{state}"
        log(f"\nScan {tag} bf16; floors: bytes {byte_floor:.3f} ms, exponentials {exp_floor:.3f} ms "
            f"({sms} SMs x {MUFU_PER_SM_PER_CLOCK}/clk x {CLOCK_HZ / 1e9:.2f} GHz)")
        floor = max(byte_floor, exp_floor)
        variants = [("row-major inputs", row_major, None), ("mixer views, row-major copies", channel_last, False),
                    ("mixer views, in place", channel_last, True)]
        for name, inputs, layout in variants:
            fwd, ms = scan_ms(inputs, fwd_only=True, channel_last=layout), scan_ms(inputs, channel_last=layout)
            log(f"  {name:32s} fwd {fwd:.3f}  fwd+bwd {ms:.3f} ms")
            rows.append(("scan", name, tag, ms, floor, f"fwd {fwd:.3f}; floors bytes {byte_floor:.2f} exp {exp_floor:.2f}"))
        if not sweep:
            continue
        for point in SCAN_SWEEP:
            if time.time() - STARTED > SWEEP_BUDGET_S:
                log("    (sweep budget spent)")
                break
            saved = {name: getattr(triton_scan, name) for name in point}
            try:
                for name, value in point.items():
                    setattr(triton_scan, name, value)
                fwd, ms = scan_ms(channel_last, fwd_only=True, channel_last=True), scan_ms(channel_last, channel_last=True)
            finally:
                for name, value in saved.items():
                    setattr(triton_scan, name, value)
            label = ", ".join(f"{name.removeprefix('GLUON_').lower()} {value}" for name, value in point.items())
            log(f"    in place, {label}: fwd {fwd:.3f}  fwd+bwd {ms:.3f} ms")
            rows.append(("scan", f"in place, {label}", tag, ms, floor, f"fwd {fwd:.3f}"))


# ---------------------------------------------------------------- mixer timing

class LegacyMamba1Mixer(Mamba1Mixer):
    """The forward as it was before this change: (B, E, L) layout, F.conv1d, row-major padded scan."""

    def forward(self, x, positions=None, ctx=None):
        hidden, gate = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        width = self.conv1d.kernel_size[0]
        hidden = F.silu(F.conv1d(F.pad(hidden, (width - 1, 0)), self.conv1d.weight, self.conv1d.bias,
                                 groups=self.conv1d.groups))
        dt, B, C = self.x_proj(hidden.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = kernels.selective_scan(
            hidden, dt, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2), self.D.float(),
            z=gate, delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.backend)
        return self.out_proj(y.transpose(1, 2))


def time_mixer():
    d_model, batch, length = SIZES["mixer"]
    torch.manual_seed(0)
    tag = f"d{d_model} {batch}x{length}"
    log(f"\nMamba1Mixer fwd+bwd, d_model {d_model}, {batch}x{length}, bf16 autocast, torch.compile:")
    x = torch.randn(batch, length, d_model, device=DEVICE, requires_grad=True)
    new = Mamba1Mixer(d_model, backend="triton").to(DEVICE)
    old = LegacyMamba1Mixer(d_model, backend="triton").to(DEVICE)
    old.load_state_dict(new.state_dict())
    with torch.no_grad(), torch.autocast(DEVICE, dtype=BENCH_DTYPE):
        diff = (new(x) - old(x)).float().norm() / old(x).float().norm()
    log(f"  new vs old output (eager, bf16): rel diff {diff:.1e}")
    if not diff < 3e-2:
        failures.append("mixer new vs old")
    saved = kernels.GPU_CONV
    for name, module, conv in (("old (transposes, F.conv1d, padded scan)", old, saved),
                               ("new, triton conv", new, "triton"), ("new, shifted conv", new, "shifted")):
        kernels.GPU_CONV = conv
        torch._dynamo.reset()
        compiled = compile_fn(module)

        def step():
            with torch.autocast(DEVICE, dtype=BENCH_DTYPE):
                return compiled(x)

        started = time.time()
        ms = fwd_bwd_ms(step, [x, *module.parameters()])
        log(f"  {name:40s} {ms:.3f} ms  (compile + bench {time.time() - started:.0f} s)")
        rows.append(("Mamba1Mixer", name, tag, ms, float("nan"), ""))
    kernels.GPU_CONV = saved


def main():
    global DEVICE, DTYPES, BENCH_DTYPE, KERNEL_TIME, SWEEP_BUDGET_S, WALK_ONLY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="no tile sweeps, no pytest")
    parser.add_argument("--conv", action="store_true", help="only the conv: accuracy, timings and tile sweeps")
    parser.add_argument("--scan", action="store_true", help="only the scan's timings (and its channel-last sweep "
                        "unless --quick)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kernel-time", action="store_true",
                        help="time by the GPU kernels' own durations (torch.profiler), not wall time")
    parser.add_argument("--sweep-first", type=int, default=None,
                        help="only the first N points of SCAN_SWEEP (so a short call sweeps every shape)")
    parser.add_argument("--scan-shapes", default=None,
                        help="comma-separated indices into the scan's shapes (default: all four)")
    parser.add_argument("--sweep-budget-s", type=float, default=SWEEP_BUDGET_S,
                        help="tile sweeps stop adding configs once the script has run this long")
    parser.add_argument("--conv-walk", action="store_true",
                        help="only the conv's walking kernels: their default pair and every tile of "
                        "triton_conv.WALK_FWD_TILES and WALK_TILES, at both conv shapes; no accuracy section")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes on CPU under TRITON_INTERPRET=1, to check this script runs (no timings)")
    args = parser.parse_args()
    KERNEL_TIME, SWEEP_BUDGET_S, WALK_ONLY = args.kernel_time, args.sweep_budget_s, args.conv_walk
    args.conv = args.conv or args.conv_walk
    if args.sweep_first is not None:
        SCAN_SWEEP[:] = SCAN_SWEEP[:args.sweep_first]
    if args.scan_shapes:
        SIZES["scan"] = [SIZES["scan"][int(i)] for i in args.scan_shapes.split(",")]
    if args.cpu_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("gpu_mamba1.py: --cpu-smoke needs TRITON_INTERPRET=1")
        DEVICE, DTYPES, BENCH_DTYPE = "cpu", (torch.float32,), torch.float32
        SIZES.update(SMOKE_SIZES)
        args.quick = True
    elif not torch.cuda.is_available():
        sys.exit("gpu_mamba1.py: no CUDA device")
    if os.environ.get("OUT"):
        log.open(os.path.join(os.environ["OUT"], "mamba1.log"))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    started = STARTED
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)"
    log(f"device: {name}  torch {torch.__version__}  triton {triton.__version__}  seed {seed}")
    if not args.quick and not args.conv and not args.scan:
        tests = ["tests/test_triton_conv.py", "tests/test_kernels.py", "-k", "conv or selective_scan or mamba1"]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *tests],
                              capture_output=True, text=True, timeout=240)
        tail = proc.stdout.strip().splitlines()[-8:]
        log("\npytest -m gpu (conv, selective scan, mamba1):\n  " + "\n  ".join(tail))
        if proc.returncode != 0:
            failures.append("pytest -m gpu")
    sections = [] if args.scan or WALK_ONLY else [("accuracy", lambda: accuracy(seed, conv_only=args.conv))]
    bandwidth = copy_bandwidth() if DEVICE == "cuda" else 1e3  # --cpu-smoke: a stand-in
    log(f"\nDevice-to-device copy bandwidth (1 GiB, read + write): {bandwidth:.0f} GB/s")
    if args.scan:
        sections += [("scan", lambda: time_scan(bandwidth, not args.quick))]
    else:
        sections += [
            ("conv", lambda: time_conv(bandwidth, not args.quick, *SIZES["conv"][0])),
            ("conv mamba2", lambda: time_conv(bandwidth, args.conv and not args.quick, *SIZES["conv"][1])),
        ]
    if not args.conv and not args.scan:
        sections += [("scan", lambda: time_scan(bandwidth, not args.quick)), ("mixer", time_mixer)]
    for name, run in sections:
        try:
            run()
        except Exception as exc:  # one failing section must not hide the others' numbers
            import traceback
            log(f"\n{name}: FAILED with {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            failures.append(f"{name} raised")
        torch.cuda.empty_cache()

    log(f"\nSummary ({time.time() - started:.0f} s; floor = max(bytes at copy bandwidth, exponentials at MUFU "
        f"throughput) for the scan, bytes for the conv):")
    header = f"{'section':20s} {'variant':40s} {'shape':22s} {'ms':>8s} {'floor':>7s} {'x floor':>7s}  note"
    log(header)
    log("-" * len(header))
    for section, variant, shape, ms, floor, note in rows:
        ratio = ms / floor if floor == floor else float("nan")
        log(f"{section:20s} {variant:40s} {shape:22s} {ms:8.3f} {floor:7.3f} {ratio:7.2f}  {note}")
    log("FAILED: " + "; ".join(failures) if failures else "ALL CHECKS PASSED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
