"""Quantization: onnxruntime dynamic int8 (per CPU instruction set, as optimum's
AutoQuantizationConfig defines them), onnxruntime static int8 (QDQ, calibrated), and OpenVINO
static int8 / weight-only int8 and int4 with NNCF."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from stedge_runtime.machine import cpu_flags, int8_isa  # noqa: F401  (cpu_flags: the export stage reads it here)

from ..errors import StedgeError, require

logger = logging.getLogger(__name__)

# Instruction set -> dynamic quantization settings (optimum's AutoQuantizationConfig.<isa>).
# avx2 keeps weights unsigned (u8u8) because u8s8 can saturate without VNNI.
ISA_CONFIGS: dict[str, dict] = {
    "avx2": {"weight_type": "QUInt8", "per_channel": True, "reduce_range": False, "weight_symmetric": False},
    "avx512": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False, "weight_symmetric": True},
    "avx512_vnni": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False, "weight_symmetric": True},
    "arm64": {"weight_type": "QInt8", "per_channel": True, "reduce_range": False, "weight_symmetric": True},
}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Static QDQ: the matrix products carry the compute; everything else stays float.
STATIC_OPS = ["MatMul", "Gemm"]


def detect_isa() -> str:
    """The dynamic-quantization target for this CPU: arm64, avx512_vnni, avx512 or avx2
    (``stedge_runtime.machine.int8_isa``, the one owner of CPU detection)."""
    return int8_isa()


def isas_for(choice: str | None) -> list[str]:
    """``auto``/None -> this CPU's ISA; ``all`` -> every ISA; or one/several comma-separated names."""
    if choice is None or choice == "auto":
        return [detect_isa()]
    if choice == "all":
        return list(ISA_CONFIGS)
    out = [c.strip().replace("-", "_") for c in choice.split(",") if c.strip()]
    bad = [c for c in out if c not in ISA_CONFIGS]
    if bad or not out:
        raise StedgeError(f"--isa must be auto, all or one of {', '.join(ISA_CONFIGS)}, got {choice!r}")
    return out


@contextlib.contextmanager
def quiet():
    """Silence the root-logger advice of onnxruntime.quantization and NNCF's INFO tables."""
    root = logging.getLogger()
    loggers = [root, logging.getLogger("nncf")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike, isa: str) -> dict:
    """Dynamic int8 (weights int8, activations quantized on the fly) for one instruction set."""
    require("onnxruntime", "onnx", "int8 quantization")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx_graph import external_data_files, normalize_external_data

    cfg = ISA_CONFIGS[isa]
    with quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=cfg["per_channel"],
            reduce_range=cfg["reduce_range"],
            weight_type=getattr(QuantType, cfg["weight_type"]),
            # DefaultTensorType: optimized graphs hold contrib ops (Attention, SkipLayerNorm) shape inference
            # cannot type
            extra_options={
                "WeightSymmetric": cfg["weight_symmetric"],
                "ActivationSymmetric": False,
                "DefaultTensorType": 1,
            },
            use_external_data_format=bool(external_data_files(src)),
        )
    normalize_external_data(dst)
    return {
        "method": "dynamic",
        "isa": isa,
        "activations": "QUInt8",
        "weights": cfg["weight_type"],
        "per_channel": cfg["per_channel"],
        "reduce_range": cfg["reduce_range"],
        "weight_symmetric": cfg["weight_symmetric"],
    }


class _Reader:
    """onnxruntime CalibrationDataReader over pre-tokenized batches."""

    def __init__(self, batches: list[dict]) -> None:
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def weight_matmuls(path: str | os.PathLike, exclude: Sequence[str] = ()) -> list[str]:
    """Names of the MatMul/Gemm nodes that multiply by a constant weight (not activation x activation)."""
    onnx = require("onnx", "onnx", "static int8 quantization")
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    skip = set(exclude)
    return [
        n.name
        for n in proto.graph.node
        if n.op_type in STATIC_OPS and n.name not in skip and any(i in inits for i in n.input[1:2])
    ]


GELU_OPS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}


def after_gelu_matmuls(path: str | os.PathLike) -> list[str]:
    """MatMul nodes fed by a GELU (the FFN down-projections): their inputs have long-tailed
    outliers that per-tensor uint8 cannot hold, so static quantization keeps them float."""
    onnx = require("onnx", "onnx", "static int8 quantization")
    proto = onnx.load(str(path), load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}

    def gelu_like(name: str, depth: int = 0) -> bool:
        n = producer.get(name)
        if n is None or depth > 4:
            return False
        if n.op_type in GELU_OPS or n.op_type in ("Erf", "Tanh"):
            return True
        return n.op_type in ("Mul", "Add", "Div") and any(gelu_like(i, depth + 1) for i in n.input)

    return [n.name for n in proto.graph.node if n.op_type in STATIC_OPS and n.input and gelu_like(n.input[0])]


def quantize_static_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    batches: list[dict],
    method: str = "minmax",
    exclude_nodes: Sequence[str] = (),
    ffn_down: str = "float",
) -> dict:
    """Static int8 in QDQ format, calibrated on ``batches`` (dicts of numpy inputs, equal shapes).

    The MatMul/Gemm nodes with constant weights are quantized (activations uint8 asymmetric with fixed
    calibrated ranges, weights int8 symmetric per channel), so a text's vector never depends on the other
    texts of its batch. The word-embedding table is int8 too (the gathered rows are dequantized). Attention
    products and the pooling/normalization tail (``exclude_nodes``) stay float. The FFN down-projections (fed
    by GELU, see after_gelu_matmuls) have long-tailed inputs that one static uint8 range cannot hold:
    ``ffn_down="float"`` keeps them float, ``"int8-rows"`` gives them int8 weights with int8 compute on
    activations quantized per row and block (onnxruntime MatMulNBits, accuracy level 4: batch-invariant).
    """
    require("onnxruntime", "onnx", "static int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .onnx_graph import normalize_external_data

    if method not in CALIBRATION_METHODS:
        raise StedgeError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    cm = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    extra = {
        "WeightSymmetric": True,
        "ActivationSymmetric": False,
        "DefaultTensorType": 1,
        "CalibTensorRangeSymmetric": False,
    }
    if method == "minmax":
        extra["CalibMovingAverage"] = True
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    float_ffn = after_gelu_matmuls(src)
    exclude_nodes = list(exclude_nodes) + float_ffn
    with quiet():
        quantize_static(
            str(src),
            str(dst),
            _Reader(batches),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OPS,
            nodes_to_quantize=weight_matmuls(src, exclude_nodes),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=cm,
            nodes_to_exclude=list(exclude_nodes),
            extra_options=extra,
            calibration_providers=["CPUExecutionProvider"],
        )
    embeddings = quantize_embeddings(dst)
    if ffn_down == "int8-rows" and float_ffn:
        int8_rows(dst, float_ffn)
    normalize_external_data(dst)
    return {
        "method": "static",
        "format": "QDQ",
        "calibration_method": method,
        "calibration_batches": len(batches),
        "operators": STATIC_OPS,
        "activations": "QUInt8",
        "weights": "QInt8",
        "per_channel": True,
        "embeddings": "QUInt8 rows dequantized after Gather" if embeddings else None,
        "ffn_down_projections": {"count": len(float_ffn), "as": ffn_down},
        "float_nodes": {"tail": len(exclude_nodes) - len(float_ffn)},
    }


def _replace_graph(path: Path, write) -> None:
    """Rewrite an ONNX file in place through ``write(tmp_path)`` (written beside it, then renamed)."""
    tmp = path.with_name(f".{path.stem}-rewrite.onnx")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def quantize_embeddings(path: str | os.PathLike) -> list[str]:
    """Word-embedding tables (Gather from a constant table) to uint8 in place: onnxruntime's integer Gather
    picks int8 rows, then only those are dequantized (a fixed scale: batch-invariant). Returns the nodes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    proto = require("onnx", "onnx", "int8 quantization").load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    nodes = [
        n.name
        for n in proto.graph.node
        if n.op_type == "Gather" and n.input[0] in inits and "word_embeddings" in n.input[0]
    ]
    if nodes:
        with quiet():
            _replace_graph(
                path,
                lambda tmp: quantize_dynamic(
                    str(path),
                    str(tmp),
                    op_types_to_quantize=["Gather"],
                    nodes_to_quantize=nodes,
                    per_channel=False,
                    weight_type=QuantType.QUInt8,
                    extra_options={"DefaultTensorType": 1},
                ),
            )
    return nodes


def int8_rows(path: str | os.PathLike, nodes: Sequence[str], block_size: int = 32) -> None:
    """The float MatMuls ``nodes`` to onnxruntime MatMulNBits, 8 bits, symmetric blocks of ``block_size``,
    accuracy level 4 (int8 compute on activations quantized per row and block), in place."""
    require("onnx_ir", "onnx", "int8 MatMulNBits quantization")
    onnx = require("onnx", "onnx", "int8 quantization")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    path = Path(path)
    proto = onnx.load(str(path))
    opset = {o.domain: o.version for o in proto.opset_import}.get("", 17)
    q = MatMulNBitsQuantizer(
        proto,
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_include=list(nodes),
        op_types_to_quantize=("MatMul",),
    )
    with quiet():
        q.process()
    for op in q.model.model.opset_import:  # the quantizer raises the opset; only contrib ops were added
        if op.domain in ("", "ai.onnx"):
            op.version = opset
    _replace_graph(path, lambda tmp: q.model.save_model_to_file(str(tmp), use_external_data_format=False))


# ------------------------------------------------------------------ OpenVINO / NNCF
# The graph's tail (pooling, Dense, Normalize / the reranker activation) stays float.
OV_IGNORED_PATTERNS = [r".*/encoder/encoder\.[1-9]\d*/.*", r".*/activation/.*"]
OV_SMOOTH_QUANT_ALPHA = 0.5


def ov_quantize_static(
    ov_model,
    batches: list[dict],
    task: str,
    smooth_quant_alpha: float = OV_SMOOTH_QUANT_ALPHA,
    float_matmuls: Sequence[str] = (),
):
    """NNCF post-training int8 quantization of an OpenVINO model: transformer preset, SmoothQuant at
    ``smooth_quant_alpha``, the pooling/normalize tail and ``float_matmuls`` (the FFN down-projections, whose
    GELU-fed inputs no static int8 range holds) in the ignored scope; those MatMuls then get int8 weights
    (weight-only). Returns (model, settings).

    The alpha matters: at 0.95 SmoothQuant moved so much range into the weights that one verification text
    of all-MiniLM-L6-v2 fell to cos 0.70 (STS-B texts to 0.57); 0.5 with the down-projections out of
    activation quantization gives min cos 0.996 (STS-B texts 0.992) at the same Spearman (README, Export).
    """
    nncf = require("nncf", "openvino", "OpenVINO int8 quantization")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    names = {n for i in ov_model.inputs for n in i.get_names()}
    data = [{k: v for k, v in b.items() if k in names} for b in batches]
    adv = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha))
    scope = nncf.IgnoredScope(patterns=OV_IGNORED_PATTERNS, names=list(float_matmuls), validate=False)
    with quiet():
        q = nncf.quantize(
            ov_model,
            nncf.Dataset(data),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(data),
            ignored_scope=scope,
            advanced_parameters=adv,
        )
        if float_matmuls:
            q = nncf.compress_weights(q, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return q, {
        "method": "static",
        "tool": "nncf",
        "preset": "mixed",
        "model_type": "transformer",
        "smooth_quant_alpha": smooth_quant_alpha,
        "calibration_texts": count_calibration(data),
        "ignored_scope": OV_IGNORED_PATTERNS,
        "ffn_down_projections": {
            "count": len(float_matmuls),
            "as": "int8 weights, float compute" if float_matmuls else "int8",
        },
    }


def ov_compress_weights(ov_model, bits: int, group_size: int = 128, ratio: float = 1.0):
    """NNCF weight-only compression: int8 (asymmetric, per channel) or int4 (symmetric, groups of
    ``group_size``; NNCF keeps embeddings and the last layer int8). Returns (model, settings)."""
    nncf = require("nncf", "openvino", "OpenVINO weight compression")
    with quiet():
        if bits == 8:
            return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM), {
                "method": "weights",
                "tool": "nncf",
                "mode": "int8_asym",
            }
        try:
            out = nncf.compress_weights(
                ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group_size, ratio=ratio
            )
        except Exception:  # a weight width not divisible by the group size: per-channel int4
            group_size = -1
            out = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=-1, ratio=ratio)
    return out, {
        "method": "weights",
        "tool": "nncf",
        "mode": "int4_sym",
        "group_size": group_size,
        "ratio": ratio,
        "backup_mode": "int8_asym",
    }


def count_calibration(batches: Iterable[dict]) -> int:
    """Number of texts in tokenized calibration batches."""
    return sum(int(next(iter(b.values())).shape[0]) for b in batches)
