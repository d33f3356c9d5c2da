"""torch -> ONNX with the TorchScript exporter (dynamic batch and sequence axes), weights in an
external data file for all but small graphs, and the check that no external-data location leaves
the artifact folder."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator

from ..errors import InvalidModelError, StedgeError, require
from .graph import GraphSpec, build_graph, example_inputs

logger = logging.getLogger(__name__)

OPSET = 17
# Graphs above this size keep their weights in one external data file beside the graph. protobuf
# refuses messages over 2 GB, and below that the split still pays: onnxruntime memory-maps external
# weights instead of parsing and copying them, which on all-MiniLM-L6-v2 fp32 (90 MB) halves session
# creation (~0.2 s -> ~0.1 s) and lowers the resident memory after load from ~176 MB to ~101 MB.
EXTERNAL_DATA_THRESHOLD = 32 * 2**20
# The one name of a graph's external data file: "<graph file>_data" (model.onnx -> model.onnx_data), what
# sentence-transformers 6 looks for. Graphs written by other tools (onnxruntime.quantization writes
# "<graph file>.data") are re-saved to it; artifacts written that way before still load (the graph names its file).
EXTERNAL_DATA_SUFFIX = "_data"
# transformers releases whose BERT-style models cannot be traced by torch.onnx.export: IndexError in
# masking_utils.sdpa_mask (5.0-5.3 and 5.9+ trace; so does 4.x).
UNTRACEABLE_TRANSFORMERS = ((5, 4, 0), (5, 8, 1))


def check_traceable(version: str | None = None) -> None:
    """Refuse a transformers release that cannot trace models for ONNX export, saying which ones can."""
    from packaging.version import Version

    if version is None:
        import transformers

        version = transformers.__version__
    release = Version(version).release[:3]
    release = release + (0,) * (3 - len(release))
    lo, hi = UNTRACEABLE_TRANSFORMERS
    if lo <= release <= hi:
        raise StedgeError(
            f"transformers {version} cannot trace models for ONNX export (IndexError in masking_utils.sdpa_mask; "
            "affects 5.4.0 to 5.8.1). Install a release that can: pip install 'transformers>=5.9' "
            "(or 'transformers<5.4')"
        )


def _hf_model(model):
    """The transformers model inside a SentenceEncoder (its Transformer module) or a CrossEncoder."""
    t = getattr(model, "transformer", None)
    return getattr(t, "auto_model", None) if t is not None else getattr(model, "model", None)


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run the block with the model's eager attention, then restore the implementation it had.

    transformers picks SDPA by default; traced, SDPA becomes a graph onnxruntime's transformer
    optimizer does not recognise, so O2/O3 would fuse no Attention. The eager path is the
    MatMul-Softmax-MatMul pattern the fusion is written for, and gives the same numbers.
    """
    hf = _hf_model(model)
    config = getattr(hf, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, "eager") or not hasattr(hf, "set_attn_implementation"):
        yield
        return
    try:
        hf.set_attn_implementation("eager")
    except (ValueError, NotImplementedError) as e:  # custom code without eager attention: trace what it has
        logger.warning("exporting with %s attention: could not switch to eager (%s)", current, e)
        yield
        return
    try:
        yield
    finally:
        hf.set_attn_implementation(current)


def _onnx():
    return require("onnx", "onnx", "exporting to ONNX")


def export_onnx(model, task: str, path: str | os.PathLike, opset: int = OPSET) -> GraphSpec:
    """Export a SentenceEncoder / CrossEncoder (on the CPU, eval mode) to ``path`` with pooling inside.

    Graphs over 32 MB keep their weights in one external data file ``<name>_data`` beside the graph.
    Attention is traced in its eager form (see ``eager_attention``).
    """
    import torch

    check_traceable()
    onnx = _onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph, spec = build_graph(model, task)
    args = example_inputs(model, task, spec)
    tmp = path.parent / f".{path.stem}-raw"
    tmp.mkdir(exist_ok=True)
    raw = tmp / "model.onnx"
    try:
        with torch.no_grad(), warnings.catch_warnings(), eager_attention(model):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                args,
                str(raw),
                input_names=spec.inputs,
                output_names=spec.outputs,
                dynamic_axes=spec.dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:  # unsupported ops, data-dependent control flow, custom code
        raise InvalidModelError(
            f"cannot export {type(getattr(model, 'transformer', model)).__name__} "
            f"({_arch(model)}) to ONNX: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "Export a supported architecture (BERT, RoBERTa, XLM-R, MPNet, DistilBERT, ...) or open an issue "
            "with this message"
        ) from e
    proto = onnx.load(str(raw), load_external_data=True)
    save_onnx(proto, path)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return spec


def _arch(model) -> str:
    cfg = getattr(getattr(model, "transformer", None), "config", None) or getattr(model, "config", None)
    archs = getattr(cfg, "architectures", None) or [getattr(cfg, "model_type", "unknown")]
    return ", ".join(map(str, archs))


def needs_external_data(proto) -> bool:
    """Whether a ModelProto is saved with external data (over 32 MB; required over 2 GB)."""
    return proto.ByteSize() > EXTERNAL_DATA_THRESHOLD


def drop_duplicate_nodes(graph) -> int:
    """Remove nodes identical to an earlier one (op, name, inputs, outputs, attributes) and repeated value_info
    entries; then check that node names and outputs are unique. Returns how many nodes were removed.

    onnxruntime's fp16 converter before 1.32 adds one Cast per fp32-kept consumer of an fp16 value, each with the
    same name and output (onnxruntime then refuses the graph: "two nodes with same node name"); the first is kept.
    """
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(keep)
        infos, names = [], set()
        for vi in graph.value_info:
            if vi.name not in names:
                names.add(vi.name)
                infos.append(vi)
        del graph.value_info[:]
        graph.value_info.extend(infos)
    for what, values in (
        ("node name", [n.name for n in graph.node if n.name]),
        ("output", [o for n in graph.node for o in n.output if o]),
    ):
        dup = next((v for v, c in Counter(values).items() if c > 1), None)
        if dup is not None:
            raise StedgeError(
                f"the graph has two nodes with the same {what} {dup!r}, which onnxruntime refuses to load; "
                "upgrade onnxruntime (pip install -U onnxruntime) and export again"
            )
    return removed


def save_onnx(proto, path: str | os.PathLike, external: bool | None = None) -> list[Path]:
    """Save a ModelProto; graphs over 32 MB get one external data file ``<file>_data`` beside it.

    Returns the files written (graph first).
    """
    onnx = _onnx()
    path = Path(path)
    if external is None:
        external = needs_external_data(proto)
    if external:
        location = path.name + EXTERNAL_DATA_SUFFIX
        if (path.parent / location).exists():
            (path.parent / location).unlink()
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=1024,
        )
        check_external_data(path, path.parent)
        return [path, path.parent / location]
    onnx.save_model(proto, str(path))
    return [path]


def normalize_external_data(path: str | os.PathLike) -> list[Path]:
    """Re-save a graph another tool wrote so it follows ``save_onnx``'s layout; return its files (graph first).

    onnxruntime.quantization names external data ``<file>.data``; this rewrites the graph inline
    (up to 32 MB) or with ``<file>_data`` and removes the old data file.
    """
    onnx = _onnx()
    path = Path(path)
    old = [path.parent / loc for loc in external_data_files(path)]
    if not old and path.stat().st_size <= EXTERNAL_DATA_THRESHOLD:
        return [path]
    if old == [path.parent / (path.name + EXTERNAL_DATA_SUFFIX)]:
        return [path, *old]
    proto = onnx.load(str(path), load_external_data=True)
    for f in old:
        f.unlink()
    return save_onnx(proto, path)


def external_data_files(path: str | os.PathLike) -> list[str]:
    """The external-data locations a graph refers to (as written in the file, deduplicated)."""
    onnx = _onnx()
    from onnx.external_data_helper import _get_all_tensors

    proto = onnx.load(str(path), load_external_data=False)
    out: list[str] = []
    for t in _get_all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is None:
                raise InvalidModelError(f"{path}: tensor '{t.name}' has external data without a location")
            if loc not in out:
                out.append(loc)
    return out


def check_external_data(path: str | os.PathLike, root: str | os.PathLike) -> list[Path]:
    """Refuse a graph whose external data would be read from outside ``root``; return the data files.

    Absolute locations, ``..`` escapes and symlinks that leave the folder are all refused.
    """
    path = Path(path)
    root_r = Path(root).resolve()
    files = []
    for loc in external_data_files(path):
        target = (path.parent / loc).resolve()
        if Path(loc).is_absolute() or not target.is_relative_to(root_r):
            raise StedgeError(
                f"{path}: external data location '{loc}' resolves outside the artifact folder {root_r}; "
                "refusing to read it. Re-export the model so its data file sits beside the graph"
            )
        if not target.is_file():
            raise InvalidModelError(f"{path}: external data file '{loc}' is missing; re-export the model")
        files.append(target)
    return files


def graph_io(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Input and output names of an ONNX graph (without loading its weights)."""
    onnx = _onnx()
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]


def load_graph(path: str | os.PathLike):
    """The graph of an ONNX file without its external weights (enough to read nodes and names)."""
    return _onnx().load(str(path), load_external_data=False)
