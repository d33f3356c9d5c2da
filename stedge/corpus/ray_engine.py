"""The Ray engine of `stedge embed-corpus`: Ray Data reads the inputs (one read task per file) and
`map_batches` encodes them on an actor pool, each actor holding one encoder (a `stedge_runtime.Encoder`
for an artifact); the driver receives the vectors in corpus order and writes the same shards as the
local engine, so resume works the same way and either engine may continue the other's run.

On an existing cluster (``--address``) the inputs and the model must be readable at the same paths on
every node, and stedge (with stedge-runtime and its engine) installed there.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import StedgeError, require
from .encoder import CorpusEncoder, ModelSpec
from .reader import Chunk, CorpusReader
from .shards import hash_texts

PROBE_TIMEOUT_S = 5.0


def _probe(address: str) -> None:
    """Fail fast with the address named when nothing answers there (ray.init would wait a long time)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise StedgeError(f"--address {address!r}: expected host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as e:
        raise StedgeError(
            f"Ray address {address} does not answer ({e}): start the cluster there "
            "(`ray start --head`) or fix --address"
        ) from None


def connect(address: str | None, workers: int) -> Any:
    """Join the Ray cluster at ``address`` (or start a local instance) unless Ray is already initialized."""
    if workers < 1:
        raise StedgeError(f"--workers must be >= 1, got {workers}")
    ray = require("ray", "ray", "--engine ray")
    require("ray.data", "ray", "--engine ray")
    if address:
        _probe(address)
    if ray.is_initialized():
        return ray
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as e:  # ConnectionError, RuntimeError... from ray
        where = f"Ray address {address}" if address else "a local Ray instance"
        raise StedgeError(f"could not connect to {where} ({type(e).__name__}: {e})") from None
    return ray


def _chunk_table(chunk: Chunk):
    import pyarrow as pa

    n = len(chunk)
    return pa.table(
        {
            "file": pa.array([chunk.file] * n, pa.int32()),
            "record": pa.array(chunk.records, pa.int64()),
            "line": pa.array(chunk.lines, pa.int64()),
            "id": pa.array(chunk.ids, pa.string()),
            "text": pa.array(chunk.texts, pa.string()),
            "error": pa.array(chunk.errors, pa.string()),
        }
    )


def _datasource(reader: CorpusReader, start: tuple[int, int], chunk_rows: int):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class CorpusDatasource(Datasource):
        """One read task per input file, in corpus order, from the resume point on."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_name(self) -> str:
            return "StedgeCorpus"

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list:
            tasks = []
            for fi in range(start[0], len(reader.files)):
                first = (fi, start[1] if fi == start[0] else 0)

                def read(first=first, fi=fi):
                    for chunk in reader.chunks(first, chunk_rows, end_file=fi + 1):
                        yield _chunk_table(chunk)

                meta = BlockMetadata(
                    num_rows=None, size_bytes=None, input_files=[str(reader.files[fi])], exec_stats=None
                )
                tasks.append(ReadTask(read, meta))
            return tasks

    return CorpusDatasource()


class EncodeActor:
    """A Ray actor: one encoder, opened once, encoding the good rows of each batch."""

    def __init__(self, spec: ModelSpec) -> None:
        self.encoder = CorpusEncoder(spec)

    def __call__(self, batch):
        import pyarrow as pa

        texts = batch.column("text").to_pylist()
        good = [t for t, e in zip(texts, batch.column("error").to_pylist()) if e is None]
        vec = self.encoder.encode(good)
        full = np.zeros((len(texts), self.encoder.dimension), dtype=np.float32)
        mask = np.array([t is not None for t in texts], dtype=bool)
        full[mask] = vec
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), self.encoder.dimension)
        return (
            batch.drop_columns(["text"])
            .append_column("sha", pa.array(hash_texts(texts), pa.string()))
            .append_column("vector", vectors)
        )


def ray_engine(
    spec: ModelSpec, reader: CorpusReader, start: tuple[int, int], chunk_rows: int, workers: int, gpus_per_worker: float
) -> Iterator[tuple[Chunk, list, np.ndarray]]:
    """Encode on the Ray actor pool; yields ``(chunk, text hashes, vectors of its good records)`` in corpus order."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    import inspect

    # reading is light: no CPU reserved for it, so the actors get them all (named argument since Ray 2.5x)
    light = (
        {"num_cpus": 0}
        if "num_cpus" in inspect.signature(ray.data.read_datasource).parameters
        else {"ray_remote_args": {"num_cpus": 0}}
    )
    if Path(spec.model).exists():  # actors run in other working directories
        spec = replace(spec, model=str(Path(spec.model).resolve()))
    ds = ray.data.read_datasource(_datasource(reader.absolute(), start, chunk_rows), **light)
    ds = ds.map_batches(
        EncodeActor,
        fn_constructor_kwargs={"spec": spec},
        batch_size=chunk_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None,
        num_cpus=1,
    )
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            yield from _split(batch)
    except Exception as e:  # a task's error comes wrapped by Ray (RayTaskError, possibly twice)
        if isinstance(e, StedgeError) and getattr(e, "cause", None) is None and e.__cause__ is None:
            raise
        raise _unwrap(e) from None


def _split(batch) -> Iterator[tuple[Chunk, list, np.ndarray]]:
    """A result batch as one chunk per run of rows from the same file."""
    files = batch.column("file").to_numpy()
    cols = {k: batch.column(k).to_pylist() for k in ("record", "line", "id", "error", "sha")}
    dim = batch.schema.field("vector").type.list_size
    vec = batch.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    bounds = [0, *(np.flatnonzero(np.diff(files)) + 1).tolist(), len(files)]
    for a, b in zip(bounds, bounds[1:]):
        if a == b:
            continue
        errors = cols["error"][a:b]
        chunk = Chunk(int(files[a]), cols["record"][a:b], cols["line"][a:b], cols["id"][a:b], [None] * (b - a), errors)
        good = np.array([e is None for e in errors], dtype=bool)
        yield chunk, cols["sha"][a:b], vec[a:b][good]


def _unwrap(e: BaseException) -> BaseException:
    """The StedgeError a Ray task raised (file and line in it), or a StedgeError telling what failed."""
    seen = e
    if isinstance(e, StedgeError) and not type(e).__module__.startswith("ray") and not hasattr(e, "cause"):
        return e
    for _ in range(10):
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None:
            break
        if isinstance(cause, StedgeError) and not type(cause).__module__.startswith("ray"):
            return cause
        seen = cause
    msg = str(seen).strip().splitlines()
    return StedgeError(f"the Ray job failed: {type(seen).__name__}: {msg[-1] if msg else ''}")
