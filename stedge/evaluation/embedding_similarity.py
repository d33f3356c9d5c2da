"""EmbeddingSimilarityEvaluator: Spearman and Pearson correlation of embedding similarity with gold scores."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import StedgeError
from .base import Evaluator, encode_unique, pairwise_scores, scores_pairs

ALL_SIMILARITIES = ("cosine", "euclidean", "manhattan", "dot")


def _name_from_path(path: str | os.PathLike) -> str:
    """'stsb/test.tsv.gz' -> 'stsb-test'."""
    from pathlib import Path

    p = Path(str(path))
    stem = p.name.split(".")[0]
    return f"{p.parent.name}-{stem}" if p.parent.name else stem


class EmbeddingSimilarityEvaluator(Evaluator):
    """STS-style evaluation: for sentence pairs with gold scores, the correlation between the
    scores and the similarity of the embeddings, for cosine, euclidean, manhattan and dot.

    Metrics (prefixed with ``name``): ``pearson_<fn>`` and ``spearman_<fn>``; the primary one is
    ``spearman_<main_similarity>`` (cosine by default). Values are correlations in [-1, 1].
    A cross-encoder (a model with ``predict`` and no ``encode``) is rated by its own pair scores instead:
    ``pearson`` and ``spearman``, primary ``spearman``.
    """

    csv_prefix = "similarity_evaluation"

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        scores: Sequence[float],
        name: str = "",
        batch_size: int = 32,
        main_similarity: str = "cosine",
        similarity_fn_names: Sequence[str] = ALL_SIMILARITIES,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ) -> None:
        super().__init__(name=name, batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv)
        if not (len(sentences1) == len(sentences2) == len(scores)):
            raise StedgeError(
                f"EmbeddingSimilarityEvaluator: sentences1 ({len(sentences1)}), sentences2 ({len(sentences2)}) and "
                f"scores ({len(scores)}) differ in length"
            )
        if len(scores) < 2:
            raise StedgeError("EmbeddingSimilarityEvaluator needs at least 2 scored pairs")
        self.sentences1 = list(sentences1)
        self.sentences2 = list(sentences2)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.similarity_fn_names = [s for s in similarity_fn_names]
        for s in self.similarity_fn_names + [main_similarity]:
            if s not in ALL_SIMILARITIES:
                raise StedgeError(f"unknown similarity '{s}' (choose from: {', '.join(ALL_SIMILARITIES)})")
        if main_similarity not in self.similarity_fn_names:
            self.similarity_fn_names.append(main_similarity)
        self.main_similarity = main_similarity
        self.prompt_name = prompt_name
        self.prompt = prompt
        self.primary = f"spearman_{main_similarity}"

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, limit: int | None = None, name: str | None = None, **kwargs: Any
    ) -> "EmbeddingSimilarityEvaluator":
        """From an STS file (sentence1, sentence2, score columns; read by stedge.data.read_sts).

        Scores above 1 (STS-B's 0-5 scale) are divided by the maximum to lie in 0-1.
        """

        from ..data import read_sts

        pairs = read_sts(path, limit=limit)
        scores = np.asarray(pairs.scores, dtype=np.float64)
        top = float(scores.max()) if len(scores) else 0.0
        if top > 1:
            scores = scores / top
        if name is None:
            name = _name_from_path(path)
        return cls(pairs.sentences1, pairs.sentences2, scores.tolist(), name=name, **kwargs)

    def compute_metrics(self, model: Any) -> dict[str, float]:
        if scores_pairs(model):
            return self._cross_encoder_metrics(model)
        from scipy.stats import pearsonr, spearmanr

        self.primary = f"spearman_{self.main_similarity}"
        emb = encode_unique(
            model,
            self.sentences1 + self.sentences2,
            batch_size=self.batch_size,
            prompt_name=self.prompt_name,
            prompt=self.prompt,
            show_progress_bar=self.show_progress_bar,
        )
        n = len(self.sentences1)
        e1, e2 = emb[:n], emb[n:]
        out: dict[str, float] = {}
        for fn in self.similarity_fn_names:
            sims = pairwise_scores(e1, e2, fn)
            out[f"pearson_{fn}"] = float(pearsonr(self.scores, sims)[0])
            out[f"spearman_{fn}"] = float(spearmanr(self.scores, sims)[0])
        return out

    def primary_metric_for(self, model: Any) -> str:
        """The primary metric's full key for ``model``: ``spearman`` for a cross-encoder, else per similarity."""
        return self.prefix("spearman" if scores_pairs(model) else f"spearman_{self.main_similarity}")

    def _cross_encoder_metrics(self, model: Any) -> dict[str, float]:
        """A cross-encoder (``predict(pairs)``: stedge.CrossEncoder, stedge_runtime.Reranker) scores each pair
        itself; its ``pearson`` and ``spearman`` with the gold scores, as sentence-transformers'
        CrossEncoderCorrelationEvaluator reports them (primary: ``spearman``)."""
        from scipy.stats import pearsonr, spearmanr

        pairs = list(zip(self.sentences1, self.sentences2))
        pred = np.asarray(model.predict(pairs, batch_size=self.batch_size), dtype=np.float64)
        if pred.ndim != 1 or len(pred) != len(pairs):
            raise StedgeError(
                f"EmbeddingSimilarityEvaluator: the cross-encoder returned shape {pred.shape} for {len(pairs)} pairs; "
                "STS correlation needs one score per pair (num_labels=1)"
            )
        self.primary = "spearman"
        return {"pearson": float(pearsonr(self.scores, pred)[0]), "spearman": float(spearmanr(self.scores, pred)[0])}

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "main_similarity": self.main_similarity,
            **({"prompt_name": self.prompt_name} if self.prompt_name else {}),
        }
