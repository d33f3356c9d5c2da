"""TripletLoss: the anchor must be closer to the positive than to the negative by a margin."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ...errors import StedgeError
from .base import Loss

DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "euclidean": lambda x, y: torch.linalg.vector_norm(x - y, ord=2, dim=-1),
    "manhattan": lambda x, y: (x - y).abs().sum(-1),
    "cosine": lambda x, y: 1 - nn.functional.cosine_similarity(x, y),
}
DEFAULT_MARGINS = {"euclidean": 5.0, "manhattan": 5.0, "cosine": 0.5}


def get_distance(name: str, loss_name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name not in DISTANCES:
        raise StedgeError(f"{loss_name}: unknown distance_metric '{name}' (choose one of: {', '.join(DISTANCES)})")
    return DISTANCES[name]


class TripletLoss(Loss):
    """(anchor, positive, negative) rows: ``relu(d(a, p) - d(a, n) + margin)``, averaged.

    ``distance_metric`` is euclidean (default, margin 5 as in sentence-transformers), manhattan
    (margin 5) or cosine (1 - cos, margin 0.5); pass ``triplet_margin`` to override.
    """

    min_inputs = 3
    max_inputs = 3
    needs_label = False

    def __init__(
        self, model: nn.Module, distance_metric: str = "euclidean", triplet_margin: float | None = None
    ) -> None:
        super().__init__(model)
        self.distance = get_distance(distance_metric, "TripletLoss")
        self.distance_metric = distance_metric
        self.triplet_margin = float(DEFAULT_MARGINS[distance_metric] if triplet_margin is None else triplet_margin)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        a, p, n = embeddings
        return nn.functional.relu(self.distance(a, p) - self.distance(a, n) + self.triplet_margin).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {"distance_metric": self.distance_metric, "triplet_margin": self.triplet_margin}
