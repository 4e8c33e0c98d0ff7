"""Where a training step's GPU time goes: kernel time per category, from ``torch.profiler``.

The benchmark (``python -m flowhn.bench profile=true``) attaches this table to every row, so a
missed throughput target comes with the evidence of what limits it: GEMMs near their peak leave the
gap to the SSM scan, the elementwise work around it, or the attention kernel.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

from flowhn.perf.gaps import device_times_by_name, exported_trace, kernel_gaps

# First match wins, so the specific patterns come before the generic ones (inductor names fused
# kernels after the ops they contain: a fused log-softmax is cross-entropy, not "elementwise").
CATEGORIES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("ssm scan", r"_scan_|_summary_|_chunk_pass|selective_scan|ssd|_chunk_state|_state_pass"),
        ("attention", r"flash|fmha|attention|_efficient_attention|sdpa"),
        ("cross-entropy", r"log_softmax|logsoftmax|nll_loss|cross_entropy"),
        ("optimizer", r"adam|multi_tensor|foreach|^triton_for_"),  # triton_for_*: inductor's foreach kernels (a compiled AdamW)
        ("gemm", r"gemm|cutlass|xmma|nvjet|cublas|wgmma|sm90_|sm80_|matmul|_mm_|bmm|addmm"),
        ("conv", r"conv(?!ert)"),  # not inductor's convert_element_type kernels
        ("gather/scatter", r"index|gather|scatter|embedding"),
        # inductor's fused RMSNorm kernels (forward: ..._mean_mul_pow_rsqrt_...; backward: ..._mul_pow_sum_...)
        # carry _to_copy in their names, but they are norms, not copies (until the nineteenth session: copy/cast)
        ("elementwise/norm", r"^triton_.*(rsqrt|_pow_)"),
        ("copy/cast", r"copy|cast|cat_|memcpy|memset|fill"),
        ("elementwise/norm", r"triton_|elementwise|reduce|vectorized|unrolled|norm|silu|softplus|mul|add"),
    )
)


def kernel_category(name: str) -> str:
    for category, pattern in CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


@dataclass
class Breakdown:
    """GPU kernel time per training step, by category and by kernel."""

    steps: int
    device: str = "GPU"
    # (name, category, ms per step, launches per step), slowest first
    top_kernels: list[tuple[str, str, float, float]] = field(default_factory=list)
    # ms per step in which the GPU ran anything (the union over streams; None on CPU)
    busy_ms: float | None = None

    @property
    def by_category(self) -> dict[str, float]:
        """ms per step in each category."""
        totals: dict[str, float] = defaultdict(float)
        for _, category, ms, _ in self.top_kernels:
            totals[category] += ms
        return dict(totals)

    @property
    def total_ms(self) -> float:
        return sum(ms for _, _, ms, _ in self.top_kernels)

    def markdown(self, title: str, top: int = 8) -> str:
        total = self.total_ms or 1.0
        lines = [f"**{title}**: {self.device} kernel time {self.total_ms:.1f} ms per step", "",
                 "| category | ms/step | % |", "|---|---:|---:|"]
        for name, ms in sorted(self.by_category.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {ms:.2f} | {100 * ms / total:.1f} |")
        lines += ["", "| top kernel | category | ms/step | launches/step |", "|---|---|---:|---:|"]
        for name, category, ms, calls in self.top_kernels[:top]:
            short = name if len(name) <= 70 else name[:67] + "..."
            lines.append(f"| `{short.replace('|', '/')}` | {category} | {ms:.2f} | {calls:g} |")
        return "\n".join(lines)


def _leaf_op_times(prof) -> dict[str, list[float]]:
    """[total µs, calls] per leaf CPU op (a machine without CUDA has no kernels; these stand in)."""
    times: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if not event.cpu_children:
            entry = times[event.name]
            entry[0] += event.cpu_time_total
            entry[1] += 1
    return times


def profile_steps(step: Callable[[], None], steps: int = 3, device: bool | None = None) -> Breakdown:
    """Run ``step`` ``steps`` times under the profiler (after the caller's warm-up) and sum the time
    of every GPU kernel, memcpy and memset (CPU leaf ops on a machine without CUDA) by category.

    On the GPU the times come from the profile's trace (``perf.gaps``), not its function events: those
    left out every ATen kernel whose name holds a lambda (``{lambda(float)#1}``), since a filter for the
    profiler's own '#' ranges matched them too: 31 of 349 ms a step at Mamba 1B (tenth session)."""
    device = torch.cuda.is_available() if device is None else device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device:
            torch.cuda.synchronize()
    busy_ms = None
    if device:
        trace = exported_trace(prof)
        times = device_times_by_name(trace)
        busy_ms = kernel_gaps(trace, launchers=False)[1] / 1e3 / steps
    else:
        times = _leaf_op_times(prof)
    rows = [(name, kernel_category(name), us / 1e3 / steps, launches / steps) for name, (us, launches) in times.items()]
    return Breakdown(steps=steps, device="GPU" if device else "CPU", top_kernels=sorted(rows, key=lambda r: -r[2]),
                     busy_ms=busy_ms)
