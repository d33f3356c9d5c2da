"""SoftmaxLoss: a linear classifier over (u, v, |u - v|) trained with cross-entropy (NLI-style)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import StedgeError
from .base import Loss


class SoftmaxLoss(Loss):
    """Classifies each (sentence1, sentence2) pair into ``num_labels`` classes from the
    concatenation of u, v, |u - v| (and u * v when asked). The classifier belongs to the loss,
    so its parameters must be trained too (they are ``loss.classifier.parameters()``)."""

    min_inputs = 2
    max_inputs = 2
    needs_label = True

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        embedding_dimension: int | None = None,
        concatenation_sent_rep: bool = True,
        concatenation_sent_difference: bool = True,
        concatenation_sent_multiplication: bool = False,
    ) -> None:
        super().__init__(model)
        if int(num_labels) < 2:
            raise StedgeError(f"SoftmaxLoss: num_labels must be >= 2, got {num_labels}")
        if embedding_dimension is None:
            embedding_dimension = model.get_sentence_embedding_dimension()
        n = 2 * concatenation_sent_rep + concatenation_sent_difference + concatenation_sent_multiplication
        if n == 0:
            raise StedgeError(
                "SoftmaxLoss: enable at least one of concatenation_sent_rep, _difference, _multiplication"
            )
        self.num_labels = int(num_labels)
        self.embedding_dimension = int(embedding_dimension)
        self.concatenation_sent_rep = concatenation_sent_rep
        self.concatenation_sent_difference = concatenation_sent_difference
        self.concatenation_sent_multiplication = concatenation_sent_multiplication
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else None
        self.classifier = nn.Linear(n * self.embedding_dimension, self.num_labels, device=device)

    def logits(self, a: Tensor, b: Tensor) -> Tensor:
        """Classifier output for two embedding matrices."""
        parts = []
        if self.concatenation_sent_rep:
            parts += [a, b]
        if self.concatenation_sent_difference:
            parts.append(torch.abs(a - b))
        if self.concatenation_sent_multiplication:
            parts.append(a * b)
        return self.classifier(torch.cat(parts, dim=1))

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        if labels is None:
            raise StedgeError("SoftmaxLoss needs class labels (a 'label' column with ids 0..num_labels-1)")
        a, b = embeddings
        target = labels.to(a.device).view(-1).long()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_labels):
            raise StedgeError(
                f"SoftmaxLoss: labels must be class ids 0..{self.num_labels - 1}, found "
                f"{int(target.min())}..{int(target.max())}"
            )
        return nn.functional.cross_entropy(self.logits(a, b), target)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_labels": self.num_labels,
            "concatenation_sent_rep": self.concatenation_sent_rep,
            "concatenation_sent_difference": self.concatenation_sent_difference,
            "concatenation_sent_multiplication": self.concatenation_sent_multiplication,
        }
