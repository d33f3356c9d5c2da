"""TripletEvaluator: how often the anchor is more similar to the positive than to the negative."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import StedgeError
from .base import Evaluator, encode_unique, pairwise_scores, similarity_fn_names_for


class TripletEvaluator(Evaluator):
    """Accuracy on (anchor, positive, negative) triplets: sim(a, p) > sim(a, n) + margin.

    Metrics: ``<fn>_accuracy`` for each similarity function (the model's by default, else cosine);
    the primary one is the first function's accuracy.
    """

    csv_prefix = "triplet_evaluation"

    def __init__(
        self,
        anchors: Sequence[str],
        positives: Sequence[str],
        negatives: Sequence[str],
        name: str = "",
        batch_size: int = 32,
        similarity_fn_names: Sequence[str] | None = None,
        margin: float = 0.0,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ) -> None:
        super().__init__(name=name, batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv)
        if not (len(anchors) == len(positives) == len(negatives)):
            raise StedgeError(
                f"TripletEvaluator: anchors ({len(anchors)}), positives ({len(positives)}) and negatives "
                f"({len(negatives)}) differ in length"
            )
        if not anchors:
            raise StedgeError("TripletEvaluator needs at least one triplet")
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.given_fn_names = list(similarity_fn_names) if similarity_fn_names else None
        self.margin = float(margin)
        self.prompt_name = prompt_name
        self.prompt = prompt
        if self.given_fn_names:
            self.primary = f"{similarity_fn_names_for(None, self.given_fn_names)[0]}_accuracy"
        else:
            self.primary = "cosine_accuracy"

    @classmethod
    def from_file(
        cls, path: str, limit: int | None = None, name: str | None = None, **kwargs: Any
    ) -> "TripletEvaluator":
        """From a table with anchor, positive, negative columns (the first three text columns otherwise)."""
        from ..data import read_rows
        from .embedding_similarity import _name_from_path

        rows = read_rows(path)
        if not rows:
            raise StedgeError(f"{path}: no rows")
        cols = list(rows[0])
        names = (
            ["anchor", "positive", "negative"]
            if all(c in cols for c in ("anchor", "positive", "negative"))
            else cols[:3]
        )
        if len(names) < 3:
            raise StedgeError(
                f"{path}: a triplet file needs anchor, positive and negative columns (found: {', '.join(cols)})"
            )
        rows = rows[:limit] if limit else rows
        a, p, n = ([str(r[c]) for r in rows] for c in names)
        return cls(a, p, n, name=name if name is not None else _name_from_path(path), **kwargs)

    def compute_metrics(self, model: Any) -> dict[str, float]:
        fns = similarity_fn_names_for(model, self.given_fn_names)
        self.primary = f"{fns[0]}_accuracy"
        n = len(self.anchors)
        emb = encode_unique(
            model,
            self.anchors + self.positives + self.negatives,
            batch_size=self.batch_size,
            prompt_name=self.prompt_name,
            prompt=self.prompt,
            show_progress_bar=self.show_progress_bar,
        )
        a, p, ng = emb[:n], emb[n : 2 * n], emb[2 * n :]
        out = {}
        for fn in fns:
            pos = pairwise_scores(a, p, fn)
            neg = pairwise_scores(a, ng, fn)
            out[f"{fn}_accuracy"] = float(np.mean(pos > neg + self.margin))
        return out

    def get_config_dict(self) -> dict[str, Any]:
        return {"margin": self.margin} if self.margin else {}
