"""Graph optimization with onnxruntime's transformers optimizer, levels as optimum defines them:

* O1: basic general optimizations (onnxruntime only, no transformer fusions)
* O2: basic + extended general optimizations and transformer fusions (Attention, SkipLayerNorm, BiasGelu...)
* O3: O2 with the fast GELU approximation
* O4: O3 with fp16 (mixed precision, for GPU)

fp16 conversion keeps float32 inputs/outputs and keeps in float32 the pooling/normalization tail of
the graph; when the fp16 graph still overflows (inf/NaN), a wider set of ops is kept in float32.
"""

from __future__ import annotations

import logging
import os
import re

from ..errors import StedgeError, require
from .onnx_graph import drop_duplicate_nodes, save_onnx

logger = logging.getLogger(__name__)

LEVELS: dict[str, dict] = {
    "O1": {"opt_level": 1, "fusions": False, "gelu_approximation": False, "fp16": False},
    "O2": {"opt_level": 2, "fusions": True, "gelu_approximation": False, "fp16": False},
    "O3": {"opt_level": 2, "fusions": True, "gelu_approximation": True, "fp16": False},
    "O4": {"opt_level": 2, "fusions": True, "gelu_approximation": True, "fp16": True},
}

# Hugging Face model_type -> the onnxruntime optimizer's model type with matching fusions.
ORT_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "distilbert": "bert",
    "mpnet": "bert",
    "albert": "bert",
    "deberta-v2": "bert",
    "ernie": "bert",
    "nomic_bert": "bert",
    "modernbert": "bert",
    "bart": "bart",
    "t5": "t5",
    "mt5": "t5",
    "gpt2": "gpt2",
}

# Ops that stay float32 in the second fp16 attempt (numerically sensitive reductions and normalizations).
FP16_SENSITIVE_OPS = [
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "SimplifiedLayerNormalization",
    "Softmax",
    "Pow",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "ReduceMax",
    "Sqrt",
    "Div",
    "Erf",
    "Exp",
]


def check_level(level: str | None) -> str | None:
    """Validate an optimization level name (None, O1-O4)."""
    if level is None:
        return None
    lv = level.upper()
    if lv not in LEVELS:
        raise StedgeError(f"--optimize must be one of {', '.join(LEVELS)}, got {level!r}")
    return lv


def tail_nodes(proto) -> list[str]:
    """Names of the nodes outside the transformer body (pooling, Dense, Normalize, the activation).

    The TorchScript exporter names nodes after their module path: ``/encoder/encoder.0/...`` is the
    transformer of an embedding graph, ``/encoder/encoder.<n>/...`` (n >= 1) its tail, and
    ``/activation/...`` the activation of a reranker graph.
    """
    pat = re.compile(r"^/(encoder/encoder\.([1-9]\d*)|activation)/")
    return [n.name for n in proto.graph.node if n.name and pat.match(n.name)]


def optimize(src: str | os.PathLike, dst: str | os.PathLike, level: str, config, for_gpu: bool = False) -> dict:
    """Optimize ``src`` into ``dst`` at ``level`` (O1-O4). Returns the settings for the manifest."""
    require("onnxruntime", "onnx", "optimizing ONNX graphs")
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    level = check_level(level)
    spec = LEVELS[level]
    hf_type = str(getattr(config, "model_type", "bert"))
    model_type = ORT_MODEL_TYPES.get(hf_type)
    fusions = spec["fusions"] and model_type is not None
    if spec["fusions"] and model_type is None:
        logger.warning(
            "no transformer fusions for model type %r in onnxruntime: %s uses general optimizations only",
            hf_type,
            level,
        )
    model_type = model_type or "bert"
    options = FusionOptions(model_type)
    options.enable_gelu_approximation = spec["gelu_approximation"]
    use_gpu = for_gpu or spec["fp16"]
    num_heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    try:
        opt = optimize_model(
            str(src),
            model_type,
            num_heads,
            hidden,
            opt_level=spec["opt_level"],
            optimization_options=options,
            use_gpu=use_gpu,
            only_onnxruntime=not fusions,
        )
    except Exception as e:
        raise StedgeError(
            f"onnxruntime could not optimize {src} at {level} ({type(e).__name__}: {e}); try a lower --optimize level"
        ) from e
    stats = {k: v for k, v in (opt.get_fused_operator_statistics() or {}).items() if v} if fusions else {}
    save_onnx(opt.model, dst)
    return {
        "level": level,
        "ort_model_type": model_type,
        "opt_level": spec["opt_level"],
        "fusions": fusions,
        "gelu_approximation": spec["gelu_approximation"],
        "for_gpu": use_gpu,
        "fused_operators": stats,
    }


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_ops: list[str] | None = None) -> dict:
    """Convert a float32 graph to float16, float32 inputs/outputs kept; the graph's tail (pooling,
    Normalize) and ``keep_ops`` stay float32. Returns the settings for the manifest."""
    onnx = require("onnx", "onnx", "converting to fp16")
    require("onnxruntime", "onnx", "converting to fp16")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = onnx.load(str(src))
    tail = tail_nodes(proto)
    ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_ops or []))
    model = OnnxModel(proto)
    # symbolic shape inference understands the contrib ops (Attention, SkipLayerNorm) of optimized graphs
    model.convert_float_to_float16(
        use_symbolic_shape_infer=True, keep_io_types=True, op_block_list=ops, node_block_list=tail
    )
    dropped = drop_duplicate_nodes(model.model.graph)
    if dropped:
        logger.info("fp16 graph: dropped %d repeated node(s) made by onnxruntime's converter", dropped)
    save_onnx(model.model, dst)
    return {"keep_io_types": True, "fp32_ops": sorted(set(keep_ops or [])), "fp32_nodes": len(tail)}
