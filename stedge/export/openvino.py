"""OpenVINO IR: convert the exported ONNX graph (or the torch model) and save
``openvino/openvino_model*.xml`` + ``.bin`` (the names sentence-transformers and optimum-intel look for)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidModelError, require


def _ov():
    return require("openvino", "openvino", "exporting to OpenVINO")


def from_onnx(onnx_path: str | os.PathLike):
    """An ov.Model from an ONNX graph; input/output names are kept.

    An input the converter merged with the node that reads it carries that node's output name too (the graph of
    a model with ``include_prompt: false``: ``prompt_length`` and ``/encoder/encoder.1/Cast_output_0``), and a
    reader that takes any one of its names (``any_name``) may take the wrong one. Such inputs keep only their
    name in the graph contract."""
    from stedge_runtime.artifact import GRAPH_INPUTS

    ov = _ov()
    try:
        ovm = ov.convert_model(str(onnx_path))
    except Exception as e:
        raise InvalidModelError(
            f"OpenVINO cannot convert {onnx_path} ({type(e).__name__}: {e}); export with --backend onnx instead"
        ) from e
    for port in ovm.inputs:
        names = port.get_names() & set(GRAPH_INPUTS)
        if len(names) == 1 and len(port.get_names()) > 1:
            port.get_tensor().set_names(names)
    return ovm


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


def gather_int8_tables(ov_model) -> list[str]:
    """Make a quantized IR's lookup tables (word, position, token-type embeddings) stay int8 when compiled.

    NNCF leaves each table as int8 constants dequantized before their Gather (``Gather(table * scale)``). In a
    quantized graph OpenVINO's CPU plugin folds that into an fp32 copy of the table for every compilation
    (MiniLM's word table: 47 MB each time; a process with static batch-1 compilations holds ten of them).
    Rewritten as ``Gather(table) * Gather(scale)`` (and the zero point likewise), the rows are dequantized after
    the lookup: the same fp32 values (measured: vectors bit-identical, speed unchanged), and every compilation
    reads the one int8 table of the weights file. Returns the rewritten Gathers' names.
    """
    ov = _ov()
    import openvino.opset13 as ops

    def const(node) -> bool:
        return node.get_type_name() == "Constant"

    def per_row(value, rows: int, indices, axis):
        """A dequantization constant with one value per table row is looked up with the rows; a shared one is not."""
        shape = list(value.get_shape())
        if len(shape) == 2 and shape[0] == rows and shape[1] == 1:
            return ops.gather(value, indices, axis).output(0)
        if all(d == 1 for d in shape[:-1]):
            return value
        return None

    done = []
    for gather in [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "Gather"]:
        axis = gather.input_value(2).get_node()
        scale_mul = gather.input_value(0).get_node()
        if not const(axis) or axis.get_data().tolist() not in (0, [0]) or gather.get_batch_dims() != 0:
            continue
        if scale_mul.get_type_name() != "Multiply" or not const(scale_mul.input_value(1).get_node()):
            continue
        deq = scale_mul.input_value(0).get_node()
        zero = None
        if deq.get_type_name() == "Subtract":
            zero = deq.input_value(1)
            if zero.get_node().get_type_name() == "Convert":  # a uint8 zero point converted to float
                zero = zero.get_node().input_value(0)
            deq = deq.input_value(0).get_node()
        if deq.get_type_name() != "Convert" or not const(deq.input_value(0).get_node()):
            continue
        table = deq.input_value(0)
        if table.get_element_type() not in (ov.Type.i8, ov.Type.u8) or len(table.get_shape()) != 2:
            continue
        if zero is not None and not const(zero.get_node()):
            continue
        rows, indices = table.get_shape()[0], gather.input_value(1)
        scale = per_row(scale_mul.input_value(1), rows, indices, gather.input_value(2))
        zp = per_row(zero, rows, indices, gather.input_value(2)) if zero is not None else None
        if scale is None or (zero is not None and zp is None):
            continue
        name, dtype = gather.get_friendly_name(), deq.get_destination_type()
        rows_int8 = ops.gather(table, indices, gather.input_value(2))
        rows_int8.set_friendly_name(name)  # the lookup keeps its name; the dequantization follows it
        out = ops.convert(rows_int8, dtype)
        if zp is not None:
            out = ops.subtract(out, ops.convert(zp, dtype) if zp.get_element_type() != dtype else zp)
        out = ops.multiply(out, scale)
        out.set_friendly_name(f"{name}/dequantized")
        for target in list(gather.output(0).get_target_inputs()):
            target.replace_source_output(out.output(0))
        done.append(name)
    if done:
        ov_model.validate_nodes_and_infer_types()
    return done
