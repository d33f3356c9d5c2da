"""Export stage: ONNX / OpenVINO artifacts with pooling inside the graph, optimized and quantized,
verified against PyTorch, described by stedge.json.

    from stedge.export import export_model
    result = export_model("all-MiniLM-L6-v2", "models/minilm-stedge", quantize="int8")
"""

from __future__ import annotations

__all__ = ["export_model", "ExportResult"]


def __getattr__(name: str):
    # Lazy: the CLI imports this package without paying for torch/onnx.
    if name in ("export_model", "ExportResult"):
        from . import core

        return getattr(core, name)
    raise AttributeError(name)
