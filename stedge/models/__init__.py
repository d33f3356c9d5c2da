"""Torch models: SentenceEncoder, CrossEncoder and the sentence-transformers modules."""
from .cross_encoder import CrossEncoder
from .encoder import SentenceEncoder
from .modules import Dense, Normalize, Pooling, Transformer
from .similarity import SIMILARITY_FUNCTIONS, get_similarity

__all__ = ["SentenceEncoder", "CrossEncoder", "Transformer", "Pooling", "Dense", "Normalize", "SIMILARITY_FUNCTIONS", "get_similarity"]
