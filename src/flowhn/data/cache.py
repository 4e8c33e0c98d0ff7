"""Build-once cache entries that are safe with several processes (DDP ranks, parallel sweeps)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FLOWHN_CACHE/data``, else ``~/.cache/flowhn/data``."""
    root = os.environ.get("FLOWHN_CACHE")
    return Path(root) / "data" if root else Path.home() / ".cache" / "flowhn" / "data"


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Make ``target`` (a file or a folder) with ``build(tmp)`` unless it already exists.

    A file lock makes the other processes wait instead of building it again, and the rename from
    a temporary name means nobody ever reads a half-written entry, even where the lock is not
    honoured (some network file systems).
    """
    from filelock import FileLock

    target = Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
    return target
