"""Similarity functions in numpy: the one implementation for the runtime, evaluation and export checks.

The torch side (``stedge.models.similarity``) computes the same four functions on tensors, for
training; a test holds the two equal.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

NAMES = ("cosine", "dot", "euclidean", "manhattan")
ALIASES = {"cos_sim": "cosine", "dot_product": "dot", "dot_score": "dot"}


def check_name(name: str) -> str:
    """The canonical name of a similarity function (aliases accepted), or a clear error."""
    canon = ALIASES.get(name, name)
    if canon not in NAMES:
        raise InputError(f"unknown similarity function {name!r}; choose one of: {', '.join(NAMES)}")
    return canon


def similarity_matrix(name: str, a, b, pairwise: bool = False, dtype=np.float32) -> np.ndarray:
    """All-pairs (n_a, n_b) or row-by-row (n,) similarity: cosine, dot, or negative euclidean/manhattan distance."""
    name = check_name(name)
    a = np.atleast_2d(np.asarray(a, dtype=dtype))
    b = np.atleast_2d(np.asarray(b, dtype=dtype))
    if pairwise and a.shape != b.shape:
        raise InputError(f"pairwise similarity needs equally shaped inputs, got {a.shape} and {b.shape}")
    if not pairwise and a.shape[1] != b.shape[1]:
        raise InputError(f"similarity needs vectors of one width, got {a.shape[1]} and {b.shape[1]}")
    if name == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        name = "dot"
    if pairwise:
        d = a - b
        if name == "dot":
            return (a * b).sum(1)
        return -np.sqrt((d * d).sum(1)) if name == "euclidean" else -np.abs(d).sum(1)
    if name == "dot":
        return a @ b.T
    if name == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
        return -np.sqrt(np.maximum(sq, 0))
    return -np.abs(a[:, None, :] - b[None, :, :]).sum(-1)
