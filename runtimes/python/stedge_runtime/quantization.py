"""Embedding quantization: float32 embeddings to int8 / uint8 / binary / ubinary vectors (numpy only).

Same names and numbers as ``sentence_transformers.quantization.quantize_embeddings``:

* ``int8`` / ``uint8``: each dimension is cut into 256 buckets between the calibration minimum
  and maximum of that dimension (``ranges``, shape ``(2, dim)``: row 0 the minimums, row 1 the
  maximums); uint8 is the bucket number 0..255, int8 the bucket number - 128. 4x smaller than float32.
* ``binary`` / ``ubinary``: one bit per dimension (value > 0), packed 8 to a byte with
  ``np.packbits``; ubinary is the byte as uint8, binary the byte - 128 as int8. 32x smaller.

Two deliberate differences, both raised as ``InputError`` where sentence-transformers would go on:
int8/uint8 without ``ranges`` or ``calibration_embeddings`` (it falls back to the batch's own
minimum and maximum, so the same text gets different codes in different batches, which breaks an
index), and binary/ubinary for a dimension that is not a multiple of 8 (it pads with zero bits).

Ranges are computed once from calibration embeddings (``calibration_ranges``), stored with the
artifact (``save_ranges`` / ``load_ranges``, see ``stedge calibrate`` and ``stedge export
--calibration``) so that every later call quantizes with the same buckets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InputError

OUTPUT_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
RANGES_FILE = "embedding_ranges.npy"


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of OUTPUT_PRECISIONS, else InputError listing them."""
    if precision not in OUTPUT_PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(OUTPUT_PRECISIONS)}, got {precision!r}")
    return str(precision)


def bytes_per_vector(precision: str, dimension: int) -> int:
    """Storage of one vector: 4*dim (float32), dim (int8/uint8), dim/8 (binary/ubinary)."""
    check_precision(precision)
    if precision == "float32":
        return 4 * int(dimension)
    if precision.endswith("int8"):
        return int(dimension)
    return (int(dimension) + 7) // 8


def _as_float_2d(embeddings: Any, name: str) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # a torch tensor, without importing torch
        embeddings = embeddings.detach().cpu().numpy()
    arr = np.asarray(embeddings)
    if arr.dtype in (np.int8, np.uint8):
        raise InputError(f"{name} must be float embeddings, got {arr.dtype} (already quantized?)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (n, dimension), got shape {arr.shape}")
    return arr


def calibration_ranges(calibration_embeddings: Any) -> np.ndarray:
    """(2, dim) array: per-dimension minimum (row 0) and maximum (row 1) of the calibration embeddings."""
    cal = _as_float_2d(calibration_embeddings, "calibration_embeddings")
    if len(cal) == 0:
        raise InputError("calibration_embeddings is empty: pass at least one embedding (a few hundred is best)")
    return np.vstack((np.min(cal, axis=0), np.max(cal, axis=0)))


def check_ranges(ranges: Any, dimension: int, where: str = "ranges") -> np.ndarray:
    """``ranges`` as an array of shape (2, dimension) with finite values, else InputError."""
    r = np.asarray(ranges)
    if r.shape != (2, dimension):
        raise InputError(f"{where} must have shape (2, {dimension}) (minimums, maximums), got {r.shape}")
    if not np.issubdtype(r.dtype, np.floating) or not np.isfinite(r).all():
        raise InputError(f"{where} must hold finite float values")
    return r


def require_calibration(precision: str, ranges: Any, calibration_embeddings: Any) -> None:
    """InputError when ``precision`` is int8/uint8 and neither ranges nor calibration embeddings are given."""
    if precision in ("int8", "uint8") and ranges is None and calibration_embeddings is None:
        raise InputError(
            f"precision {precision!r} needs calibration ranges: pass ranges= (shape (2, dimension)) or "
            "calibration_embeddings=, or use an artifact calibrated with `stedge calibrate ARTIFACT --texts FILE` "
            "(or exported with `stedge export --calibration TEXTS`)"
        )


def quantize_embeddings(
    embeddings: Any,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Quantize float embeddings (n, dim) to ``precision``, as sentence-transformers does.

    int8/uint8 use ``ranges`` (shape (2, dim)) or, when None, the ranges of
    ``calibration_embeddings``; one of them is required. binary/ubinary need dim % 8 == 0.
    Returns float32 (n, dim), int8/uint8 (n, dim) or int8/uint8 (n, dim // 8).
    """
    precision = check_precision(precision)
    emb = _as_float_2d(embeddings, "embeddings")
    dim = emb.shape[1]
    if precision == "float32":
        return emb.astype(np.float32)
    if precision.endswith("int8"):
        require_calibration(precision, ranges, calibration_embeddings)
        if ranges is None:
            ranges = calibration_ranges(calibration_embeddings)
        ranges = check_ranges(ranges, dim)
        # The same operations in the same dtypes as sentence-transformers, so the codes are identical.
        starts = ranges[0, :]
        steps = (ranges[1, :] - ranges[0, :]) / 255
        steps = np.where(steps == 0, 1, steps)
        q_vals = np.clip(np.floor((emb - starts) / steps), 0, 255)
        if precision == "uint8":
            return q_vals.astype(np.uint8)
        return (q_vals - 128).astype(np.int8)
    if dim % 8:
        raise InputError(
            f"precision {precision!r} packs 8 dimensions per byte; the dimension {dim} is not a multiple of 8"
        )
    packed = np.packbits(emb > 0, axis=-1).reshape(emb.shape[0], -1)
    if precision == "ubinary":
        return packed
    return (packed - 128).astype(np.int8)


def unpack_bits(vectors: np.ndarray, precision: str) -> np.ndarray:
    """binary/ubinary vectors (n, dim/8) back to their bits (n, dim) as uint8 0/1."""
    if precision not in ("binary", "ubinary"):
        raise InputError(f"unpack_bits needs binary or ubinary vectors, got precision {precision!r}")
    return np.unpackbits(as_ubinary(vectors, precision), axis=-1)


def as_ubinary(vectors: np.ndarray, precision: str) -> np.ndarray:
    """The packed bytes as uint8 (binary stores byte - 128 as int8: undo the offset)."""
    v = np.asarray(vectors)
    if precision == "binary":
        return (v.astype(np.int16) + 128).astype(np.uint8)
    return v.astype(np.uint8, copy=False)


def dequantize(vectors: np.ndarray, precision: str, ranges: np.ndarray) -> np.ndarray:
    """int8/uint8 codes back to float32 values: the middle of each bucket of ``ranges``."""
    if precision not in ("int8", "uint8"):
        raise InputError(f"dequantize needs int8 or uint8 vectors, got precision {precision!r}")
    v = np.asarray(vectors)
    r = check_ranges(ranges, v.shape[-1]).astype(np.float32)
    steps = (r[1] - r[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = v.astype(np.float32) + (128 if precision == "int8" else 0)
    return r[0] + (buckets + 0.5) * steps


# ------------------------------------------------------------------------- ranges on disk
def ranges_bytes(ranges: np.ndarray) -> bytes:
    """The exact bytes ``save_ranges`` writes (.npy, float32, shape (2, dim))."""
    import io

    r = np.ascontiguousarray(np.asarray(ranges, dtype=np.float32))
    if r.ndim != 2 or r.shape[0] != 2:
        raise InputError(f"ranges must have shape (2, dimension), got {r.shape}")
    buf = io.BytesIO()
    np.save(buf, r, allow_pickle=False)
    return buf.getvalue()


def save_ranges(path: str | os.PathLike, ranges: np.ndarray) -> str:
    """Write ranges as float32 .npy (same ranges, same bytes) via a temporary file; returns its sha256."""
    data = ranges_bytes(ranges)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def load_ranges(path: str | os.PathLike, dimension: int | None = None) -> np.ndarray:
    """Read ranges written by ``save_ranges`` (float32, shape (2, dim)); ArtifactError when unusable."""
    path = Path(path)
    try:
        r = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ArtifactError(
            f"{path} is missing (the embedding calibration ranges): run `stedge calibrate` again"
        ) from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is not a .npy array of calibration ranges ({e})") from None
    if r.dtype != np.float32 or r.ndim != 2 or r.shape[0] != 2 or (dimension is not None and r.shape[1] != dimension):
        want = f"(2, {dimension})" if dimension is not None else "(2, dimension)"
        raise ArtifactError(f"{path}: expected float32 ranges of shape {want}, got {r.dtype} {r.shape}")
    return r
