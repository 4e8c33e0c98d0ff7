"""The benchmark's sequence-length ladder: ``python -m flowhn.bench`` in ladder mode writes one CSV
row per model and length, with exactly these columns:

    model,seq_len,batch_size,tok_s,mfu,fa_ratio,status

``tok_s`` in tokens/s, ``mfu`` a fraction (0.25 is 25 %), ``fa_ratio`` the split's attention share
(blank for models without a split), ``status`` "ok", "OOM" or an error; blank where not measured.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from flowhn.errors import ConfigError

COLUMNS = ("model", "seq_len", "batch_size", "tok_s", "mfu", "fa_ratio", "status")
# Names the report looks for beside a sweep's job folders (the bench writes seqlen_ladder.csv).
FILE_NAMES = ("seqlen.csv", "seqlen_ladder.csv")


def find(folder: Path) -> Path | None:
    for name in FILE_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def read(path: Path) -> pd.DataFrame:
    """The ladder CSV, numbers parsed; a file of other columns is refused naming them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--seqlen: {path}: no such file")
    try:
        df = pd.read_csv(path, dtype={"model": str, "status": str}, keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"--seqlen: {path}: not a CSV file ({exc})") from exc
    if tuple(df.columns) != COLUMNS:
        raise ConfigError(f"--seqlen: {path} has columns {list(df.columns)}, expected {list(COLUMNS)}")
    for column in ("seq_len", "batch_size", "tok_s", "mfu", "fa_ratio"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    if df["seq_len"].isna().any():
        raise ConfigError(f"--seqlen: {path}: seq_len must be a number in every row")
    df["status"] = df["status"].fillna("")
    return df.sort_values(["model", "seq_len"], kind="stable").reset_index(drop=True)


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a throughput: status ok and tok_s present."""
    return df[(df["status"] == "ok") & df["tok_s"].notna()]


def markdown(df: pd.DataFrame, source: Path) -> str:
    """tok/s (MFU %) per model (rows) and length (columns); a row that was not measured says why."""
    lengths = sorted(int(t) for t in df["seq_len"].unique())
    models = list(dict.fromkeys(df["model"]))
    cells = {(r.model, int(r.seq_len)): r for r in df.itertuples()}

    def cell(row) -> str:
        if row is None:
            return "—"
        if row.status != "ok" or row.tok_s is None or math.isnan(row.tok_s):
            return (row.status or "not measured").split(":")[0]
        mfu = "" if math.isnan(row.mfu) else f" ({100 * row.mfu:.1f} %)"
        return f"{row.tok_s:,.0f}{mfu}"

    lines = [f"# Throughput vs sequence length ({Path(source).name})", "",
             "tok/s (MFU %) per model and sequence length.", "",
             "| model | " + " | ".join(f"{t:,}" for t in lengths) + " |", "|---|" + "---:|" * len(lengths)]  # fmt: skip
    lines += [f"| {m} | " + " | ".join(cell(cells.get((m, t))) for t in lengths) + " |" for m in models]
    return "\n".join(lines) + "\n"
