"""Checkpoints are read as data, never run as code.

A ``.ckpt`` is a pickle: loaded with ``weights_only=False`` it may call any function its author
chose (a shared checkpoint becomes a shared program). Every checkpoint this platform writes holds
only tensors and plain Python values (``flowhn.training.module`` converts the one exception, numpy's
RNG state), so every load goes through :func:`load_checkpoint`, which uses torch's restricted
unpickler and needs no allow-list.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """The file asks the unpickler for something other than tensors and plain values."""


_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s+Please use|\n|$)")


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that would run code raises
    :class:`UnsafeCheckpointError` with a one-line reason (callers prefix the key and file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise
    # Raised outside the except block: torch's message runs to several lines and suggests
    # weights_only=False, and callers that report an exception's chain would repeat it.
    match = _REASON.search(text)
    reason = match.group(1).strip() if match else "it holds objects other than tensors and plain values"
    raise UnsafeCheckpointError(
        f"refused to unpickle it: {reason} (checkpoints load as tensors and plain values only, "
        "torch.load weights_only=True; one that needs more would run code on load)"
    )
