"""Runs that differ only in their seed, read as one row: mean ± spread over the seeds.

A seeded ablation (``experiment=split_ablation_gpu_small``: four splits x three seeds) is judged
by whether the gaps between its rows are larger than the spread within them. So each group
reports, over its completed runs, validation loss, TPS, MFU and the zero-shot average as mean ±
sample standard deviation with min–max; the step of each run's lowest validation loss, and whether
the run ended above it (overfitting, or divergence); and which pairs of groups have seed ranges
that do not overlap (a crude test with three seeds, said as such). Jobs that did not complete are
named and left out of the numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from flowhn.report.runs import Run, order_key

SEED_AXIS = "seed"
# A run whose last validation loss is above its lowest by more than this has stopped improving.
RISE_TOLERANCE = 0.01


@dataclass
class SeedGroup:
    """The runs of one configuration, one per seed."""

    label: str  # the report's row label without the seed (``FAC_Split``, ``FAC_Split (lr=0.001)``)
    scale: str
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.completed]


def seed_groups(runs: list[Run]) -> list[SeedGroup]:
    """Runs grouped by everything but their seed, in the report's row order; empty when no run
    was swept over seeds (nothing to aggregate)."""
    if not any(SEED_AXIS in r.axes for r in runs):
        return []
    groups: dict[tuple[str, str], SeedGroup] = {}
    for run in sorted(runs, key=order_key):
        key = (run.scale, run.label_without(SEED_AXIS))
        groups.setdefault(key, SeedGroup(key[1], run.scale, [])).runs.append(run)
    return list(groups.values())


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # sample standard deviation; None for one run
    lo: float
    hi: float
    n: int

    def overlaps(self, other: Spread) -> bool:
        return not (self.hi < other.lo or other.hi < self.lo)


def spread(values: list[float | None]) -> Spread | None:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Spread(statistics.fmean(values), std, min(values), max(values), len(values))


def format_spread(s: Spread | None, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """``5.210 ± 0.010 (5.200–5.220, n=3)``; one run: ``5.210 (1 run)``."""
    if s is None:
        return "—"
    f = lambda v: f"{v / scale:.{digits}f}{unit}"  # noqa: E731
    if s.std is None:
        return f"{f(s.mean)} (1 run)"
    return f"{f(s.mean)} ± {s.std / scale:.{digits}f} ({f(s.lo)}–{f(s.hi)}, n={s.n})"


def lowest_validation(run: Run, tolerance: float = RISE_TOLERANCE) -> tuple[int | None, bool]:
    """(step of the run's lowest validation loss, whether its last one is above it by > tolerance)."""
    val = run.points("val/loss")
    if val.empty:
        return None, False
    best = val.loc[val["val/loss"].idxmin()]
    return int(best["step"]), float(val["val/loss"].iloc[-1]) > float(best["val/loss"]) + tolerance


METRICS = {  # column: (summary key, factor to the printed unit)
    "val_loss": ("val_loss", 1.0),
    "TPS": ("tps", 1.0),
    "MFU": ("mfu", 100.0),
    "Avg": ("eval_avg", 100.0),
}


def group_spreads(group: SeedGroup) -> dict[str, Spread | None]:
    out = {}
    for column, (key, factor) in METRICS.items():
        values = [r.summary.get(key) for r in group.completed]
        out[column] = spread([None if v is None else factor * v for v in values])
    return out


# The columns of a seed group's row, in seeds.md and in index.html's "Over seeds" table.
ROW_HEADERS = ("model", "scale", "runs", "val loss", "TPS", "MFU %", "zero-shot Avg %", "lowest val loss at step")


def row_cells(group: SeedGroup, spreads: dict[str, Spread | None], tolerance: float = RISE_TOLERANCE) -> list[str]:
    """A seed group's row as printed, under ROW_HEADERS."""
    steps = ", ".join(f"{step}{' (then rises)' if rise else ''}" for step, rise in
                      (lowest_validation(r, tolerance) for r in group.completed) if step is not None)
    return [group.label, group.scale, f"{len(group.completed)}/{len(group.runs)}", format_spread(spreads["val_loss"]),
            format_spread(spreads["TPS"], 1, 1e3, "k"), format_spread(spreads["MFU"], 1), format_spread(spreads["Avg"], 1),
            steps or "—"]


def seeds_table(groups: list[SeedGroup], tolerance: float = RISE_TOLERANCE) -> pd.DataFrame:
    """One row per group and statistic: ``seeds.csv``."""
    rows = []
    for g in groups:
        spreads = group_spreads(g)
        lowest = [lowest_validation(r, tolerance) for r in g.completed]
        row = {"model": g.label, "scale": g.scale, "completed": len(g.completed), "runs": len(g.runs),
               "seeds": " ".join(str(r.axes.get(SEED_AXIS, "")) for r in g.completed),
               "lowest_val_steps": " ".join("" if s is None else str(s) for s, _ in lowest),
               "rises_after_lowest": sum(rise for _, rise in lowest)}
        for column, s in spreads.items():
            for stat in ("mean", "std", "lo", "hi", "n"):
                row[f"{column}_{stat}"] = None if s is None else getattr(s, stat)
        rows.append(row)
    return pd.DataFrame(rows)


def apart(groups: list[SeedGroup], spreads: list[Spread | None]) -> list[str]:
    """Pairs of groups (same scale) whose seed ranges (``spreads``, one per group) do not overlap."""
    pairs = []
    for i, (a, sa) in enumerate(zip(groups, spreads)):
        for b, sb in zip(groups[i + 1:], spreads[i + 1:]):
            if a.scale == b.scale and sa and sb and sa.n > 1 and sb.n > 1 and not sa.overlaps(sb):
                pairs.append(f"{a.label}/{b.label}")
    return pairs


def _curve(run: Run, key: str) -> pd.Series | None:
    """A run's logged ``key`` by step (the last value logged at a step)."""
    points = run.points(key)
    return points.groupby("step")[key].last() if not points.empty else None


def _largest_gap(a: Run, b: Run, key: str) -> tuple[float, float, int] | None:
    """(largest |a - b| over the steps both logged ``key`` at, |a - b| at the last such step, how many)."""
    ca, cb = _curve(a, key), _curve(b, key)
    if ca is None or cb is None:
        return None
    both = ca.index.intersection(cb.index)
    if both.empty:
        return None
    gap = (ca[both] - cb[both]).abs()
    return float(gap.max()), float(gap.iloc[-1]), len(both)


PAIRED_METRICS = (("train/loss", "training loss"), ("val/loss", "validation loss"))


def paired_lines(a: SeedGroup, b: SeedGroup) -> list[str]:
    """Two rows compared seed for seed (same seed: same initial weights and batch order, so their
    curves differ only by what tells the rows apart), against how far two seeds of one row drift
    apart: a difference between the rows smaller than the seeds' is within run-to-run noise."""
    seed = lambda r: r.axes.get(SEED_AXIS)  # noqa: E731
    runs_b = {seed(r): r for r in b.completed}
    lines = ["| compared | seeds | metric | largest gap over the run | gap at the last step | steps compared |",
             "|---|---|---|---:|---:|---:|"]
    for key, what in PAIRED_METRICS:
        for ra in a.completed:
            rb = runs_b.get(seed(ra))
            gap = rb and _largest_gap(ra, rb, key)
            if gap:
                lines.append(f"| {a.label} vs {b.label} | {seed(ra)} | {what} | {gap[0]:.4f} | {gap[1]:.4f} | {gap[2]} |")
        for g in (a, b):
            for i, r1 in enumerate(g.completed):
                for r2 in g.completed[i + 1:]:
                    gap = _largest_gap(r1, r2, key)
                    if gap:
                        lines.append(f"| {g.label}, seed vs seed | {seed(r1)} vs {seed(r2)} | {what} | {gap[0]:.4f} "
                                     f"| {gap[1]:.4f} | {gap[2]} |")
    if len(lines) == 2:
        return []
    return ["### Seed for seed", "",
            "The same seed gives both rows the same initial weights and batches: the gap between their curves is "
            "what the rows change; the gap between two seeds of one row is the run-to-run noise.", "", *lines, ""]


def seeds_markdown(groups: list[SeedGroup], title: str, tolerance: float = RISE_TOLERANCE) -> str:
    """``seeds.md``: a table per scale of mean ± spread over seeds, and what the spreads say."""
    lines = [f"# {title}: over seeds", "",
             "mean ± sample standard deviation over each row's completed seeds (min–max, n runs); TPS is "
             "train.py's median over its post-warm-up windows; MFU and zero-shot Avg in %.", ""]
    for scale in dict.fromkeys(g.scale for g in groups):
        part = [g for g in groups if g.scale == scale]
        spreads = [group_spreads(g) for g in part]
        headers = [h for h in ROW_HEADERS if h != "scale"]  # the section says the scale
        lines += [f"## {scale}", "", "| " + " | ".join(headers) + " |", "|---|---:|---|---|---|---|---|"]
        for g, s in zip(part, spreads):
            cells = row_cells(g, s, tolerance)
            lines.append("| " + " | ".join(c for h, c in zip(ROW_HEADERS, cells) if h != "scale") + " |")
        lines.append("")
        for column, what in (("val_loss", "validation loss"), ("TPS", "TPS"), ("Avg", "zero-shot Avg")):
            column_spreads = [s[column] for s in spreads]
            if any(column_spreads):
                pairs = apart(part, column_spreads)
                lines.append(f"- {what}: " + (f"the seed ranges do not overlap for {', '.join(pairs)}; every other "
                                              "pair overlaps." if pairs else "the seed ranges of every pair overlap."))
        lowest = [(r.name, *lowest_validation(r, tolerance)) for g in part for r in g.completed]
        rising = [(name, step) for name, step, rises in lowest if rises]
        if rising:
            lines.append(f"- validation loss rose after its lowest point (by more than {tolerance}) in: "
                         + ", ".join(f"{name} (lowest at step {step})" for name, step in rising) + ".")
        elif any(g.completed for g in part):
            lines.append(f"- validation loss was at its lowest (within {tolerance}) at the last evaluation of "
                         "every run: none overfits at this step count.")
        lines.append("")
        if len(part) == 2:  # a two-way comparison (experiment=kernel_parity: Triton against PyTorch)
            lines += paired_lines(*part)
    unfinished = [r for g in groups for r in g.runs if not r.completed]
    if unfinished:
        lines += ["Not completed, left out of the numbers: "
                  + ", ".join(f"`{r.name}` ({r.status})" for r in unfinished) + ".", ""]
    return "\n".join(lines)
