"""ContrastiveLoss: pull similar pairs (label 1) together, push dissimilar ones (label 0) beyond a margin."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import Loss, as_float_labels
from .triplet import get_distance


class ContrastiveLoss(Loss):
    """``0.5 * (y * d^2 + (1 - y) * relu(margin - d)^2)`` with d the cosine distance by default."""

    min_inputs = 2
    max_inputs = 2
    needs_label = True

    def __init__(
        self, model: nn.Module, distance_metric: str = "cosine", margin: float = 0.5, size_average: bool = True
    ) -> None:
        super().__init__(model)
        self.distance = get_distance(distance_metric, "ContrastiveLoss")
        self.distance_metric = distance_metric
        self.margin = float(margin)
        self.size_average = size_average

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        a, b = embeddings
        y = as_float_labels(labels, "ContrastiveLoss", a.device)
        d = self.distance(a, b)
        losses = 0.5 * (y * d.pow(2) + (1 - y) * nn.functional.relu(self.margin - d).pow(2))
        return losses.mean() if self.size_average else losses.sum()

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": self.distance_metric, "margin": self.margin, "size_average": self.size_average}
