"""Checkpoint files that are either the old one or the complete new one, never half of either.

Lightning's ``TorchCheckpointIO`` serialises into memory and commits through an fsspec
transaction. For local paths fsspec writes the bytes to ``tempfile.mkstemp()`` (the system temp
dir, not the checkpoint's directory) and commits with ``shutil.move``. When ``/tmp`` and the run
dir are on different filesystems (node-local /tmp, shared run dirs: the usual cluster layout) the
move is a copy into the final name, so a kill during that copy leaves a truncated ``last.ckpt``;
it also needs room for every checkpoint on ``/tmp`` and holds the whole file in memory twice.

Here local files are streamed to a temporary file next to the target, fsynced, and renamed over it
with ``os.replace`` (atomic within one filesystem), then the directory entry is fsynced. Remote
URLs (s3://, gs://, ...) keep Lightning's path, whose object stores commit whole objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` such that readers (and crashes) see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, per-process name in the same directory: same filesystem, so the rename is atomic,
    # and two ranks or jobs writing the same checkpoint never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable (after a power loss the name points at the new data).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and all of Windows) cannot fsync a directory; the rename stands
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))
