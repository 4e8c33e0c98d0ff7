"""Rebuild ``austen.jsonl.gz`` from Debian's ``r-cran-janeaustenr`` package.

Not imported by flowhn: it documents, and can repeat, how the shipped corpus was made.
Needs ``dpkg`` (or any ``.deb`` extractor) and the PyPI package ``rdata`` to read R's lazy-load
database; run it from any directory:

    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb pkg
    python build_austen.py pkg/usr/lib/R/site-library/janeaustenr/data out.jsonl.gz

One JSON line per chapter: {"text", "book", "chapter"}. The hard line wraps of the source are
undone inside paragraphs; paragraphs are separated by a blank line.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import warnings
import zlib
from pathlib import Path

# Order and titles as janeaustenr::austen_books() gives them.
BOOKS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
CHAPTER = re.compile(r"^(CHAPTER|Chapter) [IVXLC0-9]+\.?$")
# Lines that are layout or later editors' notes, not the novels' text.
DROP = re.compile(r"^(VOLUME [IVX]+|THE END|FINIS|Finis|\[.*\])$")
# Northanger Abbey ends with a modern editor's note on the text; everything from it on is cut.
EDITORIAL_TAIL = "A NOTE ON THE TEXT"


def read_lazyload_db(data_dir: Path) -> dict[str, list[str]]:
    import rdata  # only this script needs it

    warnings.simplefilter("ignore")  # rdata warns that the index has no RDS header
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    )
    blob = (data_dir / "Rdata.rdb").read_bytes()
    books = {}
    for name, (offset, length) in index["variables"].items():
        # Each record: 4-byte big-endian uncompressed length, then a zlib stream.
        record = blob[int(offset) : int(offset) + int(length)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(record[4:])))
        books[str(name)] = [str(line) for line in lines]
    return books


def paragraphs(lines: list[str]) -> list[str]:
    out, current = [], []
    for line in lines + [""]:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def chapters(book: str, lines: list[str]) -> list[dict]:
    if EDITORIAL_TAIL in lines:
        lines = lines[: lines.index(EDITORIAL_TAIL)]
    lines = [line for line in lines if not DROP.match(line.strip())]
    starts = [i for i, line in enumerate(lines) if CHAPTER.match(line.strip())]
    docs = []
    # Text before the first chapter is the title page, except Northanger Abbey's "Advertisement",
    # which Austen wrote and is kept as a document of its own.
    front = paragraphs(lines[: starts[0]])
    if any(p.startswith("ADVERTISEMENT") for p in front):
        start = next(i for i, p in enumerate(front) if p.startswith("ADVERTISEMENT"))
        docs.append({"text": "\n\n".join(front[start:]), "book": book, "chapter": 0})
    for number, (a, b) in enumerate(zip(starts, starts[1:] + [len(lines)]), start=1):
        docs.append({"text": "\n\n".join(paragraphs(lines[a:b])), "book": book, "chapter": number})
    return docs


def main(data_dir: str, out_path: str) -> None:
    books = read_lazyload_db(Path(data_dir))
    docs = [doc for key, title in BOOKS.items() for doc in chapters(title, books[key])]
    # mtime=0 so the same text always gives the same bytes (the corpus hash keys caches).
    with open(out_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for doc in docs:
            gz.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    chars = sum(len(d["text"]) for d in docs)
    print(f"{len(docs)} documents, {chars} characters -> {out_path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
