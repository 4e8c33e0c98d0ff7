"""Where documents come from: local text / JSON lines / parquet files, or a hub dataset.

Every source is read through one function, :func:`open_stream`, which is
``datasets.load_dataset(..., streaming=True)``: a hub name such as ``DKYoon/SlimPajama-6B`` and a
local file use the same call, so the local files in the tests exercise the hub code path.

Local files are checked up front (:func:`resolve_sources`) so that a missing, empty or corrupt
file fails with one line naming it before any tokenizer training or tokenization starts.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import hashlib
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from flowhn.errors import ConfigError, error_line

EMBEDDED_CORPUS = Path(__file__).parent / "corpus" / "austen.jsonl.gz"

FORMATS = ("auto", "text", "json", "parquet", "hub")
SAMPLE_BY = ("document", "paragraph", "line")
_EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet",
}
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_GLOB_CHARS = set("*?[")
# Enough to see that a text file decodes and that a JSON file starts like one.
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class SourceSpec:
    """Resolved ``data.sources``: local files with their formats, or one hub dataset."""

    files: tuple[tuple[str, str], ...]  # (path, format) in reading order
    hub_name: str | None
    text_column: str
    text_sample_by: str

    @property
    def is_hub(self) -> bool:
        return self.hub_name is not None


def open_stream(path: str, split: str = "train", **kwargs):
    """The one reader of every source: ``datasets.load_dataset(path, split=split, streaming=True)``.

    ``path`` is a builder name (``"json"``, ``"text"``, ``"parquet"`` with ``data_files``), a hub
    dataset name, or a local dataset folder.
    """
    import datasets

    return datasets.load_dataset(path, split=split, streaming=True, **kwargs)


def resolve_sources(sources, fmt: str = "auto", text_column: str = "text",
                    text_sample_by: str = "document") -> SourceSpec:
    """Check ``data.sources`` and expand directories and globs into a file list.

    ``sources`` is None or ``"embedded"`` (the corpus shipped with flowhn), a path, a glob, a
    directory (every file of a known extension below it), a list of those, or with
    ``fmt="hub"`` one dataset name for :func:`open_stream`.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"data.format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if text_sample_by not in SAMPLE_BY:
        raise ConfigError(f"data.text_sample_by: must be one of {', '.join(SAMPLE_BY)}, got {text_sample_by!r}")
    if not isinstance(text_column, str) or not text_column:
        raise ConfigError(f"data.text_column: must be a column name, got {text_column!r}")
    entries = _as_list(sources)
    if fmt == "hub":
        if len(entries) != 1 or not entries[0]:
            raise ConfigError(f"data.sources: format=hub takes exactly one dataset name, got {sources!r}")
        return SourceSpec(files=(), hub_name=entries[0], text_column=text_column, text_sample_by=text_sample_by)
    if not entries or entries == ["embedded"]:
        entries = [str(EMBEDDED_CORPUS)]
    files: list[tuple[str, str]] = []
    for entry in entries:
        for path in _expand(entry, fmt):
            file_fmt = fmt if fmt != "auto" else _format_of(path)
            if file_fmt is None:
                raise ConfigError(
                    f"data.format: cannot tell the format of {path} from its extension; "
                    "set data.format to text, json or parquet"
                )
            _check_file(path, file_fmt, text_column)
            files.append((path, file_fmt))
    return SourceSpec(files=tuple(files), hub_name=None, text_column=text_column, text_sample_by=text_sample_by)


def iter_documents(spec: SourceSpec) -> Iterator[str]:
    """Every non-empty document of the local files, in file order.

    A file that turns out unreadable part-way raises ``ConfigError`` naming it.
    """
    for path, fmt in spec.files:
        kwargs = {"sample_by": spec.text_sample_by} if fmt == "text" else {}
        count = 0
        try:
            for text in iter_stream_texts(open_stream(fmt, data_files=[path], **kwargs), spec.text_column, path):
                count += 1
                yield text
        except ConfigError:
            raise
        except Exception as exc:  # datasets wraps parse errors in several types
            raise ConfigError(f"data.sources: cannot read {path} as {fmt}: {error_line(exc)}") from exc
        if count == 0:
            raise ConfigError(f"data.sources: {path} holds no non-empty '{spec.text_column}' text")


def iter_stream_texts(stream, text_column: str, where: str) -> Iterator[str]:
    """The non-empty texts of a hub stream (``where`` names it in errors)."""
    for row in stream:
        text = _text_of(row, text_column, where)
        if text:
            yield text


def fingerprint(spec: SourceSpec, max_documents: int | None) -> str:
    """sha256 of the local files' bytes and of everything that changes which documents they give."""
    h = hashlib.sha256()
    h.update(json.dumps([spec.text_column, spec.text_sample_by, max_documents]).encode())
    for path, fmt in spec.files:
        h.update(f"\0{fmt}\0".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _as_list(sources) -> list[str]:
    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike)):
        return [os.fspath(sources)]
    if isinstance(sources, Sequence) or hasattr(sources, "__iter__"):  # list, tuple, ListConfig
        out = []
        for item in sources:
            if not isinstance(item, (str, os.PathLike)):
                raise ConfigError(f"data.sources: entries must be paths or names, got {item!r}")
            out.append(os.fspath(item))
        return out
    raise ConfigError(f"data.sources: must be a path, a glob, a directory or a list of them, got {sources!r}")


def _expand(entry: str, fmt: str) -> list[str]:
    path = os.path.expanduser(entry)
    if _GLOB_CHARS & set(path):
        matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f"data.sources: glob {entry!r} matches no files")
        return matches
    if os.path.isdir(path):
        matches = sorted(
            str(p) for p in Path(path).rglob("*")
            if p.is_file() and not p.name.startswith(".")
            and (_format_of(str(p)) is not None if fmt == "auto" else _format_of(str(p)) in (fmt, None))
        )
        if not matches:
            kinds = ", ".join(sorted(ext for ext, f in _EXTENSIONS.items() if fmt in ("auto", f)))
            raise ConfigError(f"data.sources: directory {entry} has no files matching {kinds} (optionally .gz/.bz2/.xz)")
        return matches
    if not os.path.exists(path):
        raise ConfigError(f"data.sources: file not found: {entry}")
    return [path]


def _format_of(path: str) -> str | None:
    stem, ext = os.path.splitext(path.lower())
    if ext in _OPENERS:
        ext = os.path.splitext(stem)[1]
    return _EXTENSIONS.get(ext)


def _open_binary(path: str):
    opener = _OPENERS.get(os.path.splitext(path.lower())[1], open)
    return opener(path, "rb")


def _check_file(path: str, fmt: str, text_column: str) -> None:
    """Fail now, naming the file, on what would otherwise fail deep inside ``datasets``."""
    if os.path.getsize(path) == 0:
        raise ConfigError(f"data.sources: file is empty: {path}")
    if fmt == "parquet":
        _check_parquet(path, text_column)
        return
    try:
        with _open_binary(path) as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise ConfigError(f"data.sources: cannot read {path}: {error_line(exc)}") from exc
    if not head.strip():
        raise ConfigError(f"data.sources: file is empty: {path}")
    complete = len(head) < _SNIFF_BYTES
    try:
        # Incremental, so that a multi-byte character cut at the end of the sniffed bytes is no error.
        text = codecs.getincrementaldecoder("utf-8")(errors="strict").decode(head, final=complete)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data.sources: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if fmt == "json":
        _check_json_head(path, text, text_column, complete)


def _check_json_head(path: str, text: str, text_column: str, complete: bool) -> None:
    stripped = text.lstrip()
    if stripped.startswith("["):
        if not complete:
            return  # a large JSON array is checked by datasets while reading
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"data.sources: {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        first = rows[0] if rows else None
    else:
        line_no, line = next(((i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()), (1, ""))
        try:
            first = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"data.sources: {path} is not valid JSON lines (line {line_no}: {exc.msg})") from exc
    if not isinstance(first, dict):
        raise ConfigError(f"data.sources: {path} must hold JSON objects (one per line), found {type(first).__name__}")
    if text_column not in first:
        raise ConfigError(
            f"data.text_column: {text_column!r} is not a field of {path} (fields: {', '.join(map(str, first)) or 'none'})"
        )


def _check_parquet(path: str, text_column: str) -> None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for broken footers
        raise ConfigError(f"data.sources: {path} is not a readable parquet file ({error_line(exc)})") from exc
    if text_column not in schema.names:
        raise ConfigError(
            f"data.text_column: {text_column!r} is not a column of {path} (columns: {', '.join(schema.names)})"
        )


def _text_of(row: dict, column: str, where: str) -> str | None:
    if column not in row:
        raise ConfigError(f"data.text_column: {column!r} is not a field of {where} (fields: {', '.join(row)})")
    text = row[column]
    if text is None or isinstance(text, str):
        return text if text and text.strip() else None
    raise ConfigError(f"data.text_column: {column!r} in {where} holds {type(text).__name__}, not text")
