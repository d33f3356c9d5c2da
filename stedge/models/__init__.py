"""Torch models: SentenceEncoder, CrossEncoder and the sentence-transformers modules.

Imported lazily, so that `stedge.models.cli` (embed / rank / info on an artifact) never loads torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CrossEncoder": "cross_encoder", "SentenceEncoder": "encoder",
    "Transformer": "modules", "Pooling": "modules", "Dense": "modules", "Normalize": "modules",
    "SIMILARITY_FUNCTIONS": "similarity", "get_similarity": "similarity",
}
__all__ = ["SentenceEncoder", "CrossEncoder", "Transformer", "Pooling", "Dense", "Normalize", "SIMILARITY_FUNCTIONS",
           "get_similarity"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
