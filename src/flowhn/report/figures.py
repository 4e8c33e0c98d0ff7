"""The report's PNG figures (matplotlib, for papers and READMEs; the HTML has the interactive ones)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowhn.report.runs import Run, order_key


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tps_mfu(df: pd.DataFrame, path: Path) -> None:
    """Per scale: TPS bars for each model, MFU as a line on a second axis (as in the paper)."""
    plt = _pyplot()
    done = df[df["status"] == "completed"] if len(df) else df
    scales = list(dict.fromkeys(done["scale"])) if len(done) else ["(no completed jobs)"]
    fig, axes = plt.subplots(1, len(scales), figsize=(max(6, 1.0 * len(done) + 3 * len(scales)), 4.5), squeeze=False)
    for ax, scale in zip(axes[0], scales):
        part = done[done["scale"] == scale] if len(done) else done
        x = range(len(part))
        ax.bar(x, part["TPS"].astype(float).fillna(0.0) if len(part) else [], color="tab:blue", label="TPS")
        ax.set_xticks(list(x), list(part["model"]) if len(part) else [], rotation=45, ha="right", fontsize=8)
        ax.set_title(str(scale))
        ax.set_ylabel("TPS (tokens/s)")
        mfu = part["MFU"].astype(float) if len(part) else pd.Series([], dtype=float)
        if mfu.isna().all():
            ax.set_title(f"{scale} (no MFU: peak FLOP/s unknown)")
        else:
            twin = ax.twinx()
            twin.plot(list(x), mfu, color="tab:red", marker="o", label="MFU")
            twin.set_ylabel("MFU (%)")
            twin.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(runs: list[Run], panels: list[tuple[str, str, float]], path: Path) -> None:
    """One panel per (metric, title, scale factor); one line per run that logged the metric."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (metric, title, factor) in zip(axes[0], panels):
        drawn = 0
        for run in sorted(runs, key=order_key):
            points = run.points(metric)
            if points.empty:
                continue
            status = "" if run.completed else f" ({run.status})"
            ax.plot(points["step"], points[metric] * factor, marker="." if len(points) < 30 else None,
                    label=f"{run.label} [{run.scale}]{status}")  # fmt: skip
            drawn += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {metric} logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seqlen(ladder: pd.DataFrame, path: Path, title: str) -> None:
    """tok/s against sequence length, one line per model, log2 x axis; OOM lengths marked with x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for model, rows in ladder.groupby("model", sort=False):
        ok = rows[(rows["status"] == "ok") & rows["tok_s"].notna()]
        (line,) = ax.plot(ok["seq_len"], ok["tok_s"], marker="o", label=model)
        failed = rows[rows["status"] != "ok"]
        if len(failed) and len(ok):
            ax.plot(failed["seq_len"], [ok["tok_s"].min()] * len(failed), "x", color=line.get_color(), ms=9)
    ax.set_xscale("log", base=2)
    lengths = sorted(int(t) for t in ladder["seq_len"].unique())
    ax.set_xticks(lengths, [f"{t:,}" for t in lengths])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(f"{title} (x: not measured, e.g. OOM)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seed_curves(groups, path: Path) -> None:
    """Training and validation loss against step: one colour per seed group (``report.seeds``), one
    line per seed. The y range leaves out each curve's first point (an untrained model's loss would
    flatten the rest), and says so when that cut one off."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (metric, title) in zip(axes, (("train/loss", "training loss"), ("val/loss", "validation loss"))):
        later: list[float] = []
        first: list[float] = []
        for colour, group in enumerate(groups):
            for i, run in enumerate(group.runs):
                points = run.points(metric)
                if points.empty:
                    continue
                seed = run.axes.get("seed", "?")
                status = "" if run.completed else f" ({run.status})"
                ax.plot(points["step"], points[metric], color=f"C{colour % 10}", alpha=0.85, lw=1.2,
                        marker="o" if metric == "val/loss" else None, ms=3,
                        label=f"{group.label} [{group.scale}]" if i == 0 else None)
                if status or len(points) == 1:
                    ax.annotate(f"seed {seed}{status}", (points["step"].iloc[-1], points[metric].iloc[-1]), fontsize=7)
                first.append(float(points[metric].iloc[0]))
                later.extend(points[metric].iloc[1:].astype(float))
        if later:
            lo, hi = min(later + first), max(later)
            pad = 0.05 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
            if max(first) > hi + pad:
                title += " (first points above the range cut)"
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    labelled = [ax for ax in axes[::-1] if ax.get_legend_handles_labels()[0]]  # validation's, else training's
    if labelled:
        labelled[0].legend(title="one colour per row, one line per seed", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
