"""MSEEvaluator: how close the student's embeddings are to the teacher's (distillation)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import StedgeError
from .base import Evaluator, encode


class MSEEvaluator(Evaluator):
    """Mean squared error (x100) between the model's embeddings of ``source_sentences`` and
    ``target_embeddings`` (the teacher's). Metrics: ``mse`` and ``negative_mse``; the primary one
    is ``negative_mse`` so that greater is better, as for every other evaluator."""

    csv_prefix = "mse_evaluation"

    def __init__(
        self,
        source_sentences: Sequence[str],
        target_embeddings: Any,
        name: str = "",
        batch_size: int = 32,
        prompt_name: str | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ) -> None:
        super().__init__(name=name, batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv)
        target = np.asarray(target_embeddings, dtype=np.float32)
        if target.ndim != 2 or target.shape[0] != len(source_sentences):
            raise StedgeError(
                f"MSEEvaluator: target_embeddings of shape {target.shape} do not fit {len(source_sentences)} source "
                "sentences"
            )
        self.source_sentences = list(source_sentences)
        self.target_embeddings = target
        self.prompt_name = prompt_name
        self.primary = "negative_mse"

    @classmethod
    def from_teacher(
        cls, source_sentences: Sequence[str], teacher: Any, batch_size: int = 32, **kwargs: Any
    ) -> "MSEEvaluator":
        """Embed the sentences with a teacher model (anything with encode) to get the targets."""
        target = encode(teacher, list(source_sentences), batch_size=batch_size)
        return cls(source_sentences, target, batch_size=batch_size, **kwargs)

    def compute_metrics(self, model: Any) -> dict[str, float]:
        emb = encode(
            model,
            self.source_sentences,
            batch_size=self.batch_size,
            prompt_name=self.prompt_name,
            show_progress_bar=self.show_progress_bar,
        )
        if emb.shape != self.target_embeddings.shape:
            raise StedgeError(
                f"MSEEvaluator: the model gives embeddings of shape {emb.shape}, the targets have "
                f"{self.target_embeddings.shape}"
            )
        mse = float(((emb.astype(np.float64) - self.target_embeddings) ** 2).mean() * 100)
        return {"mse": mse, "negative_mse": -mse}
