"""Table-1 style report of a sweep, with figures.

    python -m flowhn.report <sweep_dir>                  # from the local job folders
    python -m flowhn.report <sweep_dir> --wandb-group G  # from a W&B group (needs W&B online)

Writes ``<sweep_dir>/report/``:

* ``table.md`` / ``table.csv``: one row per job (model/split, scale, TPS, MFU %, arc_e, arc_c,
  wino, piqa, hella, boolq, Avg in %, val_loss), the paper's TPS/MFU/Avg beside rows it printed;
* ``tps_mfu.png``: TPS bars and MFU line (twin axis) per scale, as in the paper's figure;
* ``perf_curves.png``: TPS and MFU over training steps, one line per job;
* ``loss_curves.png``: training and validation loss over steps, one line per job.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flowhn.errors import ConfigError
from flowhn.sweeping import PAPER_TASKS, collect
from flowhn.sweeping.results import eval_scores
from flowhn.sweeping.paper import table1

ARCH_LABELS = {"llama": "LLaMA", "mamba": "Mamba-1", "mamba2": "Mamba-2", "jamba": "Jamba",
               "shm": "SHM", "hymba": "Hymba"}  # fmt: skip
SPLIT_LABELS = {"no_split": "No_Split", "ae_split": "AE_Split", "fa_split": "FA_Split", "fac_split": "FAC_Split"}
ROW_ORDER = [*ARCH_LABELS.values(), *SPLIT_LABELS.values()]
SCALE_ORDER = ["tiny", "135m", "350m", "1b"]
# Axes that the row label already says.
_LABEL_AXES = {"model", "scale", "split"}


@dataclass
class Run:
    """One job as the report sees it, wherever it was read from."""

    name: str
    axes: dict[str, str]
    summary: dict[str, Any]
    metrics: pd.DataFrame  # a "step" column and one column per logged metric

    @property
    def completed(self) -> bool:
        return self.summary.get("status") == "completed"

    @property
    def arch(self) -> str:
        return str(self.summary.get("arch") or self.axes.get("model") or "?")

    @property
    def scale(self) -> str:
        return str(self.summary.get("scale") or self.axes.get("scale") or "?")

    @property
    def label(self) -> str:
        """Paper-style row name (FlowHN rows are named by their split), plus any other axes."""
        split = self.summary.get("split") or self.axes.get("split")
        if self.arch == "flowhn":
            base = SPLIT_LABELS.get(str(split), f"FlowHN {split}")
        else:
            base = ARCH_LABELS.get(self.arch, self.arch)
        extra = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.axes.items() if k not in _LABEL_AXES]
        return f"{base} ({', '.join(extra)})" if extra else base

    @property
    def base_label(self) -> str:
        return self.label.split(" (", 1)[0]


# -- reading ------------------------------------------------------------------------------


def read_metrics(job_dir: Path) -> pd.DataFrame:
    """The job's CSVLogger metrics (all versions, a resumed run's included), one row per step."""
    frames = [pd.read_csv(f) for f in sorted(Path(job_dir).glob("csv/**/metrics.csv"))]
    frames = [f for f in frames if "step" in f.columns and not f.empty]
    if not frames:
        return pd.DataFrame({"step": []})
    # Lightning writes one row per log call with blanks elsewhere; collapse to one row per step.
    return pd.concat(frames).groupby("step", as_index=False).last()


def local_runs(sweep_dir: Path) -> list[Run]:
    results = collect(sweep_dir)
    if not results:
        raise ConfigError(f"{sweep_dir}: no job folders (job.json or summary.json) found")
    return [Run(r.name, r.axes, r.summary, read_metrics(r.dir)) for r in results]


def wandb_runs(group: str, project: str, entity: str | None) -> list[Run]:
    """The runs of a W&B group, read through the public API (needs network and an API key)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        raise ConfigError(
            f"--wandb-group: WANDB_MODE={os.environ['WANDB_MODE']} is set, and the W&B API needs to be "
            "online; leave out --wandb-group to report from the local job folders"
        )
    import wandb

    try:
        api = wandb.Api(timeout=30)
        found = list(api.runs(f"{entity}/{project}" if entity else project, filters={"group": group}))
    except Exception as exc:  # no API key, no network, unknown project: all end the report here
        raise ConfigError(f"--wandb-group: cannot read W&B group {group!r} of {project!r}: {exc}") from exc
    if not found:
        raise ConfigError(f"--wandb-group: W&B group {group!r} of project {project!r} has no runs")
    return [_wandb_run(run) for run in found]


# summary.json keys and the logged metric each falls back to when a run's summary lacks it.
_WANDB_KEYS = {"val_loss": "val/loss", "tps": "perf/tps", "mfu": "perf/mfu", "eval_avg": "eval/avg"}


def _wandb_run(run: Any) -> Run:
    summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
    summary["status"] = "completed" if run.state == "finished" else run.state
    evals: dict[str, dict[str, float]] = {}
    for key, value in summary.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            evals.setdefault(parts[1], {})[parts[2]] = value
    summary.setdefault("eval", evals)
    for key, logged in _WANDB_KEYS.items():
        summary.setdefault(key, summary.get(logged))
    # meta.name is "<model>-<scale>-<split>-<fusion>"; tags are the swept "key=value" pairs.
    model, scale, split = (run.name.split("-") + [None] * 3)[:3]
    summary.setdefault("arch", model)
    summary.setdefault("scale", scale)
    summary.setdefault("split", split)
    axes = dict(tag.split("=", 1) for tag in run.tags if "=" in tag)
    history = run.history(samples=100_000, pandas=True)
    step = "trainer/global_step" if "trainer/global_step" in history else "_step"
    metrics = history.rename(columns={step: "step"}) if not history.empty else pd.DataFrame({"step": []})
    return Run(run.name, axes, summary, metrics)


# -- the table ----------------------------------------------------------------------------


def _pct(x: Any) -> float | None:
    return None if x is None else 100.0 * float(x)


def _order(run: Run) -> tuple:
    scale = SCALE_ORDER.index(run.scale) if run.scale in SCALE_ORDER else len(SCALE_ORDER)
    row = ROW_ORDER.index(run.base_label) if run.base_label in ROW_ORDER else len(ROW_ORDER)
    extras = [(0, float(v), "") if _is_number(v) else (1, 0.0, str(v)) for k, v in sorted(run.axes.items())
              if k not in _LABEL_AXES]  # fmt: skip
    return scale, run.scale, row, run.base_label, extras, run.label


def _is_number(text: Any) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def table(runs: Iterable[Run]) -> pd.DataFrame:
    """Table 1's columns for every job, sorted by scale, then the paper's row order."""
    paper = table1()
    rows = []
    for run in sorted(runs, key=_order):
        s = run.summary
        evals = eval_scores(s)
        accs = {task: _pct(evals.get(task, {}).get("acc")) for task in PAPER_TASKS}
        avg = s.get("eval_avg")
        if avg is None and all(v is not None for v in accs.values()):
            avg = sum(accs.values()) / 100.0 / len(accs)
        ref = paper.get((run.scale, run.label), {})
        rows.append({
            "model": run.label, "scale": run.scale, "status": run.summary.get("status"),
            "TPS": s.get("tps"), "MFU": _pct(s.get("mfu")), **accs, "Avg": _pct(avg),
            "val_loss": s.get("val_loss"),
            "paper_TPS": ref.get("TPS"), "paper_MFU": ref.get("MFU"), "paper_Avg": ref.get("Avg"),
            "job": run.name, "error": s.get("error"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _fmt(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in ("TPS", "paper_TPS"):
        return f"{value:,.0f}"
    if column == "val_loss":
        return f"{value:.4f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(df: pd.DataFrame, title: str) -> str:
    """Table 1 as markdown: one table per scale; failed jobs listed below with their errors."""
    shown = ["model", "TPS", "MFU", *PAPER_TASKS, "Avg", "val_loss"]
    paper_cols = [c for c in ("paper_TPS", "paper_MFU", "paper_Avg") if df[c].notna().any()] if len(df) else []
    lines = [f"# {title}", "", "TPS in tokens/s, MFU and accuracies in %; paper_* columns are the "
             "paper's Table 1 for the same row and scale.", ""]  # fmt: skip
    done = df[df["status"] == "completed"] if len(df) else df
    for scale, part in done.groupby("scale", sort=False):
        cols = shown + [c for c in paper_cols if part[c].notna().any()]
        lines += [f"## {scale}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, row in part.iterrows():
            lines.append("| " + " | ".join(_fmt(row[c], c) for c in cols) + " |")
        lines.append("")
    failed = df[df["status"] != "completed"] if len(df) else df
    if len(failed):
        lines += ["## Not completed", ""]
        lines += [f"- `{r.job}` ({r.status}): {r.error or 'no error recorded'}" for r in failed.itertuples()]
        lines.append("")
    return "\n".join(lines)


# -- figures ------------------------------------------------------------------------------


def plot_tps_mfu(df: pd.DataFrame, path: Path) -> None:
    """Per scale: TPS bars for each model, MFU as a line on a second axis (as in the paper)."""
    import matplotlib.pyplot as plt

    done = df[df["status"] == "completed"]
    scales = list(dict.fromkeys(done["scale"])) or ["(no completed jobs)"]
    fig, axes = plt.subplots(1, len(scales), figsize=(max(6, 1.0 * len(done) + 3 * len(scales)), 4.5), squeeze=False)
    for ax, scale in zip(axes[0], scales):
        part = done[done["scale"] == scale]
        x = range(len(part))
        ax.bar(x, part["TPS"].astype(float).fillna(0.0), color="tab:blue", label="TPS")
        ax.set_xticks(list(x), part["model"], rotation=45, ha="right", fontsize=8)
        ax.set_title(str(scale))
        ax.set_ylabel("TPS (tokens/s)")
        mfu = part["MFU"].astype(float)
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
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (metric, title, factor) in zip(axes[0], panels):
        drawn = 0
        for run in sorted(runs, key=_order):
            if metric not in run.metrics:
                continue
            points = run.metrics[["step", metric]].dropna()
            if points.empty:
                continue
            ax.plot(points["step"], points[metric] * factor, marker="." if len(points) < 30 else None,
                    label=f"{run.label} [{run.scale}]")  # fmt: skip
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


def write_report(runs: list[Run], out_dir: Path, title: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    df = table(runs)
    paths = {
        "table_csv": out_dir / "table.csv",
        "table_md": out_dir / "table.md",
        "tps_mfu": out_dir / "tps_mfu.png",
        "perf_curves": out_dir / "perf_curves.png",
        "loss_curves": out_dir / "loss_curves.png",
    }
    df.to_csv(paths["table_csv"], index=False)
    paths["table_md"].write_text(markdown(df, title))
    plot_tps_mfu(df, paths["tps_mfu"])
    plot_curves(runs, [("perf/tps", "TPS (tokens/s)", 1.0), ("perf/mfu", "MFU (%)", 100.0)], paths["perf_curves"])
    plot_curves(runs, [("train/loss", "training loss", 1.0), ("val/loss", "validation loss", 1.0)],
                paths["loss_curves"])  # fmt: skip
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowhn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder (its report/ goes there)")
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead of the job folders")
    parser.add_argument("--wandb-project", default="flowhn-lab", help="W&B project of --wandb-group")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity (default: your default entity)")
    args = parser.parse_args(argv)
    try:
        if args.wandb_group:
            runs = wandb_runs(args.wandb_group, args.wandb_project, args.wandb_entity)
        else:
            if not args.sweep_dir.is_dir():
                raise ConfigError(f"{args.sweep_dir}: no such sweep folder")
            runs = local_runs(args.sweep_dir)
    except ConfigError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    title = args.wandb_group or args.sweep_dir.resolve().name
    paths = write_report(runs, args.sweep_dir / "report", title)
    done = sum(r.completed for r in runs)
    print(f"Report of {len(runs)} jobs ({done} completed): {paths['table_md'].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
