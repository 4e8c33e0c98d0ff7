"""Who a sweep job is, where it lives, and whether it still has to run.

A job's folder is named after its swept axes only (``scale=135m,split=fac_split``), so the
same command always lands in the same folder and names stay readable. What the job computes
is pinned by its *identity*: all its overrides, sorted, minus those that only steer launching
or logging. The launcher records the identity in ``job.json`` before starting the job; a later
launch skips the job when its summary says completed and the identities match, re-runs it when
it failed or never finished (train.py resumes from ``checkpoints/last.ckpt``), and refuses to
reuse a folder whose finished or checkpointed work came from different overrides.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
LOG_FILE = "job.log"
LAST_CKPT = Path("checkpoints") / "last.ckpt"

# Top-level keys that change where a job writes or how it is logged, never what it computes.
LAUNCH_ONLY_ROOTS = frozenset({"hydra", "meta", "ckpt_path", "paths", "logger"})

_MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def override_key(override: str) -> str:
    """The config key an override string sets: ``++a.b@pkg=1`` -> ``a.b``."""
    head = override.split("=", 1)[0].lstrip("+~")
    return head.split("@", 1)[0]


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def is_launch_only(key: str) -> bool:
    root = re.split(r"[./]", key, maxsplit=1)[0]
    return root in LAUNCH_ONLY_ROOTS


def identity(overrides: Iterable[str]) -> list[str]:
    """The overrides that decide what a job computes, in a canonical order."""
    return sorted({o for o in overrides if not is_launch_only(override_key(o))})


def job_name(axes: Mapping[str, str], overrides: Iterable[str] = ()) -> str:
    """Folder name of a job: its axis values, or all its identity overrides when nothing is swept.

    Long names are cut and end in a hash of the full name, so they stay unique and legal.
    """
    parts = [f"{k}={v}" for k, v in sorted(axes.items())] or identity(overrides)
    name = _UNSAFE.sub("_", ",".join(parts).replace("/", "_")) or "default"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}-{digest}"
    return name


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing or half-written."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write through a temporary file so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def update_record(job_dir: Path, **fields: Any) -> None:
    """Add or change fields of a job's ``job.json``, keeping the rest."""
    path = Path(job_dir) / JOB_FILE
    write_json(path, {**(read_json(path) or {}), **fields})


@dataclass(frozen=True)
class Decision:
    action: str  # "run" | "resume" | "skip" | "conflict"
    reason: str


def decide(job_dir: Path, job_identity: list[str]) -> Decision:
    """What to do with a job whose folder may hold an earlier attempt."""
    job_dir = Path(job_dir)
    record = read_json(job_dir / JOB_FILE)
    summary = read_json(job_dir / SUMMARY_FILE) or {}
    completed = summary.get("status") == "completed"
    has_ckpt = (job_dir / LAST_CKPT).exists()
    if record is None:
        if completed or has_ckpt:
            return Decision("conflict", f"{job_dir} holds a run this launcher did not record")
        return Decision("run", "new")
    if record.get("identity") != job_identity:
        if completed or has_ckpt:
            old = sorted(set(record.get("identity") or []) ^ set(job_identity))
            return Decision(
                "conflict",
                f"{job_dir} was run with other overrides (differing: {', '.join(old)})",
            )
        return Decision("run", "earlier attempt had other overrides and left nothing to keep")
    if completed:
        return Decision("skip", "completed")
    if has_ckpt:
        return Decision("resume", f"{summary.get('status') or 'unfinished'}, resuming from last.ckpt")
    return Decision("run", summary.get("status") or "unfinished")
