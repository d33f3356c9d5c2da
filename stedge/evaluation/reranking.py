"""RerankingEvaluator: order each query's candidates (positives + negatives); MRR@k, NDCG@k, MAP.

Works with a cross-encoder (anything with ``predict(pairs, batch_size=...)``: stedge.CrossEncoder,
sentence_transformers.CrossEncoder, stedge_runtime.Reranker) or a bi-encoder (anything with ``encode``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import StedgeError
from .base import Evaluator, all_pairs_scores, encode, scores_pairs, similarity_fn_names_for
from .binary_classification import average_precision


def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Binary-relevance NDCG@k of the order given by ``scores`` (ties averaged as scikit-learn does)."""
    disc = 1.0 / np.log2(np.arange(2, len(scores) + 2))
    disc[k:] = 0
    # tie-aware DCG: every item in a group of equal scores gets the group's mean gain
    order = np.argsort(-scores, kind="stable")
    s, rel = scores[order], relevance[order].astype(np.float64)
    dcg, i = 0.0, 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        dcg += rel[i : j + 1].mean() * disc[i : j + 1].sum()
        i = j + 1
    ideal = float(disc[: int(relevance.sum())].sum())
    return dcg / ideal if ideal > 0 else 0.0


class RerankingEvaluator(Evaluator):
    """``samples``: [{"query": str, "positive": [str, ...], "negative": [str, ...]}]. Samples with no
    positive or no negative are skipped. Metrics: ``map``, ``mrr@<k>``, ``ndcg@<k>`` (primary).

    A model with ``predict`` is used as a cross-encoder (one score per (query, doc) pair); otherwise
    queries and documents are embedded and scored with the model's similarity (cosine by default).
    """

    csv_prefix = "RerankingEvaluator"

    def __init__(
        self,
        samples: Sequence[Mapping[str, Any]],
        name: str = "",
        batch_size: int = 32,
        at_k: int = 10,
        similarity_fn_name: str | None = None,
        query_prompt_name: str | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ) -> None:
        super().__init__(name=name, batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv)
        clean = []
        for i, s in enumerate(samples):
            for key in ("query", "positive", "negative"):
                if key not in s:
                    raise StedgeError(
                        f"RerankingEvaluator: sample {i} has no '{key}' (each sample needs query, positive, negative)"
                    )
            pos = [s["positive"]] if isinstance(s["positive"], str) else list(s["positive"])
            neg = [s["negative"]] if isinstance(s["negative"], str) else list(s["negative"])
            if pos and neg:
                clean.append({"query": s["query"], "positive": pos, "negative": neg})
        if not clean:
            raise StedgeError("RerankingEvaluator: no sample has both a positive and a negative")
        self.samples = clean
        self.at_k = int(at_k)
        self.similarity_fn_name = similarity_fn_name
        self.query_prompt_name = query_prompt_name
        self.primary = f"ndcg@{self.at_k}"

    def _scores(self, model: Any) -> list[np.ndarray]:
        docs = [s["positive"] + s["negative"] for s in self.samples]
        if scores_pairs(model):
            pairs = [(s["query"], d) for s, ds in zip(self.samples, docs) for d in ds]
            flat = np.asarray(model.predict(pairs, batch_size=self.batch_size), dtype=np.float64)
            if flat.ndim != 1:
                raise StedgeError(
                    f"RerankingEvaluator: the cross-encoder returns {flat.shape[1:]} scores per pair; it needs one "
                    "(num_labels=1)"
                )
        else:
            fn = similarity_fn_names_for(model, [self.similarity_fn_name] if self.similarity_fn_name else None)[0]
            q = encode(
                model,
                [s["query"] for s in self.samples],
                batch_size=self.batch_size,
                prompt_name=self.query_prompt_name,
            )
            d = encode(model, [t for ds in docs for t in ds], batch_size=self.batch_size)
            flat, start = [], 0
            for i, ds in enumerate(docs):
                flat.append(all_pairs_scores(q[i : i + 1], d[start : start + len(ds)], fn)[0].astype(np.float64))
                start += len(ds)
            return flat
        out, start = [], 0
        for ds in docs:
            out.append(flat[start : start + len(ds)])
            start += len(ds)
        return out

    def compute_metrics(self, model: Any) -> dict[str, float]:
        mrr, ndcg, ap = [], [], []
        for s, scores in zip(self.samples, self._scores(model)):
            rel = np.array([1] * len(s["positive"]) + [0] * len(s["negative"]))
            order = np.argsort(-scores, kind="stable")[: self.at_k]
            hit = np.flatnonzero(rel[order])
            mrr.append(1.0 / (hit[0] + 1) if len(hit) else 0.0)
            ndcg.append(ndcg_at_k(rel, scores, self.at_k))
            ap.append(average_precision(rel, scores))
        return {
            "map": float(np.mean(ap)),
            f"mrr@{self.at_k}": float(np.mean(mrr)),
            f"ndcg@{self.at_k}": float(np.mean(ndcg)),
        }

    def get_config_dict(self) -> dict[str, Any]:
        return {"at_k": self.at_k}
