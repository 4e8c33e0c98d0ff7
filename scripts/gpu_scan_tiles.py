#!/usr/bin/env python
"""The Mamba-1 scan's backward tiles, and a rewrite against the kept kernel: float64 checks and timings.

  PYTHONPATH=src python scripts/gpu_scan_tiles.py [--before old/triton_scan.py] [--budget-s 300]

Each candidate is a backward kernel and its tile: ``_scan_bwd_kernel`` (loop over states; chunk,
channels a block, warps, blocks a program) or ``_scan_bwd_channels_kernel`` (loop over channels;
chunk, channels a program, warps). The chunk is shared with the forward (the saved states are per
chunk), whose tile stays 8 channels and 1 warp. To time a rewrite of the backward against the kept
kernel, save the kept module first, apply the rewrite, and pass the saved file as --before, e.g. with
the patches in experiments/bench/H200_scan_backward/ (what they showed, and what bounds the
backward: H200.md, "The scan's backward"):

  git show HEAD:src/flowhn/kernels/triton_scan.py > /tmp/kept_scan.py   # or, for the Gluon kernels:
  #   git show HEAD:src/flowhn/kernels/gluon_scan.py > /tmp/kept_gluon.py; ... --before-gluon /tmp/kept_gluon.py
  git apply experiments/bench/H200_scan_backward/adjoint_in_reversed_time.patch
  PYTHONPATH=src python scripts/gpu_scan_tiles.py --before /tmp/kept_scan.py

1. Accuracy: output and every gradient against the float64 sequential reference (computed once per
   dtype), fp32 and bf16, at 2 × 1500 × 1000 × 16: neither the channels nor the length a multiple of
   any tile.
2. Timing (bf16, median of triton's do_bench): forward, and forward + backward, at 16×4096×1024×16
   (the issue's shape) and 16×4096×369×16 (FlowHN FAC's SSM share); backward = the difference.
   ``--before`` times the kernel file of an earlier commit in the same process (its ops renamed).
Prints a table last, the fastest passing candidate marked; the log goes to $OUT/scan_tiles.log.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import tempfile
import time

import torch
from triton.testing import do_bench

import flowhn.kernels.triton_scan as triton_scan
from flowhn.kernels import gluon_scan as current_gluon
from flowhn.kernels.testing import ScriptLog, errors_against, reference_fn, reference_result, scan_inputs

# ("channels", chunk, channels a program, warps): _scan_bwd_channels_kernel, the first the kept
# default; ("states", chunk, channels a block, warps, blocks a program): _scan_bwd_kernel, the first
# the default before it. On the H200, 2 and 4 warps ran the channels loop 2-5x slower than 1.
# ("gluon", forward warps, backward warps, backward sub-chunk, walk[, lanes]): gluon_scan's main kernels
# (forward and backward both), a program a chunk ("chunks") or all of its channels' chunks ("sequence":
# no summary and chunk-pass kernels; triton_scan.GLUON_WALK); lanes a channel (default 2: 16 channels a
# warp, 8 states a thread; 4: 8 channels a warp, 4 states a thread, so the backward needs 137-168
# registers instead of 254 and an SM holds 12-14 of its warps instead of 8, H200.md seventh session;
# timed in the eighth: slower at L=1024, 4.29 against 3.85 ms)[, dB/dC: "atomics" or "partials",
# triton_scan.GLUON_DB_DC]. The backward with 1 warp: since e699547 its dB/dC sums need no exchange
# between warps and the barrier a step (the compiler's, for the re-layout's scratch) waits on one warp
# only; not yet timed (with the shared product tile, 2 warps were the fastest of 1, 2, 4).
CANDIDATES = [
    ("gluon", 4, 2, 8, "sequence"), ("gluon", 4, 2, 8, "sequence", 2, "partials"), ("gluon", 4, 1, 8, "sequence"),
]
ACCURACY_SHAPE = (2, 1500, 1000, 16)
TIMING_SHAPES = [(16, 4096, 1024, 16), (16, 4096, 369, 16)]
DEVICE = "cuda"
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
log = ScriptLog()


def module_from_source(source: str, name: str):
    """``source`` imported as a module of its own, from a file: triton.jit and gluon.jit read each
    kernel's source from its file."""
    file = os.path.join(tempfile.mkdtemp(), f"{name}.py")
    with open(file, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_before(path: str):
    """The kernel module of an earlier commit, its custom ops renamed so both register in one process."""
    source = open(path).read().replace('"flowhn::selective_scan', '"flowhn_before::selective_scan')
    return module_from_source(source, "triton_scan_before")


def load_gluon_before(path: str):
    """``gluon_scan.py`` of an earlier commit as a module of its own, to be swapped in for the current
    one while it is timed (``use_gluon``)."""
    return module_from_source(open(path).read(), "gluon_scan_before")


def use_gluon(module):
    """triton_scan imports gluon_scan where it launches it: the package attribute is what it finds."""
    import flowhn.kernels as kernels_package

    sys.modules["flowhn.kernels.gluon_scan"] = module
    kernels_package.gluon_scan = module


def configure(loop, chunk, channels, warps, sub_blocks=None, lanes=2, db_dc="atomics"):
    triton_scan.MAIN_KERNELS = "gluon" if loop == "gluon" else "triton"
    if loop == "gluon":
        triton_scan.GLUON_FWD_WARPS, triton_scan.GLUON_BWD_WARPS, triton_scan.GLUON_SUB = chunk, channels, warps
        triton_scan.GLUON_WALK, triton_scan.GLUON_LANES_PER_CHANNEL = sub_blocks or "chunks", lanes
        triton_scan.GLUON_DB_DC = db_dc
        return triton_scan.selective_scan_triton
    triton_scan.BWD_LOOP = loop
    if loop == "states":
        triton_scan.BWD_BLOCK_D, triton_scan.BWD_NUM_WARPS, triton_scan.BWD_SUB_BLOCKS = channels, warps, sub_blocks
    else:
        triton_scan.BWD_CHANNELS, triton_scan.BWD_CHANNEL_WARPS = channels, warps
    return functools.partial(triton_scan.selective_scan_triton, chunk=chunk)


def candidate_name(loop, chunk, channels, warps, sub_blocks=None, lanes=2, db_dc="atomics"):
    if loop == "gluon":
        return (f"gluon {sub_blocks or 'chunks'}, fwd {chunk} warps, bwd {channels} warps, sub-chunk {warps}"
                + (f", {lanes} lanes a channel" if lanes != 2 else "")
                + (f", dB/dC {db_dc}" if db_dc != "atomics" else ""))
    if loop == "states":
        return f"states, chunk {chunk}, {channels} ch x {warps} warps x {sub_blocks} blocks"
    return f"channels, chunk {chunk}, {channels} ch a program, {warps} warps"


def scan_calls(fn, shape, dtype, device):
    """(forward, forward + backward, the differentiable inputs) of ``fn`` on seeded inputs of ``shape``."""
    inputs = scan_inputs(*shape, dtype=dtype, device=device, seed=0)
    leaves = {k: v.requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    flags = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
    dy = torch.randn_like(fn(**leaves, **flags))

    def forward():
        with torch.no_grad():
            fn(**leaves, **flags)

    def both():
        fn(**leaves, **flags).backward(dy)

    return forward, both, leaves


def timings(fn, shape):
    forward, both, leaves = scan_calls(fn, shape, torch.bfloat16 if DEVICE == "cuda" else torch.float32, DEVICE)
    if DEVICE != "cuda":  # --cpu-smoke: one call each, the numbers mean nothing
        return tuple(1e3 * _wall(call) for call in (forward, both))
    return (do_bench(forward, return_mode="median"),
            do_bench(both, grad_to_none=list(leaves.values()), return_mode="median"))


def _wall(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def check_and_time(name, fn, references):
    """(passes every float64 check, [(fwd ms, fwd+bwd ms) per timing shape])."""
    worst = 0.0
    for dtype, (inputs, ref) in references.items():
        errors = errors_against(fn, inputs, ref)
        bad = max(errors.values(), key=lambda v: float("inf") if v != v else v)
        ok = bad <= TOL[dtype]
        worst = max(worst, bad / TOL[dtype]) if bad == bad else float("inf")
        log(f"  {name:52s} {str(dtype)[6:]:8s} {'PASS' if ok else 'FAIL'} worst {bad:.1e}  "
            + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    times = [timings(fn, shape) for shape in TIMING_SHAPES]
    log(f"  {name:52s} " + "  ".join(f"L={s[2]}: fwd {f:.3f} fwd+bwd {b:.3f} ms" for s, (f, b) in zip(TIMING_SHAPES, times)))
    return worst <= 1.0, times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", help="triton_scan.py of an earlier commit, timed at its default tiles")
    parser.add_argument("--before-gluon", nargs="+", default=[],
                        help="gluon_scan.py files of earlier commits: the default candidate is timed (and checked) "
                        "with each too, in this process, named by its file")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop adding candidates after this long")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny shapes on Triton's CPU interpreter (TRITON_INTERPRET=1): checks this script runs")
    args = parser.parse_args()
    global ACCURACY_SHAPE, TIMING_SHAPES, DEVICE
    if args.cpu_smoke:
        ACCURACY_SHAPE, TIMING_SHAPES, DEVICE = (1, 9, 21, 3), [(1, 9, 21, 3)], "cpu"
    started = time.time()
    if os.environ.get("OUT"):
        log.open(os.path.join(os.environ["OUT"], "scan_tiles.log"))
    log(f"== {torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU interpreter'}, torch {torch.__version__}")
    references = {}
    for dtype in (torch.float32, torch.bfloat16):
        inputs = scan_inputs(*ACCURACY_SHAPE, dtype=dtype, device=DEVICE, seed=3)
        references[dtype] = (inputs, reference_result(reference_fn("selective_scan"), inputs))
    variants = []
    if args.before:
        before = load_before(args.before)
        variants.append(("before (8, 64, 1 warp, 8 blocks)", before.selective_scan_triton))
    for path in args.before_gluon:
        variants.append((f"{candidate_name(*CANDIDATES[0])}, {os.path.basename(path)}",
                         ("before-gluon", load_gluon_before(path))))
    variants += [(candidate_name(*candidate), candidate) for candidate in CANDIDATES]
    rows = []
    for name, variant in variants:
        if time.time() - started > args.budget_s:
            log(f"  budget reached: {name} and later candidates not run")
            break
        if isinstance(variant, tuple) and variant[0] == "before-gluon":
            fn = configure(*CANDIDATES[0])
            use_gluon(variant[1])
        else:
            fn = configure(*variant) if isinstance(variant, tuple) else variant
        try:
            rows.append((name, *check_and_time(name, fn, references)))
        except Exception as exc:  # a candidate that does not compile or launch must not hide the others
            log(f"  {name:52s} ERROR {type(exc).__name__}: {str(exc)[:2000]}")
        finally:
            use_gluon(current_gluon)
    passing = [r for r in rows if r[1]]
    best = min(passing, key=lambda r: r[2][0][1]) if passing else None
    log(f"\nSummary ({time.time() - started:.0f} s), bf16, ms (median); backward = fwd+bwd - fwd:")
    log(f"| variant | accuracy | {' | '.join(f'L={s[2]} fwd | bwd | fwd+bwd' for s in TIMING_SHAPES)} |")
    log("|---|---|" + "---:|" * (3 * len(TIMING_SHAPES)))
    for name, ok, times in rows:
        cells = " | ".join(f"{f:.3f} | {b - f:.3f} | {b:.3f}" for f, b in times)
        log(f"| {name}{' **(fastest)**' if best and name == best[0] else ''} | {'pass' if ok else 'FAIL'} | {cells} |")
    return 0 if passing else 1


if __name__ == "__main__":
    sys.exit(main())
