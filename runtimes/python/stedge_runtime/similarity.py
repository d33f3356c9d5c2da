"""Similarity functions in numpy: the one implementation for the runtime, evaluation and export checks, and the
agreement measure (cosine, or score agreement for reranker scores) that verification and tuning judge tiers by.

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


def score_agreement(a, b) -> np.ndarray:
    """Per pair, how closely two runs' reranker scores agree ((n,) or (n, k) arrays over the same n pairs -> (n,),
    the worst label column): ``1 - (d / s)**2 / 2``, with ``d`` the pair's score difference and ``s`` the spread
    (standard deviation, pooled over the two runs) of the column's scores over the pairs, floored at -1.

    It is what a cosine would be for an embedding off by the same share of its length, so the precision tiers'
    bars mean the same for both tasks (exact, 0.9999: every score within 1.4 % of the spread; near, 0.99:
    within 14 %). The raw cosine of two score vectors cannot serve: it stays near 1 whenever the scores share
    an offset (sigmoid scores around 0.5, logits around -5), and rated an int8 reranker whose scores were off by
    0.02 on a 0-1 scale exact. A column constant in both runs has no spread: there only equal scores agree."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[0] == 0:
        raise InputError(f"score agreement needs two equally shaped (n,) or (n, k) arrays, got {a.shape} and {b.shape}")
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    spread = np.sqrt((a.var(0) + b.var(0)) / 2)
    d = a - b
    rel = np.divide(d, spread, out=np.where(d == 0, 0.0, np.inf), where=spread > 0)
    return np.maximum(1.0 - rel**2 / 2, -1.0).min(1)


def agreement(task: str, a, b) -> np.ndarray:
    """Per item, how closely two runs' outputs agree: the cosine of each row for embeddings, ``score_agreement``
    for reranker scores (task ``reranking``). Precision tiers, batch invariance and the agreement between variants
    are judged with it (stedge.export.verify, stedge_runtime.tune)."""
    if task == "reranking":
        return score_agreement(a, b)
    return similarity_matrix("cosine", a, b, pairwise=True, dtype=np.float64)
