"""MarginMSELoss: match the student's margin sim(q, pos) - sim(q, neg) to the teacher's margin."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import StedgeError
from ...models.similarity import check_similarity_fn_name, get_similarity
from .base import Loss


class MarginMSELoss(Loss):
    """(query, positive, negative[, negative...]) rows with the teacher margin as label: a
    number per row (one negative), or per negative, or the teacher's [pos, neg...] scores.
    The similarity is the dot product by default, as in sentence-transformers."""

    min_inputs = 3
    max_inputs = None
    needs_label = True

    def __init__(self, model: nn.Module, similarity_fn_name: str = "dot") -> None:
        super().__init__(model)
        self.similarity_fn_name = check_similarity_fn_name(similarity_fn_name)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        if labels is None:
            raise StedgeError("MarginMSELoss needs the teacher margin as label")
        sim = get_similarity(self.similarity_fn_name, pairwise=True)
        q, pos, negs = embeddings[0], embeddings[1], embeddings[2:]
        b = q.size(0)
        labels = labels.to(q.device, torch.float32)
        if labels.shape == (b, len(negs) + 1):
            labels = labels[:, :1] - labels[:, 1:]
        if labels.shape == (b,):
            labels = labels.unsqueeze(1)
        if labels.shape != (b, len(negs)):
            raise StedgeError(
                f"MarginMSELoss: labels of shape {tuple(labels.shape)} do not fit {len(negs)} negative column(s); "
                f"expected ({b},), ({b}, {len(negs)}) margins or ({b}, {len(negs) + 1}) teacher scores"
            )
        s_pos = sim(q, pos)
        margins = torch.stack([s_pos - sim(q, n) for n in negs], dim=1)
        return nn.functional.mse_loss(margins, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"similarity_fct": self.similarity_fn_name}
