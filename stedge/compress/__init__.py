"""Compression: LoRA merge, layer reduction + distillation, centred PCA.

Each step reads a model directory and writes a model directory (sentence-transformers layout)
with a before/after report (``compression_report.json``) and its lineage (``stedge_lineage.json``
and the model card). Imports are lazy so that registering the CLI stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "find_layer_list": "layers",
    "keep_layers": "layers",
    "spread_layers": "layers",
    "run_merge": "lora",
    "add_pca": "pca",
    "fit_pca": "pca",
    "reduce_dim": "pca",
    "make_student": "distill",
    "run_distill": "distill",
    "teacher_embeddings": "distill",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
