"""MSELoss: distillation, the student embedding regresses onto the teacher embedding given as label."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import StedgeError
from .base import Loss


class MSELoss(Loss):
    """Mean squared error between the student's embedding of each input column and the label,
    a teacher embedding (B, D) shared by all columns or one per column (B, columns, D)."""

    min_inputs = 1
    max_inputs = None
    needs_label = True

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        if labels is None:
            raise StedgeError("MSELoss needs the teacher embeddings as the label column")
        if labels.dim() == 2:
            targets = [labels] * len(embeddings)
        elif labels.dim() == 3 and labels.size(1) == len(embeddings):
            targets = [labels[:, i] for i in range(labels.size(1))]
        else:
            raise StedgeError(
                f"MSELoss: labels of shape {tuple(labels.shape)} do not fit {len(embeddings)} input column(s); "
                "expected (batch, dim) or (batch, columns, dim) teacher embeddings"
            )
        losses = []
        for student, teacher in zip(embeddings, targets):
            if student.shape != teacher.shape:
                raise StedgeError(
                    f"MSELoss: student embeddings {tuple(student.shape)} and teacher embeddings "
                    f"{tuple(teacher.shape)} differ in shape"
                )
            losses.append(nn.functional.mse_loss(student, teacher.to(student.device, student.dtype)))
        return torch.stack(losses).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {}
