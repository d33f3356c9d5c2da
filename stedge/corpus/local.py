"""`embed_corpus`: stream the inputs, encode, write shards; the local engine runs everything in this process.

from stedge.corpus import embed_corpus
summary = embed_corpus("models/minilm-stedge", ["docs/*.jsonl"], "out/docs-vectors")
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import StedgeError, require
from ..io import check_writable, output_lock, write_error
from .encoder import CorpusEncoder, ModelSpec
from .reader import Chunk, CorpusReader, TotalCounter, expand_inputs, fingerprint, guess_text_column
from .shards import DTYPES, ShardSink, clear_folder, hash_texts, prepare, resume_point

ENGINES = ("local", "ray")
Encoded = Iterator[tuple[Chunk, list, np.ndarray]]


def local_engine(
    encoder: CorpusEncoder, reader: CorpusReader, start: tuple[int, int], chunk_rows: int, shard_rows: int
) -> Encoded:
    """Encode chunk after chunk in this process: ``(chunk, text hashes, vectors of its good records)``."""
    for chunk in reader.chunks(start, chunk_rows, shard_rows):
        texts = [t for t in chunk.texts if t is not None]
        yield chunk, hash_texts(chunk.texts), encoder.encode(texts)


def embed_corpus(
    model: str,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    prompt_name: str | None = None,
    normalize: bool = False,
    dtype: str = "float32",
    precision: str = "float32",
    calibration: str | os.PathLike | None = None,
    calibration_column: str | None = None,
    batch_size: int = 32,
    shard_rows: int = 100_000,
    chunk_rows: int | None = None,
    variant: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    tier: str | None = None,
    max_memory_mb: float | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    skip_bad_rows: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    on_shard: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Embed every record of ``inputs`` into Parquet shards under ``output`` and return a summary.

    Resumes after the last complete shard of an earlier run of the same job; a changed input, model or
    setting is refused unless ``overwrite``. ``engine="ray"`` runs the encoding on a Ray actor pool
    (``address`` of an existing cluster, else a local instance). ``precision`` int8/uint8/binary/ubinary
    stores quantized vectors (stedge_runtime.quantization); int8/uint8 take their ranges from the
    ``calibration`` texts, else the artifact's saved ones, and record them in corpus.json. ``max_memory_mb``
    is each encoder's budget (Encoder.load's: the fastest configuration that peaked within it here). See
    `stedge embed-corpus --help`.
    """
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise StedgeError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if dtype not in DTYPES:
        raise StedgeError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    _check_precision(precision, dtype, calibration)
    if shard_rows < 1:
        raise StedgeError(f"--shard-rows must be >= 1, got {shard_rows}")
    chunk_rows = int(chunk_rows or max(1024, batch_size * 32))
    require("pyarrow.parquet", "corpus", "the Parquet shards of embed-corpus")
    files = expand_inputs(inputs)
    if text_column is None:
        text_column = next((c for c in map(guess_text_column, files) if c is not None), None)
    reader = CorpusReader(files, text_column, id_column, skip_bad_rows)
    reader.check()
    spec = ModelSpec(str(model), variant, device, prompt_name, normalize, batch_size, threads, tier, max_memory_mb)
    if engine == "ray":  # fail fast on a bad address, before loading anything
        from .ray_engine import connect

        connect(address, workers)
    encoder = CorpusEncoder(spec)
    encoder.warn_batch_invariance()
    header = {
        "inputs": [fingerprint(f) for f in files],
        "model": encoder.identity(),
        "dimension": encoder.dimension,
        "dtype": dtype,
        "precision": dtype,
        "settings": {"text_column": text_column, "id_column": id_column, "shard_rows": shard_rows},
        "created_with": {"stedge": _version()},
    }
    if precision != "float32":
        header.update(_quantized_storage(encoder, precision, calibration, calibration_column))
    out = Path(output).absolute()
    check_writable(out)
    with output_lock(out):  # a second writer of the same folder waits, then resumes or finds it done
        job = _Job(out, header, reader, spec, encoder, engine, chunk_rows, shard_rows, workers, gpus_per_worker)
        return job.run(overwrite, progress, on_shard, t0)


def _check_precision(precision: str, dtype: str, calibration: Any) -> None:
    from stedge_runtime.quantization import check_precision

    from ..errors import runtime_input_errors

    with runtime_input_errors():
        check_precision(precision)
    if precision != "float32" and dtype != "float32":
        raise StedgeError(
            f"--dtype {dtype} stores float vectors and --precision {precision} quantized ones: pass one of them"
        )
    if calibration is not None and precision not in ("int8", "uint8"):
        raise StedgeError(f"--calibration applies to --precision int8 or uint8, not {precision}")


def _quantized_storage(encoder: CorpusEncoder, precision: str, calibration: Any, column: str | None) -> dict:
    """corpus.json fields of a quantized corpus: the stored dtype and width, and int8/uint8 ranges with
    where they came from (the calibration texts, else the artifact's saved ranges)."""
    from stedge_runtime.quantization import bytes_per_vector, calibration_ranges

    fields: dict[str, Any] = {
        "precision": precision,
        "dtype": "int8" if precision in ("int8", "binary") else "uint8",
        "width": bytes_per_vector(precision, encoder.dimension),
        "ranges": None,
    }
    if precision in ("binary", "ubinary"):
        if encoder.dimension % 8:
            raise StedgeError(
                f"--precision {precision} packs 8 dimensions per byte; the model's dimension "
                f"{encoder.dimension} is not a multiple of 8"
            )
        return fields
    if calibration is not None:
        from ..export.calibration import embedding_texts

        texts = embedding_texts(calibration, column)
        ranges = calibration_ranges(encoder.encode(texts))
        fields["calibration"] = {"source": str(calibration), "texts": len(texts)}
    elif encoder.ranges is not None:
        ranges = encoder.ranges
        fields["calibration"] = {"source": "artifact", "texts": None}
    else:
        raise StedgeError(
            f"--precision {precision} needs calibration ranges: pass --calibration TEXTS (a few "
            "hundred in-domain texts), or use an artifact calibrated with "
            "`stedge calibrate ARTIFACT --texts TEXTS`"
        )
    fields["ranges"] = np.asarray(ranges, dtype=np.float32).tolist()
    return fields


class _Job:
    """One run over the output folder: prepare or resume the manifest, stream, write, summarize."""

    def __init__(
        self,
        out: Path,
        header: dict,
        reader: CorpusReader,
        spec: ModelSpec,
        encoder: CorpusEncoder | None,
        engine: str,
        chunk_rows: int,
        shard_rows: int,
        workers: int,
        gpus_per_worker: float,
    ) -> None:
        self.out, self.header, self.reader, self.spec, self.encoder = out, header, reader, spec, encoder
        self.engine, self.chunk_rows, self.shard_rows = engine, chunk_rows, shard_rows
        self.workers, self.gpus_per_worker = workers, gpus_per_worker

    def _stream(self, start: tuple[int, int]) -> Encoded:
        if self.engine == "ray":
            from .ray_engine import ray_engine

            self.encoder = None  # the actors hold the encoders
            return ray_engine(self.spec, self.reader, start, self.chunk_rows, self.workers, self.gpus_per_worker)
        assert self.encoder is not None
        return local_engine(self.encoder, self.reader, start, self.chunk_rows, self.shard_rows)

    def run(self, overwrite: bool, progress: bool, on_shard: Callable[[dict], None] | None, t0: float) -> dict:
        out = self.out
        fresh = not out.exists()
        manifest = prepare(out, self.header, overwrite)
        before = (int(manifest.get("rows", 0)), int(manifest.get("skipped_rows", 0)))
        if manifest.get("done"):
            return _summary(manifest, out, self.engine, t0, before, already=True)
        stream = self._stream(resume_point(manifest))
        sink = ShardSink(out, manifest, self.shard_rows, on_shard)
        bar = _Bar(self.reader.files, sum(before), progress)
        try:
            for chunk, sha, vectors in stream:
                sink.add(chunk, sha, vectors)
                bar.advance(len(chunk))
            manifest = sink.finish()
        except BaseException as e:
            sink.abort()
            if fresh and not manifest["shards"]:  # nothing done: leave no folder behind
                clear_folder(out)
                with contextlib.suppress(OSError):
                    out.rmdir()
            if isinstance(e, OSError) and (err := write_error(e, out)) is not None:
                raise err from e
            raise
        finally:
            bar.stop()
        return _summary(manifest, out, self.engine, t0, before, already=False)


class _Bar:
    """Rows done, rows/s and ETA (once the background count of the inputs gives a total)."""

    def __init__(self, files: Sequence[Path], done: int, enabled: bool) -> None:
        self.progress = None
        if not enabled:
            return
        from ..progress import make_progress

        self.counter = TotalCounter(files)
        self.counter.start()
        self.progress = make_progress(unit="rows")
        self.progress.start()
        self.task = self.progress.add_task("Embedding", total=None, completed=done)
        self.total_set = False

    def advance(self, n: int) -> None:
        if self.progress is None:
            return
        if not self.total_set and self.counter.total is not None:
            self.progress.update(self.task, total=self.counter.total)
            self.total_set = True
        self.progress.advance(self.task, n)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _summary(manifest: dict, out: Path, engine: str, t0: float, before: tuple[int, int], already: bool) -> dict:
    seconds = time.perf_counter() - t0
    new_rows = int(manifest["rows"]) - before[0]
    return {
        "output": str(out),
        "done": bool(manifest.get("done")),
        "already_complete": already,
        "engine": engine,
        "rows": int(manifest["rows"]),
        "skipped_rows": int(manifest.get("skipped_rows", 0)),
        "rows_this_run": new_rows,
        "resumed_from_row": before[0] if before[0] else None,
        "shards": len(manifest["shards"]),
        "dimension": manifest["dimension"],
        "dtype": manifest["dtype"],
        "precision": manifest.get("precision", manifest["dtype"]),
        "width": manifest.get("width", manifest["dimension"]),
        "model": manifest["model"]["ref"],
        "variant": manifest["model"].get("variant"),
        "seconds": round(seconds, 3),
        "rows_per_s": round(new_rows / seconds, 1) if seconds > 0 else None,
    }


def _version() -> str:
    from .. import __version__

    return __version__
