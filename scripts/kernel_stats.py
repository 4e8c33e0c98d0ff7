#!/usr/bin/env python
"""What the Mamba-1 scan kernels compile to on sm_90, without a GPU: registers, spills, lane shuffles.

  PYTHONPATH=src python scripts/kernel_stats.py [--tiles 8,64,1,8 8,64,2,8 ...]
  PYTHONPATH=src python scripts/kernel_stats.py --conv    # the conv's two backward kernels instead
  PYTHONPATH=src python scripts/kernel_stats.py --ssd     # the Mamba-2 SSD's kernels instead
  PYTHONPATH=src python scripts/kernel_stats.py --gluon   # the Gluon scan kernels (the GPU default), both layouts

Triton compiles for a target it is given (``GPUTarget("cuda", 90, 32)``) and ships ptxas and cuobjdump,
so a CPU-only machine can see what the H100/H200 would run. The kernels are specialised as at run
time on the row-major path: unit step strides, pointers and the other strides divisible by 16 (so the
loads vectorise and the layout matches the GPU's). Printed per kernel: registers and spill bytes per
thread (ptxas -v), and the lane shuffles (SHFL) and instructions in the SASS of the main loop (the
innermost loop with an exponential: over states in _scan_fwd/_scan_bwd_kernel, over channels in
_scan_bwd_channels_kernel), and that loop's instructions per (channel, state, step) element, which
compares the two loop orders. Then Triton's scan primitives alone on an
(8, 64) tile, to show what each costs: a forward ``associative_scan``, a ``reverse=True`` one, flips.
``--conv``: the same for the causal conv's backward kernels (width 4, bias, SiLU; the main loop is the
one over row tiles), per (row, channel) element. ``--ssd``: the Mamba-2 SSD's chunk kernels as the
Mamba-2 1B layer runs them in bf16 (chunk 64, head dim 64, N 128), every autotuner tile: registers, spills,
instructions (ptxas reports spills where a tile's live values pass 255 registers a thread).
``--gluon``: gluon_scan's forward and backward, walking the sequence, at the model's tile (chunk 64, N 16),
row-major and channel-last at each channels-a-thread (CL_VECTOR): registers, spills, shared memory and
the SASS counts of memory, barrier and special-function instructions (the whole kernel: its step loops
are unrolled).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import flowhn.kernels.gluon_scan as gluon_scan
import flowhn.kernels.triton_conv as triton_conv
import flowhn.kernels.triton_scan as triton_scan
import flowhn.kernels.triton_ssd_kernels as triton_ssd_kernels
from flowhn.kernels.testing import GLUON_SCAN_STRIDES, compile_gluon_scan_for_sm90

TARGET = GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
HALF_POINTERS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr", "out_ptr",
                 "x_ptr", "dy_ptr", "dx_ptr"}
UNIT_STRIDES = {"su_t", "sdl_t", "sB_t", "sC_t", "sz_t", "sdo_t", "sg_t", "so_t"}


def compile_for_sm90(fn, constexprs: dict, num_warps: int, sizes=("DIM", "N", "n_chunks"), half=HALF_POINTERS,
                     unit_strides=UNIT_STRIDES, num_stages=3):
    """The CompiledKernel of ``fn`` with run-time-like specialisation; ``sizes``: the integer arguments
    besides strides that are multiples of 16 at the shapes of interest; ``half``: the bf16 pointers."""
    constexprs = dict(constexprs)
    signature, divisible = {}, []
    for i, name in enumerate(fn.arg_names):
        if name in unit_strides:
            constexprs[name] = 1
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = ("*bf16" if name in half else "*fp32") if name.endswith("_ptr") else "i32"
        if name.endswith("_ptr") or name.startswith("s") or name in sizes:
            divisible.append(i)
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))


def machine_code_stats(kernel) -> dict:
    """Registers and spills (ptxas -v), and SASS counts: whole kernel and its innermost loop."""
    with tempfile.TemporaryDirectory() as folder:
        ptx, cubin = os.path.join(folder, "k.ptx"), os.path.join(folder, "k.cubin")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        report = subprocess.run([os.path.join(BIN, "ptxas"), "-v", "--gpu-name", "sm_90a", ptx, "-o", cubin],
                                capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    instructions = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]+\*/", line)]
    # The state loop: the shortest span from a branch target back to a branch that jumps to it, among
    # those with an exponential in them.
    address = {int(re.match(r"\s+/\*([0-9a-f]+)\*/", line).group(1), 16): i for i, line in enumerate(instructions)}
    loops = []
    for i, line in enumerate(instructions):
        target = re.search(r"BRA\s+0x([0-9a-f]+)", line)
        start = address.get(int(target.group(1), 16)) if target else None
        if start is not None and start < i and any("MUFU.EX2" in x for x in instructions[start:i]):
            loops.append(instructions[start:i + 1])
    inner = min(loops, key=len) if loops else []
    count = lambda lines, op: sum(f" {op}" in line for line in lines)  # noqa: E731
    return {"registers": registers, "spill_bytes": int(spills.group(1)) if spills else 0,
            "instructions": len(instructions), "SHFL": count(instructions, "SHFL"),
            "loop_instructions": len(inner), "loop_SHFL": count(inner, "SHFL"), "loop_MUFU": count(inner, "MUFU"),
            **{op: count(instructions, op) for op in ("LDG", "STG", "LDS", "STS", "LDL", "STL", "BAR", "MUFU")}}


@triton.jit
def _primitive(a_ptr, x_ptr, out_ptr, stride, OP: tl.constexpr, ROWS: tl.constexpr, STEPS: tl.constexpr):
    offs = tl.arange(0, ROWS)[:, None] * stride + tl.arange(0, STEPS)[None, :]
    a = tl.load(a_ptr + offs).to(tl.float32)
    x = tl.load(x_ptr + offs).to(tl.float32)
    if OP == 0:
        _, h = tl.associative_scan((a, x), 1, triton_scan._compose)
    elif OP == 1:
        _, h = tl.associative_scan((a, x), 1, triton_scan._compose, reverse=True)
    elif OP == 2:
        h = tl.flip(a, 1)
    else:
        _, h = tl.associative_scan((tl.flip(a, 1), tl.flip(x, 1)), 1, triton_scan._compose)
        h = tl.flip(h, 1)
    tl.store(out_ptr + offs, h)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", nargs="*", default=["8,64,1,8", "8,64,2,8", "8,32,2,1"],
                        help="_scan_bwd_kernel tiles: block_d,chunk,warps,sub_blocks (the first is the default)")
    parser.add_argument("--channel-warps", nargs="*", type=int, default=[1, 2, 4],
                        help="warps for _scan_bwd_channels_kernel (64 channels a program, chunk 64)")
    parser.add_argument("--conv", action="store_true", help="the conv's backward kernels instead of the scan's")
    parser.add_argument("--ssd", action="store_true", help="the Mamba-2 SSD's kernels instead of the scan's")
    parser.add_argument("--gluon", action="store_true", help="the Gluon scan kernels instead, both layouts")
    args = parser.parse_args()
    if args.conv:
        return conv_stats()
    if args.ssd:
        return ssd_stats()
    if args.gluon:
        return gluon_stats()
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    print("| kernel | tile | registers | spill bytes | SHFL | main loop: instructions | SHFL | MUFU "
          "| instructions per (channel, state, step) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    # (name, kernel, constexprs, warps, elements one pass of the main loop covers)
    rows = [("_scan_fwd_kernel", triton_scan._scan_fwd_kernel, dict(BLOCK_D=8, CHUNK=64), 1, 8 * 64)]
    for tile in args.tiles:
        block_d, chunk, warps, sub = (int(v) for v in tile.split(","))
        rows.append(("_scan_bwd_kernel", triton_scan._scan_bwd_kernel,
                     dict(BLOCK_D=block_d, CHUNK=chunk, BLOCK_N=16, SUB_BLOCKS=sub), warps, block_d * chunk))
    for warps in args.channel_warps:
        rows.append(("_scan_bwd_channels_kernel", triton_scan._scan_bwd_channels_kernel,
                     dict(CHANNELS=64, CHUNK=64, BLOCK_N=16), warps, 16 * 64))
    for name, fn, tile, warps, elements in rows:
        s = machine_code_stats(compile_for_sm90(fn, dict(flags, **tile), warps))
        per_element = s["loop_instructions"] * 32 * warps / elements
        shown = ", ".join(f"{k}={v}" for k, v in tile.items() if k != "BLOCK_N")
        print(f"| `{name}` | {shown}, {warps} warp(s) | {s['registers']} | {s['spill_bytes']} | {s['SHFL']} "
              f"| {s['loop_instructions']} | {s['loop_SHFL']} | {s['loop_MUFU']} | {per_element:.1f} |")
    print("\n| primitive on an (8, 64) fp32 tile, 1 warp | SASS instructions | SHFL |\n|---|---:|---:|")
    for op, name in enumerate(["associative_scan (forward)", "associative_scan(reverse=True)", "tl.flip",
                               "flip, forward scan, flip"]):
        source = ASTSource(fn=_primitive, signature={"a_ptr": "*bf16", "x_ptr": "*bf16", "out_ptr": "*fp32",
                                                     "stride": "i32", "OP": "constexpr", "ROWS": "constexpr",
                                                     "STEPS": "constexpr"},
                           constexprs={"OP": op, "ROWS": 8, "STEPS": 64},
                           attrs={(i,): [["tt.divisibility", 16]] for i in range(4)})
        s = machine_code_stats(triton.compile(source, target=TARGET, options=dict(num_warps=1)))
        print(f"| {name} | {s['instructions']} | {s['SHFL']} |")


def conv_stats():
    print("| kernel | tile (rows × channels, warps, row tiles a program) | registers | spill bytes "
          "| main loop: instructions | MUFU | instructions per (row, channel) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    flags = dict(K=4, K_POW2=4, HAS_BIAS=True, SILU=True)
    rows = [(triton_conv._conv_bwd_kernel, tile) for tile in ((32, 128, 4, 8), (16, 128, 4, 8))]
    rows += [(triton_conv._conv_bwd_staged_kernel, tile) for tile in
             ((16, 128, 4, 16), (8, 128, 4, 16), (16, 64, 2, 16), (16, 128, 8, 16), (32, 64, 4, 16), (8, 256, 4, 16))]
    for fn, (block_l, block_c, warps, seg_tiles) in rows:
        tile = dict(BLOCK_L=block_l, BLOCK_C=block_c, SEG_TILES=seg_tiles)
        # L and C multiples of 16, as at the model shapes (1024 rows; 1536, 4096, 4352 channels)
        s = machine_code_stats(compile_for_sm90(fn, dict(flags, **tile), warps, sizes=("L", "C")))
        per_element = s["loop_instructions"] * 32 * warps / (block_l * block_c)
        print(f"| `{fn.__name__}` | {block_l} × {block_c}, {warps} warps, {seg_tiles} | {s['registers']} "
              f"| {s['spill_bytes']} | {s['loop_instructions']} | {s['loop_MUFU']} | {per_element:.1f} |")


def ssd_stats():
    """The SSD's chunk kernels at the Mamba-2 1B layer in bf16: x, B, C, dy, dx and the passed states in bf16;
    dt, A, D and the per-chunk sums in fp32; head dim, N, H multiples of 16; unit strides along P, N and H."""
    K = triton_ssd_kernels
    half = {"x_ptr", "B_ptr", "C_ptr", "dy_ptr", "dx_ptr", "y_ptr", "state_ptr", "adjoint_ptr"}
    unit = {"s_x_p", "s_dy_p", "s_B_n", "s_C_n", "s_dt_h"}
    flags = dict(T=64, BLOCK_P=64, LOWP=True, PRECISION=K.FP32_DOT_PRECISION, ACC=tl.float32)
    kernels = [(K._chunk_scan_bwd_dx_kernel, dict(HAS_D=True), K.TILES, 2),
               (K._chunk_scan_bwd_dbc_kernel, dict(HEADS_PER_PROGRAM=8), K.DBC_TILES, K.DBC_STAGES),
               (K._chunk_scan_fwd_kernel, dict(HAS_D=True), K.TILES, 2)]
    print("| kernel | N block, warps, stages | registers | spill bytes | instructions |")
    print("|---|---|---:|---:|---:|")
    for kernel, extra, tiles, stages in kernels:
        fn = kernel.fn if hasattr(kernel, "fn") else kernel
        for block_nk, warps in tiles:
            s = machine_code_stats(compile_for_sm90(fn, dict(flags, BLOCK_NK=block_nk, **extra), warps,
                                                    sizes=("H", "P", "N"), half=half, unit_strides=unit,
                                                    num_stages=stages))
            print(f"| `{fn.__name__}` | {block_nk}, {warps}, {stages} | {s['registers']} | {s['spill_bytes']} "
                  f"| {s['instructions']} |")


def gluon_stats():
    """gluon_scan's kernels as the bf16 model runs them, walking the sequence: row-major (unit step strides)
    and channel-last (unit channel strides; the step strides of a Mamba 135M layer, compile-time constants)."""
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, CHUNK=64, BLOCK_N=16, SEQUENCE=True,
                 LPC=triton_scan.GLUON_LANES_PER_CHANNEL)
    kernels = [(gluon_scan._scan_fwd_seq_kernel, dict(UNROLL=8), triton_scan.GLUON_FWD_WARPS,
                dict(maxnreg=triton_scan.GLUON_SEQUENCE_FWD_MAXNREG) if triton_scan.GLUON_SEQUENCE_FWD_MAXNREG else {}),
               (gluon_scan._scan_bwd_seq_kernel, dict(SUB=triton_scan.GLUON_SUB, PARTIALS=False),
                triton_scan.GLUON_BWD_WARPS, {})]
    ops = ("LDG", "STG", "LDS", "STS", "LDL", "STL", "BAR", "MUFU")
    print("| kernel | layout, channels a thread | registers | spill bytes | shared KiB | instructions | "
          + " | ".join(ops) + " |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(ops))
    for fn, extra, warps, options in kernels:
        cases = [(False, 1, False)] + [(True, v, False) for v in (0, 1, 2, 4, 8)] + [(True, 0, True)]
        for channel_last, vector, keep in cases:
            constexprs = dict(flags, **extra, CHANNEL_LAST=channel_last, CL_VECTOR=vector, KEEP=keep,
                              A_IS_LOG=True, **GLUON_SCAN_STRIDES[channel_last])  # A_log: as Mamba1Mixer runs it
            kernel = compile_gluon_scan_for_sm90(fn, constexprs, warps, **options)
            s = machine_code_stats(kernel)
            layout = (f"channel-last, {vector}" if channel_last else "row-major") + (", states kept" if keep else "")
            print(f"| `{fn.__name__}` | {layout} | {s['registers']} | {s['spill_bytes']} | "
                  f"{kernel.metadata.shared / 1024:.0f} | {s['instructions']} | " + " | ".join(str(s[op]) for op in ops) + " |")


if __name__ == "__main__":
    main()
