"""Training losses, one file each, and a registry of the names the CLI and config files accept.

Every loss is ``Loss(model, **params)`` (a torch module) whose ``forward(sentence_features, labels)``
returns a scalar; ``min_inputs``/``max_inputs``/``needs_label`` say what data it takes and
``get_config_dict()`` what goes into the model card.
"""

from __future__ import annotations

from typing import Any

from ...errors import StedgeError
from .angle import AnglELoss
from .base import Loss, shrink
from .cached_multiple_negatives_ranking import CachedMultipleNegativesRankingLoss
from .contrastive import ContrastiveLoss
from .cosent import CoSENTLoss
from .cosine_similarity import CosineSimilarityLoss
from .margin_mse import MarginMSELoss
from .matryoshka import MatryoshkaLoss
from .mse import MSELoss
from .multiple_negatives_ranking import MultipleNegativesRankingLoss
from .softmax import SoftmaxLoss
from .triplet import TripletLoss

__all__ = [
    "Loss",
    "LOSSES",
    "get_loss",
    "build_loss",
    "loss_names",
    "shrink",
    "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss",
    "CoSENTLoss",
    "AnglELoss",
    "CosineSimilarityLoss",
    "SoftmaxLoss",
    "TripletLoss",
    "ContrastiveLoss",
    "MSELoss",
    "MarginMSELoss",
    "MatryoshkaLoss",
]

# Short CLI names first (what `loss_names()` lists), then the class names.
LOSSES: dict[str, type] = {
    "mnrl": MultipleNegativesRankingLoss,
    "cached-mnrl": CachedMultipleNegativesRankingLoss,
    "cosent": CoSENTLoss,
    "angle": AnglELoss,
    "cosine": CosineSimilarityLoss,
    "softmax": SoftmaxLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "mse": MSELoss,
    "margin-mse": MarginMSELoss,
    "matryoshka": MatryoshkaLoss,
}
LOSSES.update({cls.__name__: cls for cls in list(LOSSES.values())})


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_LOOKUP = {_key(k): v for k, v in LOSSES.items()}
_LOOKUP.update(
    {
        "multiple-negatives-ranking": MultipleNegativesRankingLoss,
        "cosine-similarity": CosineSimilarityLoss,
        "cached-multiple-negatives-ranking": CachedMultipleNegativesRankingLoss,
        "cmnrl": CachedMultipleNegativesRankingLoss,
    }
)


def loss_names() -> list[str]:
    """The short loss names (one per loss)."""
    return [k for k, v in LOSSES.items() if k != v.__name__]


def get_loss(name: str) -> type:
    """The loss class for a CLI name or class name (case-insensitive; '_' and '-' alike)."""
    cls = _LOOKUP.get(_key(name)) if isinstance(name, str) else None
    if cls is None:
        raise StedgeError(f"unknown loss '{name}'; known losses: {', '.join(loss_names())} (or their class names)")
    return cls


def build_loss(name: str, model: Any, **params: Any) -> Loss:
    """Instantiate a loss by name with its parameters; bad parameters name the loss and its options."""
    import inspect

    cls = get_loss(name)
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p not in ("self", "model")]
    unknown = [p for p in params if p not in allowed]
    if unknown:
        raise StedgeError(f"{cls.__name__}: unknown parameter(s) {', '.join(unknown)}; it takes: {', '.join(allowed)}")
    return cls(model, **params)
