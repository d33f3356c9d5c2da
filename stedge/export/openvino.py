"""OpenVINO IR: convert the exported ONNX graph (or the torch model) and save
``openvino/openvino_model*.xml`` + ``.bin`` (the names sentence-transformers and optimum-intel look for)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidModelError, require


def _ov():
    return require("openvino", "openvino", "exporting to OpenVINO")


def from_onnx(onnx_path: str | os.PathLike):
    """An ov.Model from an ONNX graph; input/output names are kept."""
    ov = _ov()
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as e:
        raise InvalidModelError(
            f"OpenVINO cannot convert {onnx_path} ({type(e).__name__}: {e}); export with --backend onnx instead"
        ) from e


def from_torch(model, task: str):
    """An ov.Model straight from the torch model (the same wrapper as the ONNX export), names set
    to the graph contract. Used when no ONNX graph is at hand."""
    import torch

    ov = _ov()
    from .graph import build_graph, example_inputs

    graph, spec = build_graph(model, task)
    args = example_inputs(model, task, spec)
    shapes = [(-1, -1) if n != "prompt_length" else (-1,) for n in spec.inputs]
    with torch.no_grad():
        ovm = ov.convert_model(graph, example_input=args, input=[(ov.PartialShape(s), ov.Type.i64) for s in shapes])
    for port, name in zip(ovm.inputs, spec.inputs):
        port.get_tensor().set_names({name})
    for port, name in zip(ovm.outputs, spec.outputs):
        port.get_tensor().set_names({name})
    return ovm


def save(ov_model, xml_path: str | os.PathLike, fp16: bool = False) -> list[Path]:
    """Write ``.xml`` + ``.bin``; weights stay fp32 unless ``fp16``. Returns the two files."""
    ov = _ov()
    xml = Path(xml_path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(xml), compress_to_fp16=fp16)
    return [xml, xml.with_suffix(".bin")]
