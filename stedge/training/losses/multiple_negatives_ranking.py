"""MultipleNegativesRankingLoss: InfoNCE with in-batch negatives (and hard negatives from extra columns)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import StedgeError
from ...models.similarity import check_similarity_fn_name, get_similarity
from .base import Loss


def ranking_loss(embeddings: list[Tensor], scale: float, similarity_fn_name: str) -> Tensor:
    """Cross-entropy of each anchor against its positive among all candidates in the batch.

    ``embeddings[0]`` are anchors (B, D), ``embeddings[1]`` their positives, and any further
    columns hard negatives; every positive and negative of the batch is a candidate.
    """
    if len(embeddings) < 2:
        raise StedgeError(f"ranking losses need at least 2 input columns (anchor, positive), got {len(embeddings)}")
    anchors = embeddings[0]
    candidates = torch.cat(embeddings[1:], dim=0)
    scores = get_similarity(similarity_fn_name)(anchors, candidates) * scale
    target = torch.arange(anchors.size(0), device=scores.device)
    return nn.functional.cross_entropy(scores, target)


class MultipleNegativesRankingLoss(Loss):
    """(anchor, positive[, negative...]) rows; each anchor must pick its positive out of every
    positive and negative in the batch. Scores are ``scale * similarity`` (cosine by default)."""

    min_inputs = 2
    max_inputs = None
    needs_label = False

    def __init__(self, model: nn.Module, scale: float = 20.0, similarity_fn_name: str = "cosine") -> None:
        super().__init__(model)
        if scale <= 0:
            raise StedgeError(f"MultipleNegativesRankingLoss: scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.similarity_fn_name = check_similarity_fn_name(similarity_fn_name)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        return ranking_loss(embeddings, self.scale, self.similarity_fn_name)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": self.similarity_fn_name}
