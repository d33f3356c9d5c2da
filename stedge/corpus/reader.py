"""Streaming corpus input: files and globs, the text and id of every record, in a fixed order.

The formats are those of `stedge.data.iter_table` (text, JSONL, CSV/TSV, gz too, and Parquet). A
record's place in the corpus is ``(file index, record index in that file)``; resuming starts from one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..data import TEXT_COLUMNS, BadRow, _kind, iter_table
from ..errors import StedgeError

HEAD_BYTES = 1 << 20


@dataclass
class Chunk:
    """Consecutive records of one input file: a text per good record, an error per bad one."""

    file: int
    records: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def good(self) -> int:
        """How many records have a text (no error)."""
        return sum(e is None for e in self.errors)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by paths and globs, in the order given (a glob's matches sorted), each once."""
    files: list[Path] = []
    for item in inputs:
        s = str(item)
        if any(ch in s for ch in "*?["):
            matches = sorted(glob.glob(s, recursive=True))
            matches = [m for m in matches if Path(m).is_file()]
            if not matches:
                raise StedgeError(f"input {s}: the pattern matches no file")
            files += [Path(m) for m in matches]
        elif Path(s).is_dir():
            raise StedgeError(f"input {s} is a folder: pass its files or a glob such as '{s}/*.jsonl'")
        elif not Path(s).is_file():
            raise StedgeError(f"input {s} not found")
        else:
            files.append(Path(s))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if not unique:
        raise StedgeError("no input files: pass INPUT paths or globs")
    return unique


def fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and a sha256 over the size and the first and last MB: cheap, and enough to see a change."""
    st = path.stat()
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(HEAD_BYTES))
        if st.st_size > HEAD_BYTES:
            f.seek(max(HEAD_BYTES, st.st_size - HEAD_BYTES))
            h.update(f.read(HEAD_BYTES))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime, "sha256_head_tail": h.hexdigest()}


def same_input(old: dict, new: dict) -> bool:
    """True when two fingerprints describe the same file content (mtime alone may differ, e.g. after a copy)."""
    return all(old.get(k) == new.get(k) for k in ("path", "size", "sha256_head_tail"))


def count_rows(path: Path) -> int | None:
    """Rows of a file when cheap to know: Parquet metadata, or newlines of an uncompressed file; else None."""
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:  # the reader reports a broken file with its name
            return None
    if path.suffix == ".gz":
        return None
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
            last = block[-1:]
    n += last != b"\n"
    return max(0, n - (kind in ("csv", "tsv")))


class TotalCounter(threading.Thread):
    """Counts the rows of the inputs in the background; ``total`` stays None if any file cannot be counted."""

    def __init__(self, files: Sequence[Path]) -> None:
        super().__init__(daemon=True)
        self.files = list(files)
        self.total: int | None = None

    def run(self) -> None:
        total = 0
        for f in self.files:
            n = count_rows(f)
            if n is None:
                return
            total += n
        self.total = total


def guess_text_column(path: Path) -> str | None:
    """The text column of a table from its first record (common names such as text, sentence); None for .txt."""
    if _kind(path) == "txt":
        return None
    for _, row in iter_table(path):
        if isinstance(row, BadRow):
            continue
        cols = list(row)
        for c in TEXT_COLUMNS:
            if c in cols:
                return c
        raise StedgeError(
            f"{path}: no text column found (columns: {', '.join(map(str, cols))}); name one with --text-column"
        )
    raise StedgeError(f"{path}: empty file (no rows)")


@dataclass
class CorpusReader:
    """Reads the records of the input files in order, from a resume point, in chunks.

    ``text_column`` / ``id_column`` name table columns (a .txt file is one text per line); without
    ``id_column`` a record's id is its line number, prefixed with the file when there are several.
    """

    files: list[Path]
    text_column: str | None = None
    id_column: str | None = None
    skip_bad_rows: bool = False
    names: list[str] | None = None  # how ids and errors name the files (default: as given)

    def name(self, file_index: int) -> str:
        """The file as ids and errors name it."""
        return self.names[file_index] if self.names else str(self.files[file_index])

    def absolute(self) -> "CorpusReader":
        """The same reader with absolute paths (for processes with another working directory)."""
        return replace(
            self, files=[f.resolve() for f in self.files], names=[self.name(i) for i in range(len(self.files))]
        )

    def records(self, file_index: int, start_record: int = 0) -> Iterator[tuple[int, int, str, str | None, str | None]]:
        """``(record, line, id, text, error)`` of one file from ``start_record`` on; a bad record has an error."""
        path = self.files[file_index]
        is_txt = _kind(path) == "txt"
        text_col = "text" if is_txt else self.text_column
        cols = None if is_txt or _kind(path) == "jsonl" else [c for c in (text_col, self.id_column) if c]
        prefix = f"{self.name(file_index)}:" if len(self.files) > 1 else ""
        if _kind(path) == "parquet":
            _check_parquet_text(path, text_col)
        n = -1
        for n, (line, row) in enumerate(iter_table(path, cols)):
            if n < start_record:
                continue
            if isinstance(row, BadRow):
                yield n, line, f"{prefix}{line}", None, row.reason
                continue
            rid = f"{prefix}{line}"
            error = None
            if self.id_column is not None and not is_txt:
                value = row.get(self.id_column)
                if value is None or value == "":
                    error = f"no value in id column '{self.id_column}'"
                else:
                    rid = str(value)
            text = row.get(text_col) if text_col else None
            if error is None:
                error = _text_error(text, text_col, text_col in row)
            yield n, line, rid, (text if error is None else None), error
        if n < 0:
            raise StedgeError(f"{path}: empty file (no rows)")

    def check(self) -> None:
        """Read the first record of every file: a missing column, a wrong Parquet schema or an empty file
        is reported before anything is written."""
        for fi in range(len(self.files)):
            gen = self.records(fi)
            next(gen, None)
            gen.close()

    def chunks(
        self,
        start: tuple[int, int] = (0, 0),
        chunk_rows: int = 1024,
        shard_rows: int | None = None,
        end_file: int | None = None,
    ) -> Iterator[Chunk]:
        """Chunks of at most ``chunk_rows`` good records from ``start`` = (file, record) on, up to file
        ``end_file`` (excluded; default all). With ``shard_rows`` no chunk crosses a multiple of
        ``shard_rows`` good records counted from ``start``, so chunking after a resume at a shard
        boundary is the same as in an uninterrupted run."""
        filled = 0
        for fi in range(start[0], len(self.files) if end_file is None else end_file):
            chunk = Chunk(fi)
            good = 0
            for rec, line, rid, text, error in self.records(fi, start[1] if fi == start[0] else 0):
                if error is not None and not self.skip_bad_rows:
                    raise StedgeError(
                        f"{self.name(fi)}:{line}: {error} (pass --skip-bad-rows to log such rows and go on)"
                    )
                chunk.records.append(rec)
                chunk.lines.append(line)
                chunk.ids.append(rid)
                chunk.texts.append(text)
                chunk.errors.append(error)
                if error is None:
                    good += 1
                    limit = chunk_rows if shard_rows is None else min(chunk_rows, shard_rows - filled % shard_rows)
                    if good >= limit:
                        filled += good
                        yield chunk
                        chunk, good = Chunk(fi), 0
            if len(chunk):
                filled += good
                yield chunk


def _text_error(text: Any, column: str | None, present: bool) -> str | None:
    if not present:
        return f"no field '{column}'"
    if text is None:
        return f"'{column}' is null"
    if not isinstance(text, str):
        return f"'{column}' is {type(text).__name__}, expected a string"
    if not text.strip():
        return f"'{column}' is empty"
    return None


def _check_parquet_text(path: Path, column: str | None) -> None:
    """A Parquet text column must hold strings: a wrong schema is an error about the file, not each row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as e:  # not Parquet at all
        raise StedgeError(f"{path}: not a readable Parquet file ({e})") from None
    if column in schema.names:
        t = schema.field(column).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
            raise StedgeError(
                f"{path}: column '{column}' holds {t}, expected strings (a Parquet file of another "
                "schema? name the text column with --text-column)"
            )
