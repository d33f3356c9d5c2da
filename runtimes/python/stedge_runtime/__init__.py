"""stedge_runtime: torch-free Encoder and Reranker over stedge artifacts (numpy + tokenizers + one engine).

from stedge_runtime import Encoder
enc = Encoder.load("models/minilm-artifact")          # best variant for the CPU
vecs = enc.encode(["a query", "a document"])
"""

from __future__ import annotations

from .artifact import FORMAT_VERSION, Manifest, VariantRecord, is_artifact
from .encoder import Encoder, Reranker
from .errors import ArtifactError, DeviceError, InputError, MissingEngine, RuntimeStedgeError
from .quantization import OUTPUT_PRECISIONS, bytes_per_vector, calibration_ranges, quantize_embeddings
from .search import SearchResult, search

__version__ = "0.1.0"

__all__ = [
    "Encoder",
    "Reranker",
    "Manifest",
    "VariantRecord",
    "is_artifact",
    "FORMAT_VERSION",
    "__version__",
    "RuntimeStedgeError",
    "ArtifactError",
    "DeviceError",
    "InputError",
    "MissingEngine",
    "OUTPUT_PRECISIONS",
    "quantize_embeddings",
    "calibration_ranges",
    "bytes_per_vector",
    "search",
    "SearchResult",
]
