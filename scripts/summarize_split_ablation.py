"""Mean ± spread over seeds of a split ablation sweep (``experiment=split_ablation_gpu_small``).

    python scripts/summarize_split_ablation.py logs/sweeps/split_ablation_gpu_small [--out DIR]

Reads each job's ``summary.json`` and ``csv/metrics.csv`` (the sweep folder, or the tarball of
summaries and metrics that scripts/gpu_evidence.sh brings back, unpacked) and writes into ``--out``
(default: the sweep folder):

* ``split_ablation_summary.md``: per split, over its seeds, validation loss and tok/s as mean ±
  sample standard deviation (and min–max), MFU, the fixture zero-shot average, and the step after
  which validation loss stopped falling in each run; then one line per run;
* ``split_ablation_summary.csv``: the same per-run numbers, one row per job;
* ``split_ablation_curves.png``: validation loss (and training loss) against step, one colour per
  split, one line per seed.

A run whose last validation loss is above its lowest one by more than ``--tolerance`` has started
to overfit (or diverge); the table says at which step its loss stopped falling.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import pandas as pd

from flowhn.sweeping import collect

SPLIT_ORDER = ("no_split", "fac_split", "ae_split", "fa_split")  # the issue's table order


def metrics(job_dir: Path) -> pd.DataFrame:
    """A job's logged metrics (all CSV logger versions, a resumed run's rows once)."""
    frames = [pd.read_csv(f) for f in sorted(Path(job_dir).glob("csv/**/metrics.csv"))]
    if not frames:
        return pd.DataFrame(columns=["step"])
    return pd.concat(frames, ignore_index=True)


def curve(frame: pd.DataFrame, column: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, in step order, one value per step (the last logged)."""
    if column not in frame:
        return []
    rows = frame[["step", column]].dropna().groupby("step", as_index=False).last().sort_values("step")
    return [(int(s), float(v)) for s, v in zip(rows["step"], rows[column])]


def stops_falling(val: list[tuple[int, float]], tolerance: float) -> tuple[int | None, bool]:
    """(step of the lowest validation loss, whether the run ends above it by more than ``tolerance``)."""
    if not val:
        return None, False
    best_step, best = min(val, key=lambda sv: sv[1])
    return best_step, val[-1][1] > best + tolerance


def mean_spread(values: list[float]) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    scale = 1e3 if statistics.fmean(values) > 1e4 else 1  # tok/s in thousands
    unit = "k" if scale > 1 else ""
    digits = 1 if scale > 1 else 3
    mean = statistics.fmean(values) / scale
    if len(values) == 1:
        return f"{mean:.{digits}f}{unit} (1 run)"
    std = statistics.stdev(values) / scale
    lo, hi = min(values) / scale, max(values) / scale
    return f"{mean:.{digits}f}{unit} ± {std:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f}, n={len(values)})"


def runs(sweep_dir: Path, tolerance: float) -> pd.DataFrame:
    rows = []
    for job in collect(sweep_dir):
        s = job.summary
        frame = metrics(job.dir)
        val = curve(frame, "val/loss")
        best_step, rising = stops_falling(val, tolerance)
        # A run that failed after training (in the zero-shot step, say) has no val_loss or tps in its
        # summary; its logged curve and throughput windows still count, flagged by its status.
        windows = [v for _, v in curve(frame, "perf/tps")]
        rows.append({
            "job": job.name, "split": job.axes.get("split") or s.get("split"), "seed": job.axes.get("seed"),
            "status": job.status, "val_loss": s["val_loss"] if s.get("val_loss") is not None else (val[-1][1] if val else None),
            "best_val_loss": min((v for _, v in val), default=None), "best_val_step": best_step,
            "rises_after_best": rising, "last_step": val[-1][0] if val else None,
            "tps": s.get("tps") or (statistics.median(windows) if windows else None), "mfu": s.get("mfu"),
            "eval_avg": s.get("eval_avg"), "split_ratio": s.get("split_ratio"), "tokens": s.get("tokens"),
            "first_step_s": s.get("first_step_s"), "wall_time_s": s.get("wall_time_s"), "device": s.get("device"),
            "dir": str(job.dir),
        })  # fmt: skip
    return pd.DataFrame(rows)


def separates(groups: dict[str, list[float]]) -> list[str]:
    """Pairs of splits whose seed ranges do not overlap (a crude test with 3 seeds, said as such)."""
    names = [n for n in groups if groups[n]]
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if max(groups[a]) < min(groups[b]) or max(groups[b]) < min(groups[a]):
                pairs.append(f"{a}/{b}")
    return pairs


def markdown(df: pd.DataFrame, tolerance: float) -> str:
    ok = df[df.val_loss.notna()]
    order = [s for s in SPLIT_ORDER if s in set(df.split)] + sorted(set(df.split) - set(SPLIT_ORDER))
    lines = ["| split | runs | val loss | tok/s | MFU % | zero-shot avg (fixtures) | lowest val loss at step |",
             "|---|---:|---|---|---|---|---|"]
    evals: dict[str, list[float]] = {}
    for split in order:
        part = ok[ok.split == split]
        mfu = [100 * v for v in part.mfu.dropna()]
        evals[split] = [float(v) for v in part.eval_avg.dropna()]
        steps = ", ".join(f"{int(s)}{' (then rises)' if r else ''}" for s, r in zip(part.best_val_step, part.rises_after_best)
                          if s is not None and not pd.isna(s))
        lines.append(f"| {split} | {len(part)}/{int((df.split == split).sum())} | {mean_spread(list(part.val_loss))} | "
                     f"{mean_spread(list(part.tps))} | {mean_spread(mfu)} | {mean_spread(evals[split])} | {steps or '—'} |")
    rising = ok[ok.rises_after_best.astype(bool)]
    lines += ["", "mean ± sample standard deviation over seeds (min–max, n runs); tok/s is train.py's median over its "
              "post-warm-up windows."]
    if rising.empty:
        lines.append(f"Validation loss was still at its lowest at the last evaluation in every run "
                     f"(within {tolerance}): no split overfits at this step count.")
    else:
        lines.append("Validation loss rose after its lowest point (by more than "
                     f"{tolerance}) in: " + ", ".join(f"{j} (lowest at step {int(s)})"
                                                      for j, s in zip(rising.job, rising.best_val_step)) + ".")
    pairs = separates(evals)
    if any(evals.values()):
        lines.append("Fixture zero-shot (about 10 examples a task): " + (
            f"seed ranges do not overlap for {', '.join(pairs)}." if pairs
            else "the seed ranges of every pair of splits overlap: these fixtures do not separate the splits."))
    failed = df[df.status != "completed"]
    if not failed.empty:
        lines.append("Not completed (their logged val loss and tok/s windows are used where they exist): "
                     + ", ".join(f"{j} ({s})" for j, s in zip(failed.job, failed.status)) + ".")
    lines += ["", "| job | status | val loss | lowest (step) | tok/s | MFU % | zero-shot avg | first step s | wall s |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in df.sort_values(["split", "seed"]).itertuples():
        fmt = lambda v, f: "—" if v is None or pd.isna(v) else format(v, f)
        lines.append(f"| {r.job} | {r.status} | {fmt(r.val_loss, '.3f')} | {fmt(r.best_val_loss, '.3f')} "
                     f"({fmt(r.best_val_step, '.0f')}) | {fmt(r.tps, ',.0f')} | "
                     f"{fmt(None if r.mfu is None or pd.isna(r.mfu) else 100 * r.mfu, '.1f')} | {fmt(r.eval_avg, '.3f')} | "
                     f"{fmt(r.first_step_s, '.0f')} | {fmt(r.wall_time_s, '.0f')} |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    splits = [s for s in SPLIT_ORDER if s in set(df.split)] + sorted(set(df.split) - set(SPLIT_ORDER))
    colours = {s: f"C{i}" for i, s in enumerate(splits)}
    for r in df.itertuples():
        frame = metrics(Path(r.dir))
        for ax, column in zip(axes, ("train/loss", "val/loss")):
            points = curve(frame, column)
            if points:
                label = r.split if r.seed in (None, "0", 0) or pd.isna(r.seed) else None
                ax.plot(*zip(*points), color=colours[r.split], alpha=0.8, lw=1.2, label=label,
                        marker="o" if column == "val/loss" else None, ms=3)
    for ax, title in zip(axes, ("training loss", "validation loss")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(title="split (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where the files go (default: the sweep folder)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="val loss rise that counts as overfitting")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"summarize_split_ablation: {args.sweep_dir}: no such folder", file=sys.stderr)
        return 2
    df = runs(args.sweep_dir, args.tolerance)
    if df.empty:
        print(f"summarize_split_ablation: {args.sweep_dir}: no jobs (no job.json or summary.json in its subfolders)",
              file=sys.stderr)
        return 2
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(df, args.tolerance)
    (out / "split_ablation_summary.md").write_text(text + "\n")
    df.drop(columns=["dir"]).to_csv(out / "split_ablation_summary.csv", index=False)
    plot(df, out / "split_ablation_curves.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
