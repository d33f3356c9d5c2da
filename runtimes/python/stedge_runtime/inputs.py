"""Argument checks and result shapes shared by the runtime and the torch side (one implementation).

``stedge_runtime.Encoder`` / ``Reranker`` and ``stedge.models.SentenceEncoder`` / ``CrossEncoder`` call
these, so a prompt, a pair or a ranking means the same thing whichever engine runs the model.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import InputError


def resolve_prompt(
    prompts: Mapping[str, str],
    default_prompt_name: str | None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> str | None:
    """The prompt text to prepend: ``prompt``, else ``prompts[prompt_name]``, else the default prompt, else None."""
    if prompt is not None:
        return prompt
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return None
    if name not in prompts:
        raise InputError(
            f"prompt_name {name!r} not found; this model's prompts: {', '.join(sorted(prompts)) or 'none'}"
        )
    return prompts[name]


def as_pairs(pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    """(list of (a, b) string pairs, whether one bare pair was given); a clear TypeError for anything else."""
    single = isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
    items = [pairs] if single else list(pairs)
    for i, p in enumerate(items):
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p)):
            raise TypeError(f"pairs[{i}] must be a (str, str) pair, got {type(p).__name__}")
    return [(p[0], p[1]) for p in items], single


def rank_documents(
    score: Callable[[list[tuple[str, str]]], np.ndarray],
    query: str,
    documents: Sequence[str],
    num_labels: int,
    top_k: int | None = None,
    return_documents: bool = False,
) -> list[dict]:
    """Documents sorted by ``score`` of (query, document), best first: [{corpus_id, score(, text)}]."""
    if not isinstance(query, str):
        raise TypeError(f"query must be str, got {type(query).__name__}")
    docs = list(documents)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"documents[{i}] is {type(d).__name__}, expected str")
    if num_labels != 1:
        raise InputError(f"rank needs a single-score model; this one has {num_labels} labels (use predict)")
    scores = np.asarray(score([(query, d) for d in docs]) if docs else np.zeros(0, np.float32))
    order = np.argsort(-scores, kind="stable")[: top_k if top_k is not None else None]
    out = []
    for i in order:
        r: dict[str, Any] = {"corpus_id": int(i), "score": float(scores[i])}
        if return_documents:
            r["text"] = docs[i]
        out.append(r)
    return out
