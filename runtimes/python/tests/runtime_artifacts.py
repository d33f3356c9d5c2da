"""Artifacts for the runtime tests, written by the one exporter (stedge.export.export_model), so
the runtime is tested against real exporter output."""

from __future__ import annotations

from pathlib import Path


def build_artifact(model_dir: Path, out: Path, openvino: bool = False) -> Path:
    """Export a model folder (sentence encoder or cross-encoder) to ``out``: onnx-fp32, plus
    openvino-fp32 when ``openvino`` is true. Each variant is verified by the exporter."""
    from stedge.export import export_model

    return Path(export_model(str(model_dir), out, backend="all" if openvino else "onnx").path)
