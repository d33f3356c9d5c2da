"""Readers shared by every stage: text lists, sentence pairs with scores, and the shared data folder.

Accepted sources: a plain text file (one text per line), CSV/TSV/JSONL/JSON/Parquet files
(optionally gzip-compressed), or a `datasets` Hub name (``name[:config][@split]``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import InvalidInputError, StedgeError

TEXT_COLUMNS = ("text", "sentence", "sentence1", "anchor", "query", "premise", "question")


def data_root() -> Path:
    """The shared data folder: $STEDGE_DATA_DIR, else ../shared/data beside the project root."""
    env = os.environ.get("STEDGE_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for base in (here, Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return here.parent / "shared" / "data"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A path as given, or relative to the shared data folder (``stsb/test.tsv.gz``)."""
    p = Path(path)
    if p.exists():
        return p
    alt = data_root() / p
    return alt if alt.exists() else p


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """``texts`` (one string or a sequence of strings) as a list of strings.

    A mapping or a set is refused (a dict would silently give its keys, a set an arbitrary order)
    and so is a non-string item (TypeError naming the index). A text that is not valid Unicode
    (lone surrogates, as Python makes of bytes that are not UTF-8) raises InvalidInputError.
    """
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (Mapping, Set, bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"{what} must be a string or a sequence of strings, got {type(texts).__name__}")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInputError(
                f"{what}[{i}] ({t[:40]!r}) is not valid Unicode: character {e.start} is a lone surrogate, as Python "
                "makes of bytes that are not UTF-8; convert the input to UTF-8"
            ) from None
        out.append(t)
    return out


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in ("tsv", "csv", "jsonl", "json", "parquet", "txt"):
        if name.endswith("." + ext):
            return ext
    return "txt"


@dataclass(frozen=True)
class BadRow:
    """A record of a streamed file that could not be read (undecodable bytes, broken JSON...)."""

    reason: str


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def _decoded_lines(f: io.BufferedIOBase, bad: dict[int, str]) -> Iterator[str]:
    """UTF-8 lines of a binary file; an undecodable line is replaced and noted in ``bad`` (line -> reason)."""
    for n, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad[n] = f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            line = raw.decode("utf-8", errors="replace")
        if n == 1 and line.startswith("\ufeff"):
            line = line[1:]
        yield line


def iter_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Iterator[tuple[int, dict | BadRow]]:
    """Stream the records of a text/CSV/TSV/JSONL/Parquet file (gz ok), never holding the whole file.

    Yields ``(line, row)``: ``line`` is the 1-based line where the record starts (the row number for
    Parquet) and ``row`` a dict, or a `BadRow` for a record that cannot be read, so a caller may stop
    or go on. A text file gives ``{"text": line}`` for every line, blank ones included. ``columns``
    (tables only) must all exist: a CSV header or Parquet schema without one is an error naming the file.
    """
    p = Path(path)
    kind = _kind(p)
    if kind == "parquet":
        yield from _iter_parquet(p, columns)
        return
    if kind == "json":
        raise InvalidInputError(
            f"{p}: a .json file cannot be streamed; convert it to JSON Lines (.jsonl), one object per line"
        )
    bad: dict[int, str] = {}
    with _open_binary(p) as f:
        lines = _decoded_lines(f, bad)
        if kind == "txt":
            for n, line in enumerate(lines, 1):
                yield n, (BadRow(bad.pop(n)) if n in bad else {"text": line.rstrip("\r\n")})
        elif kind == "jsonl":
            yield from _iter_jsonl(lines, bad)
        else:
            yield from _iter_csv(p, lines, bad, "\t" if kind == "tsv" else ",", columns)


def _iter_jsonl(lines: Iterable[str], bad: dict[int, str]) -> Iterator[tuple[int, dict | BadRow]]:
    for n, line in enumerate(lines, 1):
        if n in bad:
            yield n, BadRow(bad.pop(n))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, BadRow(f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        yield n, (row if isinstance(row, dict) else BadRow(f"expected a JSON object, got {type(row).__name__}"))


def _iter_csv(
    p: Path, lines: Iterator[str], bad: dict[int, str], delimiter: str, columns: Sequence[str] | None
) -> Iterator[tuple[int, dict | BadRow]]:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise InvalidInputError(f"{p}:1: the header cannot be read ({e})") from None
    if 1 in bad:
        raise InvalidInputError(f"{p}:1: the header is {bad[1]}")
    missing = [c for c in columns or () if c not in header]
    if missing:
        raise InvalidInputError(f"{p}: no column '{missing[0]}' (columns: {', '.join(header)})")
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield start, BadRow(f"not valid CSV ({e})")
            start = reader.line_num + 1
            continue
        end = reader.line_num
        broken = [bad.pop(n) for n in range(start, end + 1) if n in bad]
        if broken:
            yield start, BadRow(broken[0])
        elif values:
            if len(values) != len(header):
                yield start, BadRow(f"{len(values)} fields, the header has {len(header)}")
            else:
                yield start, dict(zip(header, values))
        start = end + 1


def _iter_parquet(p: Path, columns: Sequence[str] | None) -> Iterator[tuple[int, dict | BadRow]]:
    from .errors import require

    pq = require("pyarrow.parquet", "corpus", "reading Parquet files")
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise InvalidInputError(f"{p}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise InvalidInputError(f"{p}: no column '{missing[0]}' in the Parquet schema (columns: {', '.join(names)})")
    n = 0
    for batch in pf.iter_batches(batch_size=4096, columns=list(columns) if columns else None):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _check_file(p: Path) -> None:
    if p.is_dir():
        raise InvalidInputError(
            f"{p} is a folder; pass a text file, a CSV/TSV/JSONL/JSON/Parquet table or a datasets name"
        )


def _read_error(p: Path, e: Exception) -> InvalidInputError:
    """A one-line error for a data file that cannot be decoded or parsed."""
    if isinstance(e, UnicodeDecodeError):
        return InvalidInputError(
            f"{p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "pass a UTF-8 text file or table (binary files are not read)"
        )
    if isinstance(e, json.JSONDecodeError):
        return InvalidInputError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    if isinstance(e, (gzip.BadGzipFile, EOFError)):
        return InvalidInputError(f"{p}: not a readable gzip file ({e})")
    return InvalidInputError(f"{p}: cannot be read as a table ({type(e).__name__}: {e})")


_READ_ERRORS = (UnicodeDecodeError, json.JSONDecodeError, gzip.BadGzipFile, EOFError, csv.Error)


def read_rows(source: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Read a table (CSV/TSV/JSONL/JSON/Parquet, gz ok) or a `datasets` name into a list of dicts."""
    p = resolve_data_path(source)
    if p.exists():
        _check_file(p)
        try:
            return _read_rows(p, source)
        except _READ_ERRORS as e:
            raise _read_error(p, e) from None
    return _read_rows(p, source, split)


def _read_rows(p: Path, source: str | os.PathLike, split: str | None = None) -> list[dict]:
    if not p.exists():
        if isinstance(source, str) and "/" in source and not source.startswith((".", "/")):
            return _hub_rows(source, split)
        raise StedgeError(f"data file {source} not found (also looked in {data_root()})")
    kind = _kind(p)
    if kind in ("tsv", "csv", "jsonl"):  # the streaming reader, strict: the first unreadable record is an error
        rows = []
        for line, row in iter_table(p):
            if isinstance(row, BadRow):
                raise InvalidInputError(f"{p}:{line}: {row.reason}")
            rows.append(row)
        return rows
    if kind == "json":
        with _open_text(p) as f:
            data = json.load(f)
        if isinstance(data, dict):  # column -> list
            keys = list(data)
            return [dict(zip(keys, vals)) for vals in zip(*data.values())]
        return list(data)
    if kind == "parquet":
        from .errors import require

        pq = require("pyarrow.parquet", "train", "reading Parquet files")
        return pq.read_table(p).to_pylist()
    raise StedgeError(f"{p}: not a table (expected .csv, .tsv, .jsonl, .json or .parquet, optionally .gz)")


def _hub_rows(name: str, split: str | None) -> list[dict]:
    from .errors import require

    datasets = require("datasets", "train", f"loading the dataset '{name}'")
    config = None
    if "@" in name:
        name, split = name.split("@", 1)
    if ":" in name:
        name, config = name.split(":", 1)
    try:
        ds = datasets.load_dataset(name, config, split=split or "train")
    except Exception as e:
        raise StedgeError(
            f"could not load dataset '{name}' ({type(e).__name__}: {e}); pass a local file instead"
        ) from e
    return list(ds)


def read_texts(source: str | os.PathLike, column: str | None = None, limit: int | None = None) -> list[str]:
    """Texts from a plain text file (one per line) or from a column of a table.

    Without ``column`` a table's text column is guessed from common names; for a pair
    table (sentence1/sentence2, anchor/positive...) every text column is used.
    """
    p = resolve_data_path(source)
    if p.exists():
        _check_file(p)
    if p.exists() and _kind(p) == "txt":
        try:
            with _open_text(p) as f:
                texts = [line.rstrip("\n\r") for line in f]
        except _READ_ERRORS as e:
            raise _read_error(p, e) from None
        if any("\x00" in t for t in texts):
            raise InvalidInputError(f"{p} holds NUL bytes, so it is not a text file; pass a UTF-8 text file or table")
        texts = [t for t in texts if t.strip()]
    else:
        rows = read_rows(source)
        if not rows:
            raise StedgeError(f"{source}: no rows")
        cols = list(rows[0].keys())
        if column is not None:
            if column not in cols:
                raise StedgeError(
                    f"{source}: no column '{column}' (columns: {', '.join(cols)}); pass --column with one of them"
                )
            use = [column]
        else:
            pair_cols = [
                c
                for c in ("sentence1", "sentence2", "anchor", "positive", "negative", "premise", "hypothesis")
                if c in cols
            ]
            use = pair_cols or [c for c in TEXT_COLUMNS if c in cols][:1]
            if not use:
                raise StedgeError(
                    f"{source}: no text column found (columns: {', '.join(cols)}); name one with --column"
                )
        seen: set[str] = set()
        texts = []
        for r in rows:
            for c in use:
                t = r.get(c)
                if isinstance(t, str) and t.strip() and t not in seen:
                    seen.add(t)
                    texts.append(t)
    if limit is not None:
        texts = texts[:limit]
    return texts


@dataclass
class PairScores:
    """Sentence pairs with gold similarity scores (STS-style)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def read_sts(source: str | os.PathLike, limit: int | None = None) -> PairScores:
    """Sentence pairs with scores: columns sentence1/sentence2 and score (or label)."""
    rows = read_rows(source)
    if not rows:
        raise StedgeError(f"{source}: no rows")
    cols = list(rows[0].keys())
    c1 = next((c for c in ("sentence1", "text1", "premise", "anchor") if c in cols), None)
    c2 = next((c for c in ("sentence2", "text2", "hypothesis", "positive") if c in cols), None)
    cs = next((c for c in ("score", "label", "similarity") if c in cols), None)
    if not (c1 and c2 and cs):
        raise StedgeError(f"{source}: expected columns sentence1, sentence2 and score (found: {', '.join(cols)})")
    s1, s2, sc = [], [], []
    for i, r in enumerate(rows[:limit] if limit else rows):
        try:
            sc.append(float(r[cs]))
        except (TypeError, ValueError):
            raise StedgeError(f"{source}: row {i + 1}: score {r[cs]!r} is not a number") from None
        s1.append(str(r[c1]))
        s2.append(str(r[c2]))
    return PairScores(s1, s2, sc)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy), as a plain float."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).correlation)


def pairwise_cosine(a, b):
    """Row-wise cosine similarity (float64) of two numpy arrays of the same shape."""
    import numpy as np
    from stedge_runtime.similarity import similarity_matrix

    return similarity_matrix("cosine", a, b, pairwise=True, dtype=np.float64)


def iter_batches(items: Sequence, size: int) -> Iterable[Sequence]:
    """Consecutive slices of at most ``size`` items."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
