"""stedge: sentence-embedding models and rerankers from fine-tuning to the edge."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["SentenceEncoder", "CrossEncoder", "__version__"]


def __getattr__(name: str):
    # Lazy: `import stedge` stays cheap (the CLI and the runtime path never pay for torch up front).
    if name in ("SentenceEncoder", "CrossEncoder"):
        from . import models

        return getattr(models, name)
    raise AttributeError(name)
