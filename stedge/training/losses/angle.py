"""AnglELoss: CoSENT over the angle difference of the embeddings seen as complex vectors (AnglE)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .cosent import CoSENTLoss


def pairwise_angle_sim(x: Tensor, y: Tensor) -> Tensor:
    """|sum of (re, im) of x / y| with each embedding split into real and imaginary halves.

    Odd dimensions are padded with one zero, as AnglE and sentence-transformers do.
    """
    if x.shape[1] % 2:
        x = nn.functional.pad(x, (0, 1))
        y = nn.functional.pad(y, (0, 1))
    a, b = torch.chunk(x, 2, dim=1)
    c, d = torch.chunk(y, 2, dim=1)
    z = torch.sum(c**2 + d**2, dim=1, keepdim=True)
    re = (a * c + b * d) / z
    im = (b * c - a * d) / z
    dz = torch.sum(a**2 + b**2, dim=1, keepdim=True) ** 0.5
    dw = torch.sum(c**2 + d**2, dim=1, keepdim=True) ** 0.5
    re = re / (dz / dw)
    im = im / (dz / dw)
    return torch.abs(torch.sum(torch.cat((re, im), dim=1), dim=1))


class AnglELoss(CoSENTLoss):
    """CoSENT with the angle-optimized similarity: avoids the flat regions of cosine near +-1."""

    def __init__(self, model: nn.Module, scale: float = 20.0) -> None:
        super().__init__(model, scale=scale)

    def pair_similarity(self) -> Callable[[Tensor, Tensor], Tensor]:
        return pairwise_angle_sim

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": "pairwise_angle_sim"}
