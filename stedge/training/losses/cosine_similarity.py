"""CosineSimilarityLoss: regress the cosine similarity of a pair onto its gold score."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import Loss, as_float_labels


class CosineSimilarityLoss(Loss):
    """MSE between cos(u, v) and the label, which must lie in -1..1 (a 0-5 STS-B score: ``--label-range 0:5``)."""

    min_inputs = 2
    max_inputs = 2
    needs_label = True
    label_bounds = (-1.0, 1.0)  # what a cosine can reach

    def __init__(self, model: nn.Module, loss_fct: nn.Module | None = None) -> None:
        super().__init__(model)
        self.loss_fct = loss_fct if loss_fct is not None else nn.MSELoss()

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        a, b = embeddings
        labels = as_float_labels(labels, "CosineSimilarityLoss", a.device)
        return self.loss_fct(nn.functional.cosine_similarity(a, b), labels)

    def get_config_dict(self) -> dict[str, Any]:
        fct = type(self.loss_fct)
        return {"loss_fct": f"{fct.__module__}.{fct.__name__}"}
