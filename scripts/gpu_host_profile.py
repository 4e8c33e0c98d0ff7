#!/usr/bin/env python
"""Where the host's time goes in a bench training step: the rows that are bound by the host.

  PYTHONPATH=src python scripts/gpu_host_profile.py [--scale 135m] [--steps 10] [SPEC ...]

A SPEC is ``model[/split][:compile_mode]``, e.g. ``llama``, ``flowhn/fac_split``,
``flowhn/fac_split:reduce-overhead`` (default: llama, flowhn/fac_split and mamba, each with the default
compile mode). Each is built and stepped exactly as ``python -m flowhn.bench`` does (its ``ours`` and
``make_train_step``: bf16 autocast, fused loss on, whole-model compile, master weights on CUDA), warmed up, then:

1. GPU ms a step (CUDA events around ``--steps`` steps) and host ms a step: the time ``step()`` takes
   to return, each step started on an idle GPU (synchronized before, not after), so the host never
   waits for a full queue and any wait inside the step is a sync the step itself makes.
2. One step under torch.profiler (CPU and CUDA): kernel launches, syncs and device-to-host copies,
   and the ops with the most host time of their own.
3. One step under cProfile: the Python functions with the most time of their own.
4. That profiled step's idle gaps on the device timeline (``flowhn.perf.gaps``): how much of it the GPU
   idles, how much of that is the host launching late (grouped by the CPU op that launched next),
   and the kernels around the largest gaps.

A table (GPU ms, host ms, launches, syncs) is printed last; the details go to $OUT/host_profile.log.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch
from hydra import initialize_config_dir
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from flowhn.bench import CONF, bench_master_weights, make_train_step, ours
from flowhn.kernels.testing import ScriptLog
from flowhn.perf.gaps import exported_trace, gap_markdown, kernel_gaps

log = ScriptLog()
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize")
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch")


def parse_spec(spec: str) -> dict:
    name, _, mode = spec.partition(":")
    model, _, split = name.partition("/")
    entry = {"model": model} | ({"split": split} if split else {})
    return entry | ({"compile_mode": mode} if mode else {})


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_and_gpu_ms(step, steps: int) -> tuple[float, float]:
    host = []
    for _ in range(steps):
        sync()
        started = time.perf_counter()
        step()
        host.append(time.perf_counter() - started)
    host.sort()
    if not torch.cuda.is_available():  # --device cpu (a smoke run): wall time only
        return host[len(host) // 2] * 1e3, sum(host) / steps * 1e3
    sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    sync()
    return host[len(host) // 2] * 1e3, start.elapsed_time(end) / steps


def runtime_calls(step):
    """Counts of CUDA runtime/driver calls of interest in one step, the top host ops (own time), and the
    profile itself (its trace gives the step's idle gaps)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
        sync()
    events = prof.key_averages()
    counts = {"launches": 0, "syncs": 0, "memcpy": 0, "item": 0}
    for e in events:
        if e.key in LAUNCH_CALLS:
            counts["launches"] += e.count
        elif e.key in SYNC_CALLS:
            counts["syncs"] += e.count
        elif e.key.startswith("cudaMemcpy") or e.key.startswith("cuMemcpy"):
            counts["memcpy"] += e.count
        elif e.key == "aten::_local_scalar_dense":
            counts["item"] += e.count
    top = events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
    return counts, top, prof


def python_profile(step, top: int = 30) -> str:
    profiler = cProfile.Profile()
    sync()
    profiler.enable()
    step()
    profiler.disable()
    sync()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", default=["llama", "flowhn/fac_split", "mamba"])
    parser.add_argument("--scale", default="135m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (fp32, wall time)")
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    log.open(out_dir / "host_profile.log")
    bench = OmegaConf.create({"scale": {"name": args.scale}, "seq_len": args.seq_len, "batch_size": args.batch_size,
                              "compile": True, "fused_loss": "auto", "device": args.device})
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    log(f"device: {gpu}  torch {torch.__version__}  scale {args.scale}  {args.batch_size} x {args.seq_len}")
    rows = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for spec in args.specs:
            started = time.time()
            name, model, _, vocab, compiled, options = ours(parse_spec(spec), bench)
            # The bench's own step: master weights where the bench has them (on for CUDA).
            options = {"master_weights": bench_master_weights(bench)} | options
            step = make_train_step(model, vocab, bench.batch_size, bench.seq_len, compiled, args.device, **options)
            for _ in range(args.warmup):
                step()
            host_ms, gpu_ms = host_and_gpu_ms(step, args.steps)
            counts, top, prof = runtime_calls(step)
            log(f"\n=== {spec} ({name}): step {gpu_ms:.1f} ms, host {host_ms:.1f} ms, {counts}, "
                f"{time.time() - started:.0f} s with compile")
            log(top)
            log(python_profile(step))
            idle = late = float("nan")
            if torch.cuda.is_available():  # the gaps of the step profiled above
                gaps, busy, span = kernel_gaps(exported_trace(prof))
                log(gap_markdown(gaps, busy, span, f"{spec}: idle gaps of one step"))
                idle, late = sum(g.us for g in gaps) / 1e3, sum(g.host_late for g in gaps) / 1e3
            rows.append((spec, gpu_ms, host_ms, counts, idle, late))
            del model, step
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    log("\n| spec | step ms (events) | host ms (median, idle GPU at start) | launches | syncs | memcpy | item() "
        "| GPU idle ms (profiled step) | of it host late |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for spec, gpu_ms, host_ms, c, idle, late in rows:
        log(f"| {spec} | {gpu_ms:.1f} | {host_ms:.1f} | {c['launches']} | {c['syncs']} | {c['memcpy']} | {c['item']} "
            f"| {idle:.1f} | {late:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
