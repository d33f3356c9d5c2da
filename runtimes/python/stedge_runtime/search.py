"""Exact top-k search over float32, int8/uint8 or binary/ubinary corpus vectors (numpy only), with rescoring.

    from stedge_runtime import Encoder, quantize_embeddings, search
    enc = Encoder.load("models/minilm-stedge")                 # calibrated: `stedge calibrate`
    corpus = enc.encode(docs, precision="ubinary")             # 48 bytes per 384-d vector
    hits = search(enc.encode(queries), corpus, "ubinary", top_k=10, rescore_multiplier=4)
    hits.indices[0], hits.scores[0]                            # best first

How it scores (higher is better):

* ``float32``: dot product (cosine for normalized embeddings).
* ``int8`` / ``uint8``: a float query is quantized with the same ``ranges`` and scored by the
  integer dot product of the centred codes (uint8 is shifted by -128, so both give the same order),
  computed exactly through float BLAS.
* ``binary`` / ``ubinary``: a float query is binarized and scored by minus the Hamming distance
  (popcount of XOR over 64-bit words).

Rescoring (``rescore_multiplier=M``, float queries only): the best ``M * top_k`` candidates of
the quantized search are scored again with the float query, against the candidate's bits (0/1,
as sentence-transformers does) for binary, or against the dequantized values (the middle of each
bucket of ``ranges``) for int8/uint8; the best ``top_k`` of those are returned with the float scores.

This is exact brute force: every query is compared with every corpus vector, in chunks of
``chunk_size`` corpus rows so memory stays bounded. It suits corpora up to a few hundred thousand
vectors on a device (a 1M x 384 binary corpus is 48 MB and one query scans it in tens of
milliseconds). For millions of vectors, many queries per second, or an index that updates, use
an index library: faiss (``IndexBinaryFlat`` / ``IndexBinaryHNSW``, ``IndexHNSWFlat``) or usearch
(``metric="hamming"``, ``dtype="i8"``); ``sentence_transformers.quantization.semantic_search_faiss``
/ ``semantic_search_usearch`` wrap them with the same precisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .quantization import as_ubinary, check_precision, check_ranges, dequantize, quantize_embeddings

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class SearchResult:
    """Top-k hits per query, best first: ``indices`` (n_queries, k) corpus rows, ``scores`` (n_queries, k)."""

    indices: np.ndarray
    scores: np.ndarray

    def to_lists(self) -> list[list[dict[str, Any]]]:
        """[[{"corpus_id": row, "score": s}, ...] per query], the shape sentence-transformers returns."""
        return [
            [{"corpus_id": int(i), "score": float(s)} for i, s in zip(ri, rs)]
            for ri, rs in zip(self.indices, self.scores)
        ]


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, -1).sum(-1)


def _words(packed: np.ndarray) -> np.ndarray:
    """Packed bytes viewed as uint64 words when the width allows (8x fewer XOR/popcount operations)."""
    packed = np.ascontiguousarray(packed)
    return packed.view(np.uint64) if packed.shape[1] % 8 == 0 else packed


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances between packed uint8 bit vectors of equal width."""
    wa, wb = _words(a), _words(b)
    out = np.empty((len(wa), len(wb)), dtype=np.int32)
    step = max(1, 4_000_000 // max(1, len(wb) * wb.shape[1]))  # bound the (step, n_b, words) temporary
    for s in range(0, len(wa), step):
        x = np.bitwise_xor(wa[s : s + step, None, :], wb[None, :, :])
        out[s : s + step] = _popcount(x).sum(-1, dtype=np.int32)
    return out


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        key = -scores
        if np.issubdtype(scores.dtype, np.integer):  # Hamming / int8 scores tie often: lower row wins, always
            key = key.astype(np.int64) * scores.shape[1] + np.arange(scores.shape[1])
        idx = np.argpartition(key, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)  # best score first, lower corpus row on ties
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _check_inputs(query: np.ndarray, corpus: np.ndarray, precision: str) -> tuple[bool, int]:
    """(query is float, float dimension); InputError on mismatched dtypes or widths."""
    if corpus.ndim != 2:
        raise InputError(f"corpus_embeddings must be 2-D (n, width), got shape {corpus.shape}")
    if query.ndim != 2:
        raise InputError(f"query_embeddings must be 2-D (n, width), got shape {query.shape}")
    want = {
        "float32": (np.float32, np.float64, np.float16),
        "int8": (np.int8,),
        "uint8": (np.uint8,),
        "binary": (np.int8,),
        "ubinary": (np.uint8,),
    }[precision]
    if corpus.dtype not in want:
        raise InputError(
            f"corpus_embeddings are {corpus.dtype}, but precision {precision!r} stores "
            f"{np.dtype(want[0]).name}: pass the precision they were quantized to"
        )
    packed = precision in ("binary", "ubinary")
    dim = corpus.shape[1] * 8 if packed else corpus.shape[1]
    q_float = np.issubdtype(query.dtype, np.floating)
    if q_float and query.shape[1] != dim:
        raise InputError(
            f"query_embeddings have dimension {query.shape[1]}, the corpus has {dim}"
            + (f" ({corpus.shape[1]} packed bytes)" if packed else "")
            + ": embed both with the same model"
        )
    if not q_float and (query.dtype != corpus.dtype or query.shape[1] != corpus.shape[1]):
        raise InputError(
            f"quantized query_embeddings ({query.dtype}, width {query.shape[1]}) do not match the "
            f"corpus ({corpus.dtype}, width {corpus.shape[1]}): pass float queries or quantize "
            "both the same way"
        )
    return q_float, dim


def _scores(q: np.ndarray, c: np.ndarray, precision: str) -> np.ndarray:
    """Quantized-space scores (higher is better) of quantized queries against a corpus chunk."""
    if precision == "float32":
        return q @ c.T
    if precision in ("binary", "ubinary"):
        return -hamming_distances(as_ubinary(q, precision), as_ubinary(c, precision))
    if precision == "uint8":  # centre uint8 codes like int8: u - 128 is the byte u ^ 0x80 read as int8
        q, c = (q ^ np.uint8(0x80)).view(np.int8), (c ^ np.uint8(0x80)).view(np.int8)
    if len(q) <= 8:  # a few queries: einsum casts on the fly, no float copy of the corpus
        acc = np.int32 if q.shape[1] * 128 * 128 < 2**31 else np.int64
        return np.einsum("qd,cd->qc", q, c, dtype=acc, casting="unsafe").astype(np.int64)
    # many queries: float BLAS, exact while dim * 128 * 128 < 2**24 (float32) or 2**53 (float64)
    ftype = np.float32 if q.shape[1] * 128 * 128 < 2**24 else np.float64
    return (q.astype(ftype) @ c.astype(ftype).T).astype(np.int64)


def _rescore(
    query: np.ndarray, corpus: np.ndarray, idx: np.ndarray, precision: str, ranges: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    cand = corpus[idx]  # (n_q, m*k, width)
    if precision in ("binary", "ubinary"):
        vals = np.unpackbits(as_ubinary(cand, precision), axis=-1).astype(np.float32)
    elif precision == "float32":
        vals = cand.astype(np.float32)
    else:
        vals = dequantize(cand, precision, ranges)
    scores = np.einsum("qd,qkd->qk", query.astype(np.float32), vals)
    order = np.lexsort((idx, -scores), axis=1)[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(scores, order, axis=1)


def search(
    query_embeddings: Any,
    corpus_embeddings: Any,
    precision: str = "float32",
    top_k: int = 10,
    ranges: np.ndarray | None = None,
    rescore_multiplier: int | None = None,
    chunk_size: int = 100_000,
) -> SearchResult:
    """Exact top-k of every query over a corpus stored in ``precision`` (see the module docstring).

    ``query_embeddings``: float (n, dim) (quantized here, needed for rescoring) or already quantized
    like the corpus. ``ranges``: the calibration ranges the int8/uint8 corpus was quantized with
    (needed for float queries and rescoring). ``rescore_multiplier``: M >= 1 rescores the best
    M * top_k candidates with the float query; None or 0 does not.
    """
    precision = check_precision(precision)
    query = np.atleast_2d(np.asarray(query_embeddings))
    corpus = np.asarray(corpus_embeddings)
    q_float, dim = _check_inputs(query, corpus, precision)
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k must be an integer >= 1, got {top_k!r}")
    rescore = bool(rescore_multiplier)
    if rescore and (not isinstance(rescore_multiplier, (int, np.integer)) or rescore_multiplier < 1):
        raise InputError(
            f"rescore_multiplier must be an integer >= 1 (or None for no rescoring), got {rescore_multiplier!r}"
        )
    if rescore and not q_float:
        raise InputError("rescoring needs float query embeddings; pass them unquantized")
    if precision in ("int8", "uint8") and (q_float or rescore):
        if ranges is None:
            raise InputError(
                f"a {precision} corpus needs the ranges it was quantized with (ranges=) to quantize "
                "float queries and to rescore"
            )
        ranges = check_ranges(ranges, dim)
    q = quantize_embeddings(query, precision, ranges=ranges) if q_float else query
    if precision == "float32":
        q = q.astype(np.float32)
    if len(corpus) == 0 or len(query) == 0:
        empty = np.zeros((len(query), 0))
        return SearchResult(empty.astype(np.int64), empty.astype(np.float32))
    first_k = top_k * int(rescore_multiplier) if rescore else top_k
    best_i = best_v = None
    for start in range(0, len(corpus), chunk_size):
        chunk = corpus[start : start + chunk_size]
        if precision == "float32":
            chunk = chunk.astype(np.float32, copy=False)
        idx, vals = _top_k(_scores(q, chunk, precision), first_k)
        idx = idx + start
        if best_i is not None:
            idx, vals = np.concatenate([best_i, idx], 1), np.concatenate([best_v, vals], 1)
            keep, vals = _top_k(vals, first_k)
            idx = np.take_along_axis(idx, keep, axis=1)
        best_i, best_v = idx, vals
    if rescore:
        best_i, best_v = _rescore(query, corpus, best_i, precision, ranges, top_k)
    return SearchResult(best_i.astype(np.int64), best_v.astype(np.float32))
