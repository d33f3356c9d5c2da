"""MatryoshkaLoss: train so that the first d dimensions of each embedding work on their own."""

from __future__ import annotations

import random
from typing import Any, Sequence

from torch import Tensor, nn

from ...errors import StedgeError
from .base import Loss, shrink
from .cached_multiple_negatives_ranking import CachedMultipleNegativesRankingLoss


class MatryoshkaLoss(Loss):
    """Wraps another loss: ``sum_d weight_d * loss(embeddings[:, :d] normalized)``.

    The model runs once per batch; each dimension slices the cached full embeddings. With a
    CachedMultipleNegativesRankingLoss inside, the sum over dimensions runs inside its gradient
    cache. ``loss`` is a Loss instance or a loss name (built on the same model);
    ``n_dims_per_step > 0`` samples that many dimensions each step.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Loss | str,
        matryoshka_dims: Sequence[int],
        matryoshka_weights: Sequence[float] | None = None,
        n_dims_per_step: int = -1,
    ) -> None:
        super().__init__(model)
        if isinstance(loss, str):
            from . import get_loss

            loss = get_loss(loss)(model)
        if isinstance(loss, MatryoshkaLoss):
            raise StedgeError("MatryoshkaLoss cannot wrap another MatryoshkaLoss")
        if not hasattr(loss, "compute_loss_from_embeddings"):
            raise StedgeError(
                f"MatryoshkaLoss needs a loss with compute_loss_from_embeddings, got {type(loss).__name__}"
            )
        dims = [int(d) for d in matryoshka_dims]
        if not dims or any(d <= 0 for d in dims):
            raise StedgeError(f"MatryoshkaLoss: matryoshka_dims must be positive integers, got {list(matryoshka_dims)}")
        weights = [1.0] * len(dims) if matryoshka_weights is None else [float(w) for w in matryoshka_weights]
        if len(weights) != len(dims):
            raise StedgeError(f"MatryoshkaLoss: {len(weights)} matryoshka_weights for {len(dims)} matryoshka_dims")
        full = model.get_sentence_embedding_dimension() if hasattr(model, "get_sentence_embedding_dimension") else None
        if full is not None and max(dims) > full:
            raise StedgeError(f"MatryoshkaLoss: matryoshka_dims {dims} exceed the model's embedding dimension {full}")
        pairs = sorted(zip(dims, weights), reverse=True)
        self.loss = loss
        self.matryoshka_dims = tuple(d for d, _ in pairs)
        self.matryoshka_weights = tuple(w for _, w in pairs)
        self.n_dims_per_step = int(n_dims_per_step)

    # The wrapped loss decides the data format.
    @property
    def min_inputs(self) -> int:  # type: ignore[override]
        return self.loss.min_inputs

    @property
    def max_inputs(self) -> int | None:  # type: ignore[override]
        return self.loss.max_inputs

    @property
    def needs_label(self) -> bool:  # type: ignore[override]
        return self.loss.needs_label

    @property
    def label_bounds(self) -> tuple[float, float] | None:  # type: ignore[override]
        return self.loss.label_bounds

    def _dims_this_step(self) -> list[int]:
        idx = list(range(len(self.matryoshka_dims)))
        if 0 < self.n_dims_per_step < len(idx):
            idx = sorted(random.sample(idx, self.n_dims_per_step))
        return idx

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """Weighted sum of the wrapped loss over the truncated, re-normalized embeddings."""
        total: Tensor | float = 0.0
        full = embeddings[0].shape[-1]
        for i in self._dims_this_step():
            d, w = self.matryoshka_dims[i], self.matryoshka_weights[i]
            dim_labels = labels
            # Distillation labels (teacher embeddings of the full width) are truncated alike.
            if isinstance(labels, Tensor) and labels.dim() >= 2 and labels.shape[-1] == full:
                dim_labels = labels[..., :d]
            total = total + w * self.loss.compute_loss_from_embeddings([shrink(e, d) for e in embeddings], dim_labels)
        assert isinstance(total, Tensor)
        return total

    def forward(self, sentence_features, labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        if isinstance(self.loss, CachedMultipleNegativesRankingLoss):
            return self.loss(features, labels, embedding_loss=self.compute_loss_from_embeddings)
        self.check_inputs(len(features), labels is not None)
        return self.compute_loss_from_embeddings(self.embed(features), labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "loss": type(self.loss).__name__,
            "matryoshka_dims": list(self.matryoshka_dims),
            "matryoshka_weights": list(self.matryoshka_weights),
            "n_dims_per_step": self.n_dims_per_step,
        }
