"""Gather every job's ``summary.json`` of a sweep into ``<sweep_dir>/results.csv``.

train.py writes the summary; when a job dies without saying why (killed, out of memory,
crashed before its first line), :func:`finish_job` writes the verdict into the summary
itself, with the telling line of ``job.log`` as the error, so the summary stays the one
place a job's outcome is read from.
"""

from __future__ import annotations

import csv
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowhn.sweeping.jobs import JOB_FILE, LOG_FILE, SUMMARY_FILE, read_json, write_json

# The paper's six zero-shot tasks by their Table 1 column names, in its order.
PAPER_TASKS = ("arc_e", "arc_c", "wino", "piqa", "hella", "boolq")
_COLUMN_OF = {"arc_easy": "arc_e", "arc_challenge": "arc_c", "winogrande": "wino", "hellaswag": "hella"}

SUMMARY_COLUMNS = (
    "status", "error", "arch", "scale", "split", "fusion", "params", "flops_per_token",
    "split_ratio", "tps", "tps_per_device", "mfu", "step_time_ms", "max_mem_gib",
    "val_loss", "val_ppl", "val_token_acc",
)  # fmt: skip
TAIL_COLUMNS = ("steps", "tokens", "device", "num_devices", "wall_time_s", "config_hash", "run_dir")

# A line that names what went wrong: "ValueError: ...", "torch.OutOfMemoryError: ...", "Killed",
# or train.py's one-line "config error: <key>: ...".
_HEADLINE = re.compile(
    r"^(?:[\w.]+(?:Error|Exception|Interrupt|Exit)\b.*|config error:.*|.*out of memory.*|Killed.*"
    r"|Segmentation fault.*)$",
    re.IGNORECASE,
)
# Errors that only report another process's failure.
_WRAPPER = re.compile(r"ChildFailedError")
_ERROR_CHARS = 500


def task_column(task: str) -> str:
    """Column of an eval task: lm-eval names and their offline ``fixture_`` stand-ins map to the
    paper's short names (arc_easy, fixture_arc_easy -> arc_e); other tasks keep their name."""
    base = task.removeprefix("fixture_")
    return _COLUMN_OF.get(base, base)


def eval_scores(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A summary's ``eval`` dict keyed by column name."""
    return {task_column(t): (v or {}) for t, v in (summary.get("eval") or {}).items()}


def failure_headline(log_text: str, tail_lines: int = 3) -> str:
    """One line saying why a job failed: its last exception line (torchrun's own ChildFailedError
    only when the worker's is missing), else the log's last lines."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    found = [ln for ln in lines if _HEADLINE.match(ln)]
    causes = [ln for ln in found if not _WRAPPER.search(ln)]
    if found:
        return (causes or found)[-1][:_ERROR_CHARS]
    return " | ".join(lines[-tail_lines:])[-_ERROR_CHARS:] or "no output"


def _exit_reason(returncode: int | None) -> str:
    if not returncode:
        return "exited without a completed summary.json"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exit code {returncode}"


def finish_job(job_dir: Path, returncode: int | None, note: str | None = None) -> dict[str, Any]:
    """Settle a finished process's outcome into its summary and return that summary.

    ``returncode`` None means the launcher stopped the job (``note`` says why). A summary that
    says "stopped" (SIGTERM, checkpoint saved) stays stopped whatever the exit code.
    """
    job_dir = Path(job_dir)
    summary = read_json(job_dir / SUMMARY_FILE) or {}
    if returncode == 0 and summary.get("status") == "completed":
        return summary
    if summary.get("status") == "stopped":
        # train.py stopped on SIGTERM and saved last.ckpt: not completed, not failed; the next
        # launch resumes it.
        if note:
            summary["error"] = f"{note} (see {LOG_FILE}); {summary.get('error') or 'stopped'}"
        summary["run_dir"] = str(job_dir)
        write_json(job_dir / SUMMARY_FILE, summary)
        return summary
    if note:
        error = f"{note} (see {LOG_FILE})"
    elif summary.get("status") == "failed" and summary.get("error"):
        error = summary["error"]
    else:
        log_path = job_dir / LOG_FILE
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        reason = _exit_reason(returncode)
        error = f"{failure_headline(log_text)} ({reason}; see {LOG_FILE})"
    summary.update(status="failed", error=error, run_dir=str(job_dir))
    write_json(job_dir / SUMMARY_FILE, summary)
    return summary


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: its direct subfolders that a launcher or train.py wrote."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    return sorted(
        d for d in sweep_dir.iterdir()
        if d.is_dir() and ((d / JOB_FILE).exists() or (d / SUMMARY_FILE).exists())
    )  # fmt: skip


@dataclass
class JobResult:
    """What a sweep knows about one job: its folder, swept values and summary."""

    dir: Path
    axes: dict[str, str]
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def status(self) -> str:
        return self.summary.get("status") or "missing"

    @property
    def tasks(self) -> list[str]:
        return list(eval_scores(self.summary))

    def row(self, tasks: Iterable[str]) -> dict[str, Any]:
        """Flat results row: axes, the summary's scalars, then each task's acc and acc_norm."""
        s = self.summary
        evals = eval_scores(s)
        tasks = list(tasks)
        row: dict[str, Any] = {"job": self.name, **self.axes}
        row.update({k: s.get(k) for k in SUMMARY_COLUMNS if k not in self.axes})
        row["status"] = self.status
        row.update({t: (evals.get(t) or {}).get("acc") for t in tasks})
        row["eval_avg"] = s.get("eval_avg")
        row.update({f"{t}_acc_norm": (evals.get(t) or {}).get("acc_norm") for t in tasks})
        row.update({k: s.get(k) for k in TAIL_COLUMNS})
        row["run_dir"] = row["run_dir"] or str(self.dir)
        return row


def load_job(job_dir: Path) -> JobResult:
    job_dir = Path(job_dir)
    record = read_json(job_dir / JOB_FILE) or {}
    summary = read_json(job_dir / SUMMARY_FILE)
    if summary is None:
        # Launched but never reached train.py's first summary (or not launched yet).
        summary = {"status": record.get("status") or "missing", "error": record.get("error")}
    return JobResult(job_dir, dict(record.get("axes") or {}), summary)


def collect(sweep_dir: Path) -> list[JobResult]:
    return [load_job(d) for d in job_dirs(sweep_dir)]


def task_order(results: Iterable[JobResult]) -> list[str]:
    """The paper's six tasks (columns even when blank), then any other task a job ran."""
    seen = {t for r in results for t in r.tasks}
    return [*PAPER_TASKS, *sorted(seen - set(PAPER_TASKS))]


def write_results(sweep_dir: Path, results: list[JobResult] | None = None) -> Path:
    """Write ``<sweep_dir>/results.csv``: one row per job, blank where a value is missing."""
    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir) if results is None else results
    tasks = task_order(results)
    rows = [r.row(tasks) for r in results]
    axes = list(dict.fromkeys(k for r in results for k in r.axes))
    columns = list(dict.fromkeys(["job", *axes, *(rows[0] if rows else [])]))
    if not rows:
        columns += [*SUMMARY_COLUMNS, *tasks, "eval_avg", *TAIL_COLUMNS]
    path = sweep_dir / "results.csv"
    tmp = path.with_name(".results.csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    tmp.replace(path)
    return path
