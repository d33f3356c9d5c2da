"""Evaluators: each is ``Evaluator(..., name="", batch_size=32)`` and is called as
``evaluator(model, output_path=None, epoch=-1, steps=-1) -> {"<name>_<metric>": value}``.

They take any model with ``encode(texts, batch_size=...)`` (stedge.SentenceEncoder,
sentence_transformers.SentenceTransformer, stedge_runtime.Encoder); the reranking evaluator also
takes anything with ``predict(pairs, batch_size=...)`` (cross-encoders).
"""

from __future__ import annotations

from .base import Evaluator, encode
from .binary_classification import BinaryClassificationEvaluator
from .embedding_similarity import EmbeddingSimilarityEvaluator
from .information_retrieval import InformationRetrievalEvaluator, load_beir, ranking_metrics
from .mse import MSEEvaluator
from .reranking import RerankingEvaluator
from .sequential import SequentialEvaluator
from .triplet import TripletEvaluator

__all__ = [
    "Evaluator",
    "encode",
    "EmbeddingSimilarityEvaluator",
    "TripletEvaluator",
    "InformationRetrievalEvaluator",
    "load_beir",
    "ranking_metrics",
    "MSEEvaluator",
    "BinaryClassificationEvaluator",
    "RerankingEvaluator",
    "SequentialEvaluator",
]
