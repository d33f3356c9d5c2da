"""The base class every stedge loss builds on: column checks, embedding, config for the model card."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ...errors import StedgeError


def _plural(n: int) -> str:
    return f"{n} input column{'s' if n != 1 else ''}"


def describe_columns(lo: int, hi: int | None) -> str:
    """'2 input columns', '2 to 3 input columns' or 'at least 2 input columns'."""
    if hi == lo:
        return _plural(lo)
    if hi is None:
        return f"at least {_plural(lo)}"
    return f"{lo} to {hi} input columns"


def shrink(embeddings: Tensor, dim: int) -> Tensor:
    """First ``dim`` components, L2-normalized again (what a truncated Matryoshka embedding is)."""
    if dim > embeddings.shape[-1]:
        raise StedgeError(f"matryoshka dimension {dim} is larger than the embedding dimension {embeddings.shape[-1]}")
    return nn.functional.normalize(embeddings[..., :dim], p=2, dim=-1)


class Loss(nn.Module):
    """A training loss over a SentenceEncoder (sentence-transformers contract).

    ``forward(sentence_features, labels)`` takes one tokenized features dict per input
    column and returns a scalar. Subclasses declare how many input columns they take
    (``min_inputs``/``max_inputs``; ``max_inputs=None`` means no upper limit) and whether
    the data needs a label column (``needs_label``), and implement
    ``compute_loss_from_embeddings``.
    """

    min_inputs: int = 1
    max_inputs: int | None = None
    needs_label: bool = False
    label_bounds: tuple[float, float] | None = None  # the labels the loss can learn from (data outside: an error)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    # ------------------------------------------------------------- contract
    @property
    def expected_columns(self) -> tuple[int, ...] | None:
        """Allowed numbers of input columns, or None when there is no upper limit."""
        if self.max_inputs is None:
            return None
        return tuple(range(self.min_inputs, self.max_inputs + 1))

    def describe_inputs(self) -> str:
        """What this loss takes, in words: '2 input columns and a label'."""
        lab = " and a label column (label/score)" if self.needs_label else ""
        return describe_columns(self.min_inputs, self.max_inputs) + lab

    def check_inputs(self, n_inputs: int, has_label: bool, columns: Iterable[str] | None = None) -> None:
        """Raise StedgeError when ``n_inputs`` columns (and the label) do not fit this loss."""
        found = f"found {_plural(n_inputs)}"
        if columns is not None:
            found += f" ({', '.join(columns)})"
        name = type(self).__name__
        if n_inputs < self.min_inputs or (self.max_inputs is not None and n_inputs > self.max_inputs):
            raise StedgeError(f"{name} expects {self.describe_inputs()}; {found}")
        if self.needs_label and not has_label:
            raise StedgeError(f"{name} needs a label column named 'label' or 'score'; {found} and no label")

    # ---------------------------------------------------------------- compute
    def embed(self, sentence_features: Iterable[dict[str, Tensor]]) -> list[Tensor]:
        """One embedding matrix per input column."""
        return [self.model(features)["sentence_embedding"] for features in sentence_features]

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        self.check_inputs(len(features), labels is not None)
        return self.compute_loss_from_embeddings(self.embed(features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """The loss value from one embedding matrix per column (overridden by each loss)."""
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        """The loss parameters, written into the model card."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_config_dict().items())


def as_float_labels(labels: Tensor | None, loss_name: str, device: torch.device) -> Tensor:
    """Labels as a float vector on ``device`` (error when missing)."""
    if labels is None:
        raise StedgeError(f"{loss_name} needs labels (a 'label' or 'score' column)")
    return labels.to(device=device, dtype=torch.float32).view(-1)
