#!/usr/bin/env python
"""Mamba-2 SSD on one GPU: our Triton kernels against the float64 reference, then timed against the
earlier path (the PyTorch chunked SSD under torch.compile).

  PYTHONPATH=src python scripts/gpu_ssd.py             # writes $OUT/ssd.log (+ ssd_cases.log) when $OUT is set
  PYTHONPATH=src python scripts/gpu_ssd.py --no-old    # skip the compiled chunked path (its compiles take minutes)
  PYTHONPATH=src python scripts/gpu_ssd.py --dtypes bfloat16   # only bf16's checks and timings
  PYTHONPATH=src python scripts/gpu_ssd.py --diagnose  # only: each tile of the dB/dC kernel, pipelined or not, bf16
  PYTHONPATH=src python scripts/gpu_ssd.py --sanitize  # also: the quick check under compute-sanitizer memcheck
  PYTHONPATH=src compute-sanitizer --tool memcheck python3 scripts/gpu_ssd.py --quick-check   # by hand
  PYTHONPATH=src python scripts/gpu_ssd.py --state-pass   # only: the pass over chunks, loop vs prefetch
  PYTHONPATH=src python scripts/gpu_ssd.py --chunks 64,128,256   # only: the chunk size, checked and timed
  PYTHONPATH=src ncu --profile-from-start off -k regex:_chunk python scripts/gpu_ssd.py --profile-range   # by hand

1. Accuracy: relative L2 error ‖out − ref‖/‖ref‖ of the output and of every gradient (x, dt, A, B, C, D)
   against ``reference.ssd_sequential`` in float64 fed the same (possibly bf16-rounded) inputs, at three
   shapes (one with L not a multiple of the chunk, one with head and state sizes that are not powers of
   two), fp32 first, then bf16, with and without recompute. Each shape and dtype runs in its own process:
   a CUDA illegal memory access poisons the process that hits it, so a faulting case is reported as CRASH
   (its stderr tail in ssd_cases.log) and the others still run. The allocator cache is filled with NaN
   first, so an output element a kernel forgets to write shows up.
2. Timing (in its own process, only for the dtypes none of whose accuracy cases crashed): median
   forward+backward (triton.testing.do_bench) of
     old  = ``ssd_gpu(impl="compiled_chunked")`` with recompute on and off,
     new  = ``ssd_gpu(impl="triton")`` with recompute on and off,
   at 8×1024×24×64, N=128 (issue 13's target shape) and at the Mamba-2 1B layer (d_model 2048, expand 2:
   64 heads of 64, N=128, one group) at 16×1024, fp32 and bf16; plus the forward alone, and the peak
   memory of forward+backward beyond what stays allocated (inputs, output, gradients).
3. The new path's kernels, one profiled forward+backward at the target shape in bf16, and the tiles the
   autotuner chose.
A table is printed last. Exits 1 if an accuracy check fails or crashes.

--quick-check: accuracy only, in this one process, at two small shapes (fp32, then bf16; the autotuner
still runs every tile of every kernel), so that ``compute-sanitizer --tool memcheck`` can name the kernel
and address of any bad access (memcheck slows kernels ~100×; these shapes keep that to minutes).
--sanitize: runs exactly that as a child process (compute-sanitizer from PATH or /usr/local/cuda/bin),
log in $OUT/sanitizer.log, its ERROR SUMMARY in the table.
--state-pass: only the pass over chunks (``triton_ssd.state_pass``), its two kernels ("loop": one chunk a
step; "prefetch": 16 chunks' loads at once) at the Mamba-2 135M and 1B layers (16×1024, chunk 64: 16
chunks; 24 and 64 heads of 64, N=128) and at 8× the length, forward (one direction), backward with
recompute (two), median ms and GB/s of its bytes (each direction reads and writes the states once);
the prefetching kernel's output must equal the loop's (same operations in the same order).
--chunks: only the chunk size (``model.ssm_chunk_size``), each in its own process: float64 checks at
2×1000×8×64, G=2, N=128 (L not a multiple of any chunk) in fp32 and bf16, recompute on and off; then
forward+backward timed in bf16 at the Mamba-2 135M layer (24 heads, recompute off, its default) and 1B
layer (64 heads, recompute on), with peak scratch and the kernels of one profiled 1B forward+backward.
A larger chunk halves the (batch, chunks, heads, P, N) fp32 states the kernels write and read (the
pass over chunks moves only those) and doubles the T × T work of each chunk.
--profile-range: one forward+backward of the Mamba-2 1B layer (bf16, states kept: its default) inside
cudaProfilerStart/Stop, after three that compile and autotune, so ncu (--profile-from-start off) sees each
kernel once with its chosen tile; the tiles are printed.
--diagnose: the bf16 accuracy case that faulted on the H200 (2×1000×8×64, G=2, N=128), once per tile of
``_chunk_scan_bwd_dbc_kernel`` (the kernel that faulted) with its head loop pipelined (num_stages 2) and
not (1), each in its own process, pinned to that one config; prints PASS / FAIL / CRASH per config. The
full run does this by itself when a bf16 accuracy case crashes (--no-diagnose: not).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch
import triton
from triton.testing import do_bench

from flowhn.kernels import triton_ssd_kernels as K
from flowhn.kernels.testing import ScriptLog, compare, dtype_name, poison_allocator_cache, reference_fn, ssd_inputs
from flowhn.kernels.triton_ssd import ssd_gpu

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
DTYPES = (torch.float32, torch.bfloat16)
CHECK = [  # (batch, length, heads, head_dim, groups, state), chunk
    ((2, 1000, 8, 64, 2, 128), 64),
    ((2, 1024, 24, 64, 1, 128), 64),
    ((3, 333, 6, 48, 6, 80), 32),
]
QUICK = [((1, 100, 4, 64, 2, 128), 64), ((1, 50, 6, 48, 6, 80), 32)]
DIAGNOSE_CASE = ((2, 1000, 8, 64, 2, 128), 64)
CASE_TIMEOUT_S = 300
BENCH = [("target 8x1024x24x64 N128", (8, 1024, 24, 64, 1, 128)),
         ("mamba2-1B 16x1024x64x64 N128", (16, 1024, 64, 64, 1, 128))]
IMPLS = [("new", "triton", True), ("new", "triton", False),
         ("old", "compiled_chunked", True), ("old", "compiled_chunked", False)]

log = ScriptLog()





def check_accuracy(shape, chunk, dtype, recompute, seed):
    poison_allocator_cache()
    fn = functools.partial(ssd_gpu, chunk_size=chunk, recompute=recompute, impl="triton")
    errors = compare(fn, reference_fn("ssd"), ssd_inputs(*shape, dtype=dtype, device="cuda", seed=seed))
    worst = max(errors.values(), key=lambda v: float("inf") if v != v else v)
    return worst <= TOL[dtype], worst, errors


def case_label(shape, chunk, dtype, recompute):
    return (f"{'x'.join(map(str, shape)):22s} chunk {chunk:3d} {dtype_name(dtype):8s} "
            f"{'recompute' if recompute else 'keep     '}")


def log_case(shape, chunk, dtype, recompute, status, errors):
    detail = "  ".join(f"{k}={v:.1e}" for k, v in errors.items()) if errors else ""
    log(f"  {case_label(shape, chunk, dtype, recompute)} {status:5s}  {detail}")


def pin_config(kernel_name, block_nk, warps, stages):
    """Replace one autotuned kernel by an autotuner holding only this config (no benchmarking)."""
    fn = getattr(K, kernel_name).fn
    config = triton.Config({"BLOCK_NK": block_nk}, num_warps=warps, num_stages=stages)
    setattr(K, kernel_name, triton.autotune(configs=[config], key=K._KEY)(fn))


def run_case_here(spec):
    """Child process: one shape and dtype, each recompute mode in turn; one RESULT line of JSON per mode."""
    if spec.get("pin"):
        pin_config(*spec["pin"])
    dtype = getattr(torch, spec["dtype"])
    for recompute in spec["recompute"]:
        ok, worst, errors = check_accuracy(tuple(spec["shape"]), spec["chunk"], dtype, recompute, spec["seed"])
        torch.cuda.synchronize()
        print("RESULT " + json.dumps({"recompute": recompute, "ok": ok, "worst": worst, "errors": errors}),
              flush=True)


def run_child(argv, label, timeout=CASE_TIMEOUT_S, relay=False):
    """Run this script with ``argv`` in a fresh process (``relay``: log its output lines as they come).
    Returns (its RESULT dicts, how it ended: "ok" or CRASH / ERROR / TIMEOUT, its stderr tail)."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    results = []
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    results.append(json.loads(line[len("RESULT "):]))
                elif relay:
                    log(line.rstrip("\n"))
            rc = proc.wait()
        finally:
            timed_out = not timer.is_alive() and proc.returncode != 0
            timer.cancel()
        err_file.seek(0)
        err = err_file.read()
    tail = "\n".join(err.strip().splitlines()[-25:])
    if rc == 0:
        return results, "ok", tail
    if timed_out:
        ended = "TIMEOUT"
    elif "illegal memory access" in err or "illegal instruction" in err or rc < 0:
        ended = "CRASH"
    else:
        ended = "ERROR"
    write_case_log(f"--- {label}: {ended} (exit {rc})\n{tail}\n")
    return results, ended, tail


def case_statuses(results, ended, modes):
    """PASS / FAIL per recompute mode that reported, else how the child ended."""
    by_mode = {r["recompute"]: r for r in results}
    return [(m, by_mode.get(m), ("PASS" if by_mode[m]["ok"] else "FAIL") if m in by_mode else ended)
            for m in modes]


def write_case_log(text):
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "ssd_cases.log"), "a") as f:
            f.write(text)


def leaves(inputs):
    return {k: v.detach().requires_grad_() for k, v in inputs.items() if v is not None}


def bench(fn, inputs):
    """(fwd+bwd median ms, fwd median ms, peak scratch bytes of one fwd+bwd)."""
    tensors = leaves(inputs)
    out = fn(**tensors)
    dy = torch.randn_like(out)
    out.backward(dy)  # compile / autotune outside the timed region

    def step():
        fn(**tensors).backward(dy)

    ms = do_bench(step, grad_to_none=list(tensors.values()), return_mode="median")
    with torch.no_grad():
        fwd = do_bench(lambda: fn(**tensors), return_mode="median")
    for t in tensors.values():
        t.grad = None
    del out
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(**tensors).backward(dy)
    torch.cuda.synchronize()
    # Scratch: the peak beyond what was there before (inputs, dy) and the gradients that stay after.
    grads = sum(t.grad.numel() * t.grad.element_size() for t in tensors.values())
    return ms, fwd, torch.cuda.max_memory_allocated() - base - grads


def profile_new(shape, dtype):
    inputs = ssd_inputs(*shape, dtype=dtype, device="cuda", seed=0)
    rows = kernel_times(functools.partial(ssd_gpu, impl="triton", recompute=True), inputs, reps=5)
    log(f"\nNew path kernels, recompute, {'x'.join(map(str, shape))} {dtype_name(dtype)} "
        f"(ms per forward+backward, launches):")
    for name, ms, count in rows[:15]:
        log(f"  {ms:7.3f} ms  x{count:<3d} {name[:90]}")
    log(f"  {sum(r[1] for r in rows):7.3f} ms  total")


def timing_here(dtype_names, no_old, seed):
    """Child process: the timing rows (printed as they come, returned in the RESULT line), then the
    profile and the autotuned tiles."""
    dtypes = [getattr(torch, name) for name in dtype_names]
    impls = [i for i in IMPLS if not (no_old and i[0] == "old")]
    rows = []
    log("\nTiming forward+backward (median ms), forward alone, and peak scratch beyond inputs/output/grads:")
    for label, shape in BENCH:
        for dtype in dtypes:
            inputs = ssd_inputs(*shape, dtype=dtype, device="cuda", seed=seed)
            for name, impl, recompute in impls:
                fn = functools.partial(ssd_gpu, impl=impl, recompute=recompute)
                t0 = time.time()
                try:
                    ms, fwd, scratch = bench(fn, inputs)
                except torch.OutOfMemoryError:
                    ms = fwd = scratch = float("nan")
                torch.cuda.empty_cache()
                rows.append((label, dtype_name(dtype), name, recompute, ms, fwd, scratch / 2**20))
                log(f"  {label} {dtype_name(dtype):8s} {name} recompute={recompute!s:5s}: {ms:.3f} ms "
                    f"(fwd {fwd:.3f}), scratch {scratch / 2**20:.0f} MiB  [{time.time() - t0:.0f} s]")
    if torch.bfloat16 in dtypes:
        profile_new(BENCH[0][1], torch.bfloat16)
    log("\nAutotuned tiles:")
    for kernel in (K._chunk_state_kernel, K._chunk_scan_fwd_kernel, K._chunk_scan_bwd_dx_kernel,
                   K._chunk_scan_bwd_dbc_kernel):
        for key, config in getattr(kernel, "cache", {}).items():
            log(f"  {kernel.fn.__name__:28s} {key}: {config}")
    print("RESULT " + json.dumps({"ok": True, "rows": rows}), flush=True)


def quick_check_here(seed):
    """Accuracy at the small QUICK shapes in this process (for compute-sanitizer). Returns the failures."""
    failures = []
    for dtype in DTYPES:
        for shape, chunk in QUICK:
            for recompute in (True, False):
                ok, _, errors = check_accuracy(shape, chunk, dtype, recompute, seed)
                torch.cuda.synchronize()
                log_case(shape, chunk, dtype, recompute, "PASS" if ok else "FAIL", errors)
                if not ok:
                    failures.append(case_label(shape, chunk, dtype, recompute))
    return failures


def find_sanitizer():
    return shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer")
         if os.path.exists(p)), None)


def sanitize(seed):
    """--quick-check under compute-sanitizer memcheck in a child; returns a one-line summary."""
    tool = find_sanitizer()
    if tool is None:
        log("\ncompute-sanitizer: not found on PATH or under /usr/local/cuda")
        return "not found"
    cmd = [tool, "--tool", "memcheck", "--print-limit", "20", sys.executable, os.path.abspath(__file__),
           "--quick-check", "--seed", str(seed)]
    log(f"\ncompute-sanitizer memcheck of --quick-check: {' '.join(cmd)}")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=480)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "sanitizer.log"), "w") as f:
            f.write(text)
    summary = next((ln.strip("= ").strip() for ln in text.splitlines() if "ERROR SUMMARY" in ln), "no summary")
    first = [ln for ln in text.splitlines() if ln.startswith("=========") and ("Invalid" in ln or " at " in ln)][:4]
    for line in first:
        log("  " + line)
    log(f"  exit {rc}, {summary} ({time.time() - t0:.0f} s)")
    return f"{summary} (exit {rc})"


def diagnose(seed):
    """Each tile of the dB/dC kernel, pipelined and not, bf16, each in its own process."""
    shape, chunk = DIAGNOSE_CASE
    log(f"\nDiagnose: _chunk_scan_bwd_dbc_kernel pinned to one config, {'x'.join(map(str, shape))} chunk {chunk} "
        "bfloat16 recompute, one process each:")
    rows = []
    for block_nk, warps in K.TILES:
        for stages in (2, 1):
            spec = dict(shape=shape, chunk=chunk, dtype="bfloat16", recompute=[True], seed=seed,
                        pin=["_chunk_scan_bwd_dbc_kernel", block_nk, warps, stages])
            label = f"BLOCK_NK={block_nk:3d} warps={warps} stages={stages}"
            t0 = time.time()
            results, ended, tail = run_child(["--case", json.dumps(spec)], label)
            [(_, result, status)] = case_statuses(results, ended, [True])
            worst = f"worst {result['worst']:.1e}" if result else tail.splitlines()[-1][:100] if tail else ""
            log(f"  {label}: {status:7s} {worst}  [{time.time() - t0:.0f} s]")
            rows.append((label, status))
    return rows


CHUNK_CHECK_SHAPE = (2, 1000, 8, 64, 2, 128)
CHUNK_TIMED = [("135M layer 16x1024x24x64 N128", (16, 1024, 24, 64, 1, 128), False),
               ("1B layer 16x1024x64x64 N128", (16, 1024, 64, 64, 1, 128), True)]


def kernel_times(fn, inputs, reps=3):
    """(name, ms per forward+backward, launches) of each kernel, one profiled run of ``reps``."""
    tensors = leaves(inputs)
    dy = torch.randn_like(fn(**tensors))
    fn(**tensors).backward(dy)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn(**tensors).backward(dy)
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / reps / 1e3, e.count // reps) for e in prof.key_averages()
            if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])


def chunk_case_here(chunk, seed):
    """Child process for --chunks: one chunk size's checks, timings and 1B kernel profile (RESULT lines)."""
    for dtype in DTYPES:
        for recompute in (True, False):
            ok, worst, errors = check_accuracy(CHUNK_CHECK_SHAPE, chunk, dtype, recompute, seed)
            torch.cuda.synchronize()
            log_case(CHUNK_CHECK_SHAPE, chunk, dtype, recompute, "PASS" if ok else "FAIL", errors)
            print("RESULT " + json.dumps({"kind": "check", "dtype": dtype_name(dtype), "recompute": recompute,
                                          "ok": ok, "worst": worst}), flush=True)
    for label, shape, recompute in CHUNK_TIMED:
        inputs = ssd_inputs(*shape, dtype=torch.bfloat16, device="cuda", seed=seed)
        fn = functools.partial(ssd_gpu, impl="triton", recompute=recompute, chunk_size=chunk)
        ms, fwd, scratch = bench(fn, inputs)
        torch.cuda.empty_cache()
        log(f"  chunk {chunk} {label} recompute={recompute}: {ms:.3f} ms (fwd {fwd:.3f}), "
            f"scratch {scratch / 2**20:.0f} MiB")
        print("RESULT " + json.dumps({"kind": "time", "label": label, "recompute": recompute, "ms": ms,
                                      "fwd": fwd, "scratch_mib": scratch / 2**20}), flush=True)
        if recompute:
            for name, kms, count in kernel_times(fn, inputs)[:8]:
                log(f"    {kms:7.3f} ms  x{count:<3d} {name[:80]}")
    for kernel in (K._chunk_state_kernel, K._chunk_scan_fwd_kernel, K._chunk_scan_bwd_dx_kernel,
                   K._chunk_scan_bwd_dbc_kernel):
        for key, config in getattr(kernel, "cache", {}).items():
            log(f"    tile {kernel.fn.__name__:28s} {key}: {config}")


def chunk_sweep(chunks, seed) -> bool:
    """--chunks: each chunk size in its own process (a faulting or spilling tile stays in its process)."""
    table, ok = [], True
    for chunk in chunks:
        t0 = time.time()
        log(f"\nchunk {chunk}:")
        results, ended, tail = run_child(["--chunk-case", str(chunk), "--seed", str(seed)], f"chunk {chunk}",
                                         timeout=420, relay=True)
        checks = [r for r in results if r["kind"] == "check"]
        passed = len(checks) == 2 * len(DTYPES) and all(r["ok"] for r in checks)
        ok &= passed and ended == "ok"
        times = {r["label"]: r for r in results if r["kind"] == "time"}
        table.append((chunk, passed, ended, max((r["worst"] for r in checks), default=float("nan")), times))
        if ended != "ok":
            log(f"  chunk {chunk}: {ended}: " + (tail.splitlines()[-1][:160] if tail else ""))
        log(f"  [{time.time() - t0:.0f} s]")
    log("\n| chunk | float64 checks (fp32, bf16; recompute on/off) | worst rel. error | "
        + " | ".join(f"{label} ms (scratch MiB)" for label, _, _ in CHUNK_TIMED) + " |")
    log("|---:|---|---:|" + "---:|" * len(CHUNK_TIMED))
    for chunk, passed, ended, worst, times in table:
        cells = [f"{times[label]['ms']:.3f} ({times[label]['scratch_mib']:.0f})" if label in times else ended
                 for label, _, _ in CHUNK_TIMED]
        log(f"| {chunk} | {'pass' if passed else 'FAIL'} | {worst:.1e} | " + " | ".join(cells) + " |")
    return ok


STATE_PASS_SHAPES = ((16, 16, 24, 64, 128), (16, 16, 64, 64, 128), (2, 128, 64, 64, 128))


def state_pass_timing(shapes=STATE_PASS_SHAPES, device="cuda") -> bool:
    """--state-pass: both kernels of the pass over chunks, timed, and the prefetching one's output against the loop's."""
    from flowhn.kernels.triton_ssd import state_pass

    log("Pass over chunks (triton_ssd.state_pass), fp32 states; ms median, GB/s of the bytes each direction moves:")
    log("| shape (batch, chunks, heads, P, N) | directions | loop ms | prefetch ms | loop GB/s | prefetch GB/s | equal |")
    log("|---|---:|---:|---:|---:|---:|---|")
    ok = True
    for batch, chunks, heads, P, N in shapes:
        gen = torch.Generator(device=device).manual_seed(0)
        S = torch.randn(batch, chunks, heads, P, N, device=device, generator=gen)
        Kb = torch.randn(batch, chunks, heads, P, N, device=device, generator=gen)
        total = -torch.rand(batch, heads, chunks, device=device, generator=gen)
        for with_state, with_adjoint in ((True, False), (True, True)):
            outputs, times = {}, {}
            for impl in ("loop", "prefetch"):
                state, adjoint = S.clone(), Kb.clone()
                state_pass(state, adjoint, total, heads, chunks, with_state, with_adjoint, K.tl.float32, impl=impl)
                outputs[impl] = (state, adjoint)
                work_s, work_a = S.clone(), Kb.clone()  # timed repeatedly in place: the values do not matter
                times[impl] = do_bench(
                    lambda: state_pass(work_s, work_a, total, heads, chunks, with_state, with_adjoint, K.tl.float32,
                                       impl=impl), return_mode="median")
            equal = all(torch.equal(a, b) for a, b in zip(outputs["loop"], outputs["prefetch"]))
            ok &= equal
            directions = int(with_state) + int(with_adjoint)
            gb = 2 * directions * S.numel() * S.element_size() / 1e9
            log(f"| {batch}×{chunks}×{heads}×{P}×{N} | {directions} | {times['loop']:.3f} | {times['prefetch']:.3f} "
                f"| {gb / times['loop'] * 1e3:.0f} | {gb / times['prefetch'] * 1e3:.0f} | {'yes' if equal else 'NO'} |")
    return ok


def profile_range(shape=BENCH[1][1]):
    tensors = leaves(ssd_inputs(*shape, dtype=torch.bfloat16, device="cuda", seed=0))
    fn = functools.partial(ssd_gpu, impl="triton", recompute=False)
    dy = torch.randn_like(fn(**tensors))
    for _ in range(3):
        fn(**tensors).backward(dy)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    fn(**tensors).backward(dy)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    for kernel in (K._chunk_state_kernel, K._chunk_scan_fwd_kernel, K._chunk_scan_bwd_dx_kernel,
                   K._chunk_scan_bwd_dbc_kernel):
        for key, config in getattr(kernel, "cache", {}).items():
            print(f"  {kernel.fn.__name__:28s} {key}: {config}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-old", action="store_true", help="do not time the compiled chunked path")
    parser.add_argument("--dtypes", default=",".join(dtype_name(d) for d in DTYPES),
                        help="comma-separated: the dtypes to check and time (a full run takes ~8 minutes on an "
                             "H200; bfloat16 alone about half)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick-check", action="store_true",
                        help="accuracy at two small shapes in this process only (run it under compute-sanitizer)")
    parser.add_argument("--sanitize", action="store_true", help="also run --quick-check under compute-sanitizer")
    parser.add_argument("--diagnose", action="store_true",
                        help="only: each config of the dB/dC kernel in bf16, each in its own process")
    parser.add_argument("--no-diagnose", action="store_true",
                        help="do not run --diagnose automatically when a bf16 accuracy case crashes")
    parser.add_argument("--state-pass", action="store_true",
                        help="only: the pass over chunks, its loop and prefetching kernels, timed and compared")
    parser.add_argument("--chunks", help="only: these chunk sizes (comma-separated), checked and timed")
    parser.add_argument("--profile-range", action="store_true",
                        help="only: one 1B-layer forward+backward inside a CUDA profiler range (for ncu)")
    parser.add_argument("--chunk-case", type=int, help=argparse.SUPPRESS)  # child of --chunks
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child: one accuracy case (JSON)
    parser.add_argument("--timing", help=argparse.SUPPRESS)  # child: the timing part for these dtypes
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_ssd.py: no CUDA device")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    if args.case:
        spec = json.loads(args.case)
        run_case_here(spec)
        return
    if args.timing:
        timing_here(args.timing.split(","), args.no_old, seed)
        return
    if args.chunk_case:
        chunk_case_here(args.chunk_case, seed)
        return
    if args.chunks:
        if os.environ.get("OUT"):
            log.open(os.path.join(os.environ["OUT"], "ssd_chunks.log"))
        log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
            f"seed {seed}")
        sys.exit(0 if chunk_sweep([int(c) for c in args.chunks.split(",")], seed) else 1)
    if args.state_pass:
        if os.environ.get("OUT"):
            log.open(os.path.join(os.environ["OUT"], "ssd_state_pass.log"))
        log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
        sys.exit(0 if state_pass_timing() else 1)
    if args.profile_range:
        profile_range()
        return
    if args.quick_check:
        log(f"quick check, seed {seed}, device {torch.cuda.get_device_name()}:")
        failures = quick_check_here(seed)
        sys.exit(1 if failures else 0)

    if os.environ.get("OUT"):
        log.open(os.path.join(os.environ["OUT"], "ssd.log"))
    started = time.time()
    log(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
        f"seed {seed}  fp32 matmuls: {K.FP32_DOT_PRECISION}  dB/dC head-loop stages: {K.DBC_STAGES}")
    if args.diagnose:
        rows = diagnose(seed)
        log(f"\nSummary ({time.time() - started:.0f} s): dB/dC kernel configs, bf16")
        for label, status in rows:
            log(f"  {label}  {status}")
        sys.exit(0 if all(status == "PASS" for _, status in rows) else 1)

    log("\nAccuracy of the Triton SSD vs float64 reference (relative L2 error, output and every gradient;"
        " one process per case):")
    failures, worst, statuses = [], {}, {}
    dtypes = [d for d in DTYPES if dtype_name(d) in args.dtypes.split(",")]
    if not dtypes:
        sys.exit(f"gpu_ssd.py: --dtypes: none of {args.dtypes!r} is one of {', '.join(map(dtype_name, DTYPES))}")
    for dtype in dtypes:  # fp32 first: its cases do not depend on the bf16 ones
        for shape, chunk in CHECK:  # one process per shape and dtype, running both recompute modes
            spec = dict(shape=shape, chunk=chunk, dtype=dtype_name(dtype), recompute=[True, False], seed=seed)
            label = f"{'x'.join(map(str, shape))} chunk {chunk} {dtype_name(dtype)}"
            results, ended, tail = run_child(["--case", json.dumps(spec)], label)
            for recompute, result, status in case_statuses(results, ended, [True, False]):
                log_case(shape, chunk, dtype, recompute, status, result["errors"] if result else None)
                statuses.setdefault(dtype, []).append(status)
                if result:
                    worst[dtype] = max(worst.get(dtype, 0.0), result["worst"])
                if status != "PASS":
                    failures.append(f"{shape} {dtype_name(dtype)} recompute={recompute}: {status}")
            if ended != "ok" and tail:
                log("      " + tail.splitlines()[-1][:160])
    log(f"  ({time.time() - started:.0f} s)")
    diagnosed = []
    if "CRASH" in statuses.get(torch.bfloat16, []) and not args.no_diagnose:
        diagnosed = diagnose(seed)  # which dB/dC configs fault (a few minutes; --no-diagnose skips it)

    # Timed: the dtypes none of whose cases crashed (a wrong result is reported above, not a reason to skip).
    timeable = [d for d in dtypes if all(s in ("PASS", "FAIL") for s in statuses.get(d, []))]
    rows = []
    if timeable:
        argv = ["--timing", ",".join(dtype_name(d) for d in timeable), "--seed", str(seed)]
        results, ended, tail = run_child(argv + (["--no-old"] if args.no_old else []), "timing",
                                         timeout=900, relay=True)
        rows = results[0]["rows"] if results else []
        if ended != "ok":
            failures.append(f"timing: {ended}")
            log(f"\nTiming {ended}: " + (tail.splitlines()[-1][:160] if tail else ""))
    skipped = [dtype_name(d) for d in dtypes if d not in timeable]
    if skipped:
        log(f"\nNot timed (an accuracy case crashed): {', '.join(skipped)}")

    sanitized = sanitize(seed) if args.sanitize else None

    log(f"\nSummary ({time.time() - started:.0f} s). Worst accuracy: "
        + ", ".join(f"{dtype_name(d)} {e:.1e} (tol {TOL[d]:.0e})" for d, e in worst.items())
        + "; cases: " + ", ".join(f"{dtype_name(d)} " + "/".join(v) for d, v in statuses.items()))
    if sanitized is not None:
        log(f"compute-sanitizer memcheck (--quick-check): {sanitized}")
    if diagnosed:
        log("dB/dC kernel configs, bf16: " + "; ".join(f"{label} {status}" for label, status in diagnosed))
    header = f"{'shape':30s} {'dtype':9s} {'impl':4s} {'recomp':6s} {'fwd+bwd ms':>10s} {'fwd ms':>8s} " \
             f"{'scratch MiB':>11s} {'speedup':>8s}"
    log(header)
    log("-" * len(header))
    for label, dtype, name, recompute, ms, fwd, scratch in rows:
        old = [r[4] for r in rows if r[:2] == (label, dtype) and r[2] == "old" and r[3] == recompute]
        speedup = f"{old[0] / ms:7.2f}x" if name == "new" and old else ""
        log(f"{label:30s} {dtype:9s} {name:4s} {'on' if recompute else 'off':6s} {ms:10.3f} {fwd:8.3f} "
            f"{scratch:11.0f} {speedup:>8s}")
    if failures:
        log("\nFAILED: " + "; ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
