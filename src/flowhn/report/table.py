"""Table 1 of the paper, filled with our runs: one row per job, the paper's numbers beside it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from flowhn.report.runs import Run, order_key
from flowhn.sweeping import PAPER_TASKS
from flowhn.sweeping.paper import table1
from flowhn.sweeping.results import eval_scores

PAPER_COLUMNS = ("paper_TPS", "paper_MFU", "paper_Avg")


def _pct(x: Any) -> float | None:
    return None if x is None else 100.0 * float(x)


def table(runs: Iterable[Run]) -> pd.DataFrame:
    """Table 1's columns for every job, sorted by scale, then the paper's row order."""
    paper = table1()
    rows = []
    for run in sorted(runs, key=order_key):
        s = run.summary
        evals = eval_scores(s)
        accs = {task: _pct(evals.get(task, {}).get("acc")) for task in PAPER_TASKS}
        avg = s.get("eval_avg")
        if avg is None and all(v is not None for v in accs.values()):
            avg = sum(accs.values()) / 100.0 / len(accs)
        ref = paper.get((run.scale, run.label), {})
        rows.append({
            "model": run.label, "scale": run.scale, "status": run.status,
            "TPS": s.get("tps"), "MFU": _pct(s.get("mfu")), **accs, "Avg": _pct(avg),
            "val_loss": s.get("val_loss"),
            "paper_TPS": ref.get("TPS"), "paper_MFU": ref.get("MFU"), "paper_Avg": ref.get("Avg"),
            "job": run.name, "error": s.get("error"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def fmt(value: Any, column: str) -> str:
    """A table cell as printed: thousands separators for TPS, 4 decimals for losses, else 2."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in ("TPS", "paper_TPS"):
        return f"{value:,.0f}"
    if column == "val_loss":
        return f"{value:.4f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(df: pd.DataFrame, title: str) -> str:
    """Table 1 as markdown: one table per scale; jobs that did not complete listed below."""
    shown = ["model", "TPS", "MFU", *PAPER_TASKS, "Avg", "val_loss"]
    paper_cols = [c for c in PAPER_COLUMNS if df[c].notna().any()] if len(df) else []
    lines = [f"# {title}", "", "TPS in tokens/s, MFU and accuracies in %; paper_* columns are the "
             "paper's Table 1 for the same row and scale.", ""]  # fmt: skip
    done = df[df["status"] == "completed"] if len(df) else df
    for scale, part in done.groupby("scale", sort=False):
        cols = shown + [c for c in paper_cols if part[c].notna().any()]
        lines += [f"## {scale}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, row in part.iterrows():
            lines.append("| " + " | ".join(fmt(row[c], c) for c in cols) + " |")
        lines.append("")
    unfinished = df[df["status"] != "completed"] if len(df) else df
    if len(unfinished):
        lines += ["## Not completed", ""]
        lines += [f"- `{r.job}` ({r.status}): {r.error if isinstance(r.error, str) and r.error else 'no error recorded'}"
                  for r in unfinished.itertuples()]  # a blank error is NaN in the frame
        lines.append("")
    return "\n".join(lines)
