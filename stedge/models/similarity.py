"""Similarity functions shared by SentenceEncoder and the evaluators: cosine, dot, euclidean, manhattan."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import StedgeError

SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")


def _t(x) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    t = t.float()
    return t.unsqueeze(0) if t.dim() == 1 else t


def cos_sim(a, b) -> Tensor:
    """All-pairs cosine similarity."""
    a, b = _t(a), _t(b)
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def dot_score(a, b) -> Tensor:
    """All-pairs dot product."""
    return _t(a) @ _t(b).T


def euclidean_sim(a, b) -> Tensor:
    """All-pairs negative euclidean distance."""
    return -torch.cdist(_t(a), _t(b), p=2.0)


def manhattan_sim(a, b) -> Tensor:
    """All-pairs negative manhattan distance."""
    return -torch.cdist(_t(a), _t(b), p=1.0)


def pairwise_cos_sim(a, b) -> Tensor:
    a, b = _t(a), _t(b)
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def pairwise_dot_score(a, b) -> Tensor:
    return (_t(a) * _t(b)).sum(-1)


def pairwise_euclidean_sim(a, b) -> Tensor:
    return -torch.linalg.vector_norm(_t(a) - _t(b), ord=2, dim=1)


def pairwise_manhattan_sim(a, b) -> Tensor:
    return -(_t(a) - _t(b)).abs().sum(-1)


_ALL = {"cosine": cos_sim, "dot": dot_score, "euclidean": euclidean_sim, "manhattan": manhattan_sim}
_PAIR = {"cosine": pairwise_cos_sim, "dot": pairwise_dot_score, "euclidean": pairwise_euclidean_sim, "manhattan": pairwise_manhattan_sim}


def check_similarity_fn_name(name: str) -> str:
    """Validate a similarity function name (accepts 'cos_sim', 'dot_product' aliases)."""
    alias = {"cos_sim": "cosine", "cos": "cosine", "dot_product": "dot", "dot_score": "dot"}
    name = alias.get(name, name)
    if name not in SIMILARITY_FUNCTIONS:
        raise StedgeError(f"unknown similarity function '{name}' (choose one of: {', '.join(SIMILARITY_FUNCTIONS)})")
    return name


def get_similarity(name: str, pairwise: bool = False) -> Callable[[object, object], Tensor]:
    """The all-pairs (or pairwise) similarity function for a name."""
    name = check_similarity_fn_name(name)
    return (_PAIR if pairwise else _ALL)[name]
