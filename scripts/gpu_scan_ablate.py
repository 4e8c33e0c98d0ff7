#!/usr/bin/env python
"""Where the Gluon scan backward's time goes, without hardware counters: time variants of the kernel
that leave one stage out, and take differences (H200.md in the device library, "Measuring there").

  PYTHONPATH=src python scripts/gpu_scan_ablate.py [--lanes 2 4] [--shape 16,4096,1024,16]

Each variant is ``gluon_scan.py`` with one text substitution, loaded as its own module and swapped in
for the real one while it is timed (bf16, triton's do_bench median, forward and forward + backward; the
backward is their difference). The variants compute WRONG gradients on purpose: they exist only to be
timed, never to be used (nothing outside this script sees them). A substitution that no longer matches
the kernel's text is an error, so the script cannot silently time the unmodified kernel.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_scan_tiles import configure, module_from_source, timings, use_gluon  # noqa: E402

from flowhn.kernels import gluon_scan  # noqa: E402

DB_DC_ATOMICS = '''            if PARTIALS:
                gl.store(dB_ptr + sums_at, sums, mask=sums_m)
            else:
                gl.atomic_add(dB_ptr + sums_at, sums, mask=sums_m & sum_is_B[:, None], sem="relaxed")
                gl.atomic_add(dC_ptr + sums_at, sums, mask=sums_m & (~sum_is_B)[:, None], sem="relaxed")
'''
DB_DC_STEP = '''                both = gl.convert_layout(_lane_major(g * stepu, h * dy[:, None], BLOCK_D, BLOCK_N, LPC, products),
                                         warp_sums)
                per_warp = gl.sum(both.reshape([WARPS, BLOCK_D // WARPS, 2 * BLOCK_N]), axis=1)
                sums_rows.index(r).store(per_warp.reshape([WARPS * 2 * BLOCK_N]))
'''
DB_DC_SUB_CHUNK = '''            # (sums_smem is next written after the next sub-chunk's staging barrier)
            t = c * CHUNK + k * SUB + staged_s[None, :]
            sums = gl.sum(sums_3d.permute([2, 0, 1]).load(staged_warps), axis=2)
            sums_at = sum_at[:, None] + t * sum_step
            sums_m = sum_mask[:, None] & (t < L)
''' + DB_DC_ATOMICS
STATE_STEP = "h = gl.exp2(A2 * step[:, None]) * h + stepu[:, None] * B_rows.index(j).load(per_state)[None, :]"
WALK_DECAY = "a = gl.exp2(A2 * step[:, None])\n                g = a_next"

# (name, [(text, replacement, occurrences to replace: 0 = all)]). Differences against "kernel as is":
VARIANTS = [
    ("kernel as is", []),
    ("dB/dC: sums kept, no atomics (summed in registers)", [
        (DB_DC_ATOMICS, "            keep += gl.sum(gl.where(sums_m, sums, 0.0), axis=1)\n", 1),
        ("    dbias_acc = gl.zeros(",
         "    keep = gl.zeros([2 * BLOCK_N], gl.float32, layout=gl.SliceLayout(1, staged))\n    dbias_acc = gl.zeros(", 1),
        ("    if HAS_BIAS:\n        gl.store(dbias_ptr", "    gl.store(dB_ptr + sum_at, keep, mask=sum_mask)\n"
         "    if HAS_BIAS:\n        gl.store(dbias_ptr", 1)]),
    ("dB/dC: none (no products, barrier, sums, atomics)", [(DB_DC_STEP, "", 1), (DB_DC_SUB_CHUNK, "", 1)]),
    ("checkpoint pass: no state update (loads and stores kept)", [(STATE_STEP, "h = h + stepu[:, None]", 1)]),
    ("walk: decay a without its exponential", [(WALK_DECAY, "a = A2 * step[:, None] + 1.0\n                g = a_next", 1)]),
    ("recompute: no state update (y kept)", [(STATE_STEP, "h = h * step[:, None] + stepu[:, None]", 2)]),
]


def variant_module(replacements, index):
    source = open(gluon_scan.__file__).read()
    for text, replacement, occurrence in replacements:
        found = source.count(text)
        if found < max(occurrence, 1):
            raise SystemExit(f"variant {index}: substitution no longer matches gluon_scan.py: {text[:80]!r}")
        if occurrence <= 1:
            source = source.replace(text, replacement, 1)
        else:  # replace only the occurrence-th one
            head, *rest = source.split(text)
            source = head + text.join(rest[:occurrence - 1]) + replacement + text.join(rest[occurrence - 1:])
    return module_from_source(source, f"gluon_scan_ablated_{index}")


def backward_build(module):
    """'registers/spilled bytes/shared KB' of the module's last-built backward kernel (read after a launch)."""
    builds = [k for caches in module._scan_bwd_seq_kernel.device_caches.values() for k in caches[0].values()]
    if not builds:
        return "?"
    k = builds[-1]
    return f"{k.n_regs}/{k.n_spills}/{k.metadata.shared / 1024:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--shape", default="16,4096,1024,16", help="B,D,L,N")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    modules = [variant_module(replacements, i) for i, (_, replacements) in enumerate(VARIANTS)]
    rows = []
    for lanes in args.lanes:
        fn = configure("gluon", 4, 2, 8, "sequence", lanes)
        for (name, _), module in zip(VARIANTS, modules):
            use_gluon(module)
            fwd, both = timings(fn, shape)
            build = backward_build(module)
            module._scan_bwd_seq_kernel.device_caches.clear()  # the next lanes' build is read fresh
            rows.append((lanes, name, fwd, both - fwd, build))
            print(f"lanes {lanes}  {name:58s} fwd {fwd:.3f}  bwd {both - fwd:.3f} ms  {build}", flush=True)
    use_gluon(gluon_scan)
    print(f"\n{torch.cuda.get_device_name()}, bf16 {shape}, walking the sequence, fwd 4 warps, bwd 2 warps, "
          "sub-chunk 8; ms (median); bwd = fwd+bwd - fwd; Δ = the variant's bwd - the kernel's; the backward "
          "kernel's registers a thread / spilled bytes / shared KB a program")
    print("| lanes a channel | variant | fwd | bwd | Δ bwd | bwd build |\n|---:|---|---:|---:|---:|---|")
    base = {lanes: bwd for lanes, name, _, bwd, _ in rows if name == VARIANTS[0][0]}
    for lanes, name, fwd, bwd, build in rows:
        print(f"| {lanes} | {name} | {fwd:.3f} | {bwd:.3f} | {bwd - base[lanes]:+.3f} | {build} |")


if __name__ == "__main__":
    main()
