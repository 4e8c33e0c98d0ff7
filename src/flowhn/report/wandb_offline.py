"""Read an offline W&B run (``<run_dir>/wandb/offline-run-*/run-<id>.wandb``) without a server.

The file is what ``wandb sync`` uploads: W&B's protobuf ``Record`` messages (from the SDK,
``wandb.proto.wandb_internal_pb2``) in a LevelDB-style log: a 7-byte header (``:W&B``, magic
0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte header (CRC-32 of type byte
and data, length, type: full, or first/middle/last piece of a record cut at a block end). The SDK
reads these files in its Go core only, so this small reader decodes them with the SDK's messages.
The report shows each run's W&B group and tags from here, and the tests check a sweep's grouping.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")
_RECORD_HEADER = struct.Struct("<IHB")
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run file says about its run."""

    path: Path
    run_id: str
    project: str
    name: str
    group: str
    job_type: str
    tags: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """The folder ``wandb sync`` takes (``.../wandb/offline-run-<time>-<id>``)."""
        return self.path.parent


def _payloads(data: bytes, path: Path) -> Iterator[bytes]:
    """The records of a log file; stops at a torn tail (a run still writing, or killed mid-write)."""
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0) if len(data) >= _FILE_HEADER.size else (b"", 0, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos, pieces = _FILE_HEADER.size, []
    while pos + _RECORD_HEADER.size <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD_HEADER.size:  # too little left in the block: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        pos += _RECORD_HEADER.size
        chunk = data[pos : pos + length]
        pos += length
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            return
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pieces = [chunk]
        elif kind == _MIDDLE:
            pieces.append(chunk)
        elif kind == _LAST:
            yield b"".join([*pieces, chunk])
            pieces = []


def _items(items: Any) -> dict[str, Any]:
    """A config or history message's items as ``{dotted key: value}``."""
    out = {}
    for item in items:
        key = ".".join(item.nested_key) if item.nested_key else item.key
        try:
            out[key] = json.loads(item.value_json)
        except ValueError:
            out[key] = item.value_json
    return out


def read_offline_run(path: Path) -> OfflineRun:
    """The run record, config updates and history rows of one ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    run: OfflineRun | None = None
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for payload in _payloads(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = OfflineRun(path, r.run_id, r.project, r.display_name, r.run_group, r.job_type, list(r.tags))
            config.update(_items(r.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
    if run is None:
        raise ValueError(f"{path}: no run record")
    run.config, run.history = config, history
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run a job folder holds (a resumed job opens a new one per attempt)."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    return [read_offline_run(f) for f in files]
