"""Where a training step leaves the GPU idle: the gaps between its kernels, and whether the host caused them.

The benchmark's "GPU busy %" is this busy time over the step time; this module also says what the rest is. From
one profiled step (``torch.profiler``'s trace, CPU and CUDA activity), the device timeline is the
union of every kernel, memcpy and memset on every stream; each hole in it ends when some device
activity starts. That activity was launched by a runtime call on the host (``cudaLaunchKernel``,
``cudaGraphLaunch``, ...; the trace links the two by a correlation id). If the launch call started
after the GPU went idle, the host was late by that much: the hole is the host's (Python, dispatch,
a sync that drained the queue). The rest of a hole is the device's own: launch latency, a wait on
another stream or an event. Host-late holes are grouped by the CPU op that made the launch, so the
report names what to take off the host.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass(frozen=True)
class Gap:
    """One hole in the device timeline (µs): ``before``/``after`` name the activities around it;
    ``host_late`` is the part of it before the host even called the launch of ``after``."""

    start: float
    us: float
    host_late: float
    before: str
    after: str
    launcher: str  # the innermost CPU op around the launch call of ``after`` ("" when not found)


def _device_events(trace: dict) -> list[dict]:
    return sorted((e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES),
                  key=lambda e: e["ts"])


def _correlation(event: dict):
    return (event.get("args") or {}).get("correlation")


def _innermost_op(cpu_ops: list[dict], ts: float, tid) -> str:
    """Name of the shortest CPU op on thread ``tid`` that spans ``ts`` ("" if none)."""
    spanning = [e for e in cpu_ops if e.get("tid") == tid and e["ts"] <= ts < e["ts"] + e.get("dur", 0)]
    return min(spanning, key=lambda e: e.get("dur", 0))["name"] if spanning else ""


def kernel_gaps(trace: dict, min_us: float = 0.0, launchers: bool = True) -> tuple[list[Gap], float, float]:
    """(gaps longer than ``min_us``, device-busy µs, timeline span µs) of a Chrome trace as
    ``torch.profiler`` exports it. Overlapping activities (several streams) count once. ``launchers``:
    name the CPU op behind each gap's next launch (a scan of the CPU ops per gap; the busy time alone
    does not need it)."""
    device = _device_events(trace)
    if not device:
        return [], 0.0, 0.0
    events = trace.get("traceEvents", [])
    launches = {_correlation(e): e for e in events
                if e.get("ph") == "X" and e.get("cat") == "cuda_runtime" and _correlation(e) is not None}
    cpu_ops = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    gaps, busy = [], 0.0
    span_start, end, last = device[0]["ts"], device[0]["ts"], device[0]
    for event in device:
        start, stop = event["ts"], event["ts"] + event.get("dur", 0.0)
        if start > end:
            hole = start - end
            launch = launches.get(_correlation(event))
            late = min(hole, max(0.0, launch["ts"] - end)) if launch else 0.0
            if hole > min_us:
                launcher = _innermost_op(cpu_ops, launch["ts"], launch.get("tid")) if launch and launchers else ""
                gaps.append(Gap(end, hole, late, last["name"], event["name"], launcher))
            busy += stop - start
            end, last = stop, event
        elif stop > end:
            busy += stop - end
            end, last = stop, event
    return gaps, busy, end - span_start


def _short(name: str, width: int = 60) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


def gap_markdown(gaps: list[Gap], busy_us: float, span_us: float, title: str, top: int = 10) -> str:
    """Idle time of one profiled step: its total, the host-late part, and the largest causes, grouped."""
    idle = sum(g.us for g in gaps)
    late = sum(g.host_late for g in gaps)
    lines = [f"**{title}**: device timeline {span_us / 1e3:.2f} ms, busy {busy_us / 1e3:.2f} ms "
             f"({100 * busy_us / max(span_us, 1e-9):.1f} %), idle {idle / 1e3:.2f} ms in {len(gaps)} gaps; "
             f"of it {late / 1e3:.2f} ms before the host launched the next activity", ""]
    by_launcher: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for g in gaps:
        if g.host_late > 0:
            entry = by_launcher[g.launcher or "?"]
            entry[0] += g.host_late
            entry[1] += 1
    if by_launcher:
        lines += ["| host late, by the CPU op that launched next | ms | gaps |", "|---|---:|---:|"]
        for name, (us, n) in sorted(by_launcher.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"| `{_short(name)}` | {us / 1e3:.3f} | {n} |")
        lines.append("")
    by_pair: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for g in gaps:
        entry = by_pair[(g.before, g.after)]
        entry[0] += g.us
        entry[1] += g.us - g.host_late
        entry[2] += 1
    lines += ["| idle before | idle after | ms | of it device-side ms | gaps |", "|---|---|---:|---:|---:|"]
    for (before, after), (us, device_us, n) in sorted(by_pair.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{_short(before, 45)}` | `{_short(after, 45)}` | {us / 1e3:.3f} | {device_us / 1e3:.3f} | {n} |")
    return "\n".join(lines)


def device_times_by_name(trace: dict) -> dict[str, list[float]]:
    """[summed µs, count] of each kernel, memcpy and memset name in a trace (overlaps counted twice)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in _device_events(trace):
        entry = totals[event["name"]]
        entry[0] += event.get("dur", 0.0)
        entry[1] += 1
    return dict(totals)


def exported_trace(prof) -> dict:
    """A finished ``torch.profiler.profile``'s Chrome trace, as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)
