"""CoSENTLoss: a pairwise ranking loss on (sentence1, sentence2, score) rows."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ...models.similarity import check_similarity_fn_name, get_similarity
from .base import Loss, as_float_labels


def cosent_loss(scores: Tensor, labels: Tensor, scale: float) -> Tensor:
    """log(1 + sum over pairs (i, j) with label_i < label_j of exp(scale * (s_i - s_j)))."""
    scores = scores * scale
    diff = scores[:, None] - scores[None, :]
    mask = (labels[:, None] < labels[None, :]).to(diff.dtype)
    diff = diff - (1 - mask) * 1e12
    diff = torch.cat((torch.zeros(1, device=diff.device, dtype=diff.dtype), diff.view(-1)))
    return torch.logsumexp(diff, dim=0)


class CoSENTLoss(Loss):
    """For every two pairs whose gold scores are ordered, pushes their predicted similarities into
    the same order: ``log(1 + sum exp(scale * (s_low - s_high)))``. Labels may be on any scale."""

    min_inputs = 2
    max_inputs = 2
    needs_label = True

    def __init__(self, model: nn.Module, scale: float = 20.0, similarity_fn_name: str = "cosine") -> None:
        super().__init__(model)
        self.scale = float(scale)
        self.similarity_fn_name = check_similarity_fn_name(similarity_fn_name)

    def pair_similarity(self) -> Callable[[Tensor, Tensor], Tensor]:
        return get_similarity(self.similarity_fn_name, pairwise=True)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        a, b = embeddings
        labels = as_float_labels(labels, type(self).__name__, a.device)
        return cosent_loss(self.pair_similarity()(a, b), labels, self.scale)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": self.similarity_fn_name}
