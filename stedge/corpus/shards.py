"""The output folder of `stedge embed-corpus`: Parquet shards plus `corpus.json`, both written atomically.

Shard schema: ``id`` (string), ``text_sha256`` (hex of the UTF-8 text, prompt excluded) and ``vector``
(fixed-size list of float32, or float16 with ``--dtype float16``; with ``--precision`` int8/uint8 of
``dimension`` codes or binary/ubinary of ``dimension / 8`` packed bytes, as stedge_runtime.quantization
makes them). `corpus.json` records the inputs, the model and variant, the dimension, the storage
``dtype``/``precision``/``width``, the int8/uint8 ``ranges`` and every complete shard with the records it
covers, so a killed run resumes after the last complete shard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import StedgeError
from .reader import Chunk, same_input

MANIFEST = "corpus.json"
FORMAT = "stedge-corpus"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
SHARD_RE = re.compile(r"^shard-\d{5,}\.parquet$")
TMP_RE = re.compile(r"^\.(shard-\d{5,}\.parquet|corpus\.json)\.tmp-\d+$")
MAX_LOGGED_BAD_ROWS = 100
ROW_GROUP_ROWS = 8192


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-00000.parquet``)."""
    return f"shard-{index:05d}.parquet"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary sibling, flush it to disk, then rename it over ``path``."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(out: Path) -> dict | None:
    """The corpus.json of ``out`` when it is one of ours, else None."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def check_folder(out: Path) -> dict | None:
    """The existing manifest of ``out`` (None for a new or empty folder); an error when the folder holds
    files embed-corpus did not write, or a manifest newer than this stedge reads."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise StedgeError(f"output {out} is a file, not a folder: choose another -o")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return None
    manifest = read_manifest(out)
    if manifest is None:
        raise StedgeError(
            f"output folder {out} holds files embed-corpus did not write (e.g. {names[0]}): "
            "choose another -o or empty it"
        )
    foreign = [n for n in names if n != MANIFEST and not SHARD_RE.match(n) and not TMP_RE.match(n)]
    if foreign:
        raise StedgeError(
            f"output folder {out} holds files embed-corpus did not write (e.g. {foreign[0]}): "
            "move them away or choose another -o"
        )
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise StedgeError(
            f"{out / MANIFEST}: format_version {manifest['format_version']} is newer than this stedge "
            f"reads ({FORMAT_VERSION}): upgrade stedge"
        )
    return manifest


def clear_folder(out: Path) -> None:
    """Remove what embed-corpus wrote in ``out`` (shards, manifest, temporary files) and nothing else."""
    for p in out.iterdir():
        if p.name == MANIFEST or SHARD_RE.match(p.name) or TMP_RE.match(p.name):
            p.unlink() if p.is_file() else shutil.rmtree(p)


def changes(old: dict, new: dict) -> str | None:
    """What differs between the job that wrote ``old`` and the job ``new`` (None when they match)."""
    oi, ni = old.get("inputs") or [], new["inputs"]
    if len(oi) != len(ni):
        return f"the inputs were {len(oi)} files, now {len(ni)}"
    for a, b in zip(oi, ni):
        if a.get("path") != b["path"]:
            return f"an input was {a.get('path')}, now {b['path']}"
        if not same_input(a, b):
            return f"input {b['path']} changed since the shards were written"
    om, nm = old.get("model") or {}, new["model"]
    for key in ("path", "variant", "sha256", "prompt_name", "normalize"):
        if om.get(key) != nm.get(key):
            return f"the model's {key} changed ({om.get(key)!r} -> {nm.get(key)!r})"
    for key in ("dimension", "dtype", "precision", "width", "ranges", "settings"):
        if old.get(key) != new.get(key):
            return f"{key} changed ({old.get(key)!r} -> {new[key]!r})"
    return None


def valid_shards(out: Path, manifest: dict) -> list[dict]:
    """The manifest's shards whose file is there with the recorded row count, up to the first that is not."""
    import pyarrow.parquet as pq

    good = []
    for entry in manifest.get("shards") or []:
        f = out / entry["file"]
        try:
            rows = pq.ParquetFile(f).metadata.num_rows
        except Exception:  # missing or truncated: redo from here
            break
        if rows != entry["rows"]:
            break
        good.append(entry)
    return good


def prepare(out: Path, header: dict, overwrite: bool) -> dict:
    """The manifest to continue from: a fresh one, or the existing one cut to its complete shards.

    A different job in ``out`` (changed input, model or settings) is refused unless ``overwrite``."""
    old = check_folder(out)
    if old is not None and overwrite:
        clear_folder(out)
        old = None
    if old is not None:
        why = changes(old, header)
        if why:
            raise StedgeError(f"{out}: {why}; pass --overwrite to embed again from the start, or choose another -o")
        manifest = dict(old)
        manifest["shards"] = valid_shards(out, old)
        if len(manifest["shards"]) < len(old.get("shards") or []):
            manifest["done"] = False
        listed = {e["file"] for e in manifest["shards"]}
        for p in out.iterdir():
            if (SHARD_RE.match(p.name) and p.name not in listed) or TMP_RE.match(p.name):
                p.unlink()
        manifest["inputs"] = header["inputs"]
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **header,
        "shards": [],
        "rows": 0,
        "skipped_rows": 0,
        "done": False,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def resume_point(manifest: dict) -> tuple[int, int]:
    """(file, record) where reading continues: after the last complete shard."""
    shards = manifest.get("shards") or []
    return tuple(shards[-1]["end"]) if shards else (0, 0)  # type: ignore[return-value]


def hash_texts(texts: list[str | None]) -> list[str | None]:
    """Hex sha256 of each text's UTF-8 bytes (None stays None)."""
    import hashlib

    return [hashlib.sha256(t.encode("utf-8")).hexdigest() if t is not None else None for t in texts]


class ShardSink:
    """Takes encoded chunks in corpus order and writes shards of ``shard_rows`` rows, each atomically,
    updating corpus.json after each one. ``on_shard(entry)`` is called after a shard is complete."""

    def __init__(
        self, out: Path, manifest: dict, shard_rows: int, on_shard: Callable[[dict], None] | None = None
    ) -> None:
        import pyarrow as pa

        self.pa = pa
        self.out = out
        self.manifest = manifest
        self.shard_rows = int(shard_rows)
        self.on_shard = on_shard
        dim = int(manifest["dimension"])
        self.precision = manifest.get("precision") or "float32"
        self.ranges = np.asarray(manifest["ranges"], dtype=np.float32) if manifest.get("ranges") else None
        self.np_dtype = np.dtype(manifest["dtype"])
        value_type = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "uint8": pa.uint8()}[
            manifest["dtype"]
        ]
        width = int(manifest.get("width") or dim)
        meta = {
            "stedge.corpus": json.dumps(
                {
                    "dimension": dim,
                    "dtype": manifest["dtype"],
                    "width": width,
                    "precision": manifest["precision"],
                    "model": manifest["model"],
                }
            )
        }
        self.schema = pa.schema(
            [("id", pa.string()), ("text_sha256", pa.string()), ("vector", pa.list_(value_type, width))], metadata=meta
        )
        self.dim, self.width = dim, width
        self._new_shard()

    def _store(self, vectors: np.ndarray) -> np.ndarray:
        """Float vectors as stored: cast, or quantized (stedge_runtime.quantization) for --precision."""
        if self.precision in ("float32", "float16"):
            return vectors.astype(self.np_dtype, copy=False)
        from stedge_runtime.quantization import quantize_embeddings

        return quantize_embeddings(vectors, self.precision, ranges=self.ranges)

    # ------------------------------------------------------------------ one shard
    def _new_shard(self) -> None:
        shards = self.manifest["shards"]
        self.index = len(shards)
        self.row_start = shards[-1]["row_end"] if shards else 0
        self.start = list(shards[-1]["end"]) if shards else [0, 0]
        self.end = list(self.start)
        self.rows = 0
        self.bad: list[dict] = []
        self.skipped = 0
        self.buffer: list[tuple[list, list, np.ndarray]] = []
        self.buffered = 0
        self.writer = None
        self.tmp = self.out / f".{shard_name(self.index)}.tmp-{os.getpid()}"

    def _flush(self) -> None:
        if not self.buffer:
            return
        pa = self.pa
        ids = [i for b in self.buffer for i in b[0]]
        sha = [s for b in self.buffer for s in b[1]]
        vec = self._store(np.concatenate([b[2] for b in self.buffer]))
        values = pa.array(vec.reshape(-1), type=self.schema.field("vector").type.value_type)
        table = pa.Table.from_arrays(
            [
                pa.array(ids, pa.string()),
                pa.array(sha, pa.string()),
                pa.FixedSizeListArray.from_arrays(values, self.width),
            ],
            schema=self.schema,
        )
        if self.writer is None:
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.writer.write_table(table)
        self.buffer, self.buffered = [], 0

    def _close_shard(self) -> None:
        self._flush()
        if self.writer is None:
            import pyarrow.parquet as pq

            pq.write_table(self.schema.empty_table(), self.tmp)
        else:
            self.writer.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        name = shard_name(self.index)
        os.replace(self.tmp, self.out / name)
        entry = {
            "file": name,
            "rows": self.rows,
            "row_start": self.row_start,
            "row_end": self.row_start + self.rows,
            "start": self.start,
            "end": self.end,
            "skipped": self.skipped,
            "bad_rows": self.bad,
            "bytes": (self.out / name).stat().st_size,
        }
        m = self.manifest
        m["shards"].append(entry)
        m["rows"] = entry["row_end"]
        m["skipped_rows"] = sum(s["skipped"] for s in m["shards"])
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.out / MANIFEST, m)
        if self.on_shard is not None:
            self.on_shard(entry)
        self._new_shard()

    # ------------------------------------------------------------------ input
    def add(self, chunk: Chunk, sha: list[str | None], vectors: np.ndarray) -> None:
        """Append a chunk (records in order; ``vectors`` has one row per good record) to the shards."""
        if vectors.shape != (chunk.good, self.dim):
            raise StedgeError(
                f"the encoder returned {vectors.shape} vectors for {chunk.good} texts of width {self.dim}"
            )
        v = 0
        i = 0
        n = len(chunk)
        while i < n:
            seg_ids, seg_sha, first = [], [], v
            while i < n and self.rows + len(seg_ids) < self.shard_rows:
                if chunk.errors[i] is not None:
                    self.skipped += 1
                    if len(self.bad) < MAX_LOGGED_BAD_ROWS:
                        path = self.manifest["inputs"][chunk.file]["path"]
                        self.bad.append({"where": f"{path}:{chunk.lines[i]}", "reason": chunk.errors[i]})
                else:
                    seg_ids.append(chunk.ids[i])
                    seg_sha.append(sha[i])
                    v += 1
                self.end = [chunk.file, chunk.records[i] + 1]
                i += 1
            if seg_ids:
                self.buffer.append((seg_ids, seg_sha, vectors[first:v]))
                self.buffered += len(seg_ids)
                self.rows += len(seg_ids)
                if self.buffered >= ROW_GROUP_ROWS:
                    self._flush()
            if self.rows >= self.shard_rows:
                self._close_shard()

    def finish(self) -> dict:
        """Write the last (partial) shard, mark the corpus done, and return the manifest."""
        if self.rows or self.skipped or not self.manifest["shards"]:
            self._close_shard()
        self.manifest["done"] = True
        write_json_atomic(self.out / MANIFEST, self.manifest)
        return self.manifest

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); complete shards stay."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # already broken: only the file matters
                pass
        self.tmp.unlink(missing_ok=True)


def read_corpus(output: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """All ids and vectors of a complete corpus folder, in corpus order (small corpora and tests: it loads
    everything; stream the shards with pyarrow for large ones). Vectors come as stored: float32/float16,
    or int8/uint8 codes of width ``width`` for a ``--precision`` corpus (search them with
    ``stedge_runtime.search(queries, vectors, manifest["precision"], ranges=manifest["ranges"])``)."""
    import pyarrow.parquet as pq

    out = Path(output)
    manifest = read_manifest(out)
    if manifest is None:
        raise StedgeError(f"{out} is not an embed-corpus output folder (no {MANIFEST})")
    if not manifest.get("done"):
        raise StedgeError(f"{out}: the corpus is not complete; run the same embed-corpus command again to finish it")
    ids: list[str] = []
    parts = []
    width = int(manifest.get("width") or manifest["dimension"])
    for entry in manifest["shards"]:
        t = pq.read_table(out / entry["file"])
        ids += t.column("id").to_pylist()
        flat = t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        parts.append(flat.reshape(len(t), width))
    vectors = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.dtype(manifest["dtype"]))
    return ids, vectors
