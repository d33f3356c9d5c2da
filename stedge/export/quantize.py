"""Quantization: onnxruntime dynamic int8 (per CPU instruction set, as optimum's
AutoQuantizationConfig defines them), onnxruntime static int8 (QDQ, calibrated), int8 with activations
quantized per row at run time (batch-invariant; calibration only picks the channels and MatMuls that stay
float), and OpenVINO static int8 / weight-only
int8 and int4 with NNCF."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
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
    """Silence the root-logger advice of onnxruntime.quantization and NNCF's INFO tables, and send what the
    quantizers print (NNCF's progress bars: rich's default console writes to stdout) to stderr, where stedge's
    own progress goes: stdout carries results alone (``--json``)."""
    root = logging.getLogger()
    loggers = [root, logging.getLogger("nncf")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
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


# ------------------------------------------------------------------ int8 with activations quantized per row
# Weights get 7 bits (symmetric, per output channel): onnxruntime's u8 x s8 kernels without VNNI (AVX2, AVX-512F)
# add pairs of products in int16 (VPMADDUBSW), which 255 x 127 x 2 overflows and 255 x 63 x 2 does not, so one
# graph is exact on every x86 CPU. Activations: uint8 around 128, one scale per row (token) from its own max.
ROWS_WEIGHT_BITS = 7
ROWS_ACTIVATION_ZERO = 128
# Input channels whose calibrated max |x| exceeds this multiple of the median channel's stay float (a thin
# float MatMul beside the int8 one): BERT-style models have a few (the LayerNorm before the FFN: one channel
# near 30 where the median is 1.6), and one per-row scale would otherwise spend the int8 range on them. On
# all-MiniLM-L6-v2 (STS-B test texts, min cos to fp32): none 0.973, ratio 8 (3 channels) 0.981, ratio 4
# (up to 6 per input) 0.9905, for 8 % of the speed.
ROWS_OUTLIER_RATIO = 4.0
ROWS_MAX_OUTLIERS = 8


def _weight_matmul_nodes(proto, exclude: Sequence[str] = ()) -> list:
    """The MatMul nodes of ``proto`` whose second input is a constant 2-D weight, outside ``exclude``."""
    inits = {i.name: i for i in proto.graph.initializer}
    skip = set(exclude)
    return [
        n
        for n in proto.graph.node
        if n.op_type == "MatMul" and n.name not in skip and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]


# The MatMuls whose inputs keep the most int8 noise after that (per row: the rounding step max|x|/127 against
# the row's rms, mean over the calibration tokens) stay float, the noisiest first, up to this share of the
# weights' multiply-adds. On all-MiniLM-L6-v2 that is layer 0's FFN down-projection (6 %, after GELU; adding
# layer 1's would pass 10 %), the one that measured the most sensitive: STS-B test texts, min cos to fp32
# 0.9896 -> 0.9934, for 3-4 % of the speed.
ROWS_FLOAT_SHARE = 0.10


def _calibration_rows(src: Path, batches: Sequence[dict], names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration batch: tensor name -> its values as rows (last axis), padding tokens left out."""
    onnx = require("onnx", "onnx", "int8 quantization")
    import onnxruntime as ort

    proto = onnx.load(str(src), load_external_data=False)
    outputs = {o.name for o in proto.graph.output}
    proto.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in outputs
    )
    probe = src.with_name(f".{src.stem}-calibration-probe.onnx")  # beside src: its external data resolves
    try:
        onnx.save(proto, str(probe))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(probe), so, providers=["CPUExecutionProvider"])
    finally:
        probe.unlink(missing_ok=True)
    feeds = {i.name for i in sess.get_inputs()}
    for b in batches:
        mask = np.asarray(b["attention_mask"], bool).reshape(-1) if "attention_mask" in b else None
        got = {}
        for name, out in zip(names, sess.run(list(names), {k: v for k, v in b.items() if k in feeds})):
            rows = out.reshape(-1, out.shape[-1])
            got[name] = rows[mask] if mask is not None and rows.shape[0] == mask.size else rows
        yield got


def _matmul_inputs(src: Path, exclude_nodes: Sequence[str]) -> dict[str, list]:
    """MatMul input -> the weight MatMuls reading it (outside ``exclude_nodes``), in graph order."""
    onnx = require("onnx", "onnx", "int8 quantization")
    groups: dict[str, list] = {}
    for n in _weight_matmul_nodes(onnx.load(str(src), load_external_data=False), exclude_nodes):
        groups.setdefault(n.input[0], []).append(n)
    return groups


def outlier_channels(
    src: str | os.PathLike,
    batches: Sequence[dict],
    exclude_nodes: Sequence[str] = (),
    ratio: float = ROWS_OUTLIER_RATIO,
    limit: int = ROWS_MAX_OUTLIERS,
) -> dict[str, list[int]]:
    """MatMul input -> its outlier channels: calibrated max |x| over ``batches`` above ``ratio`` x the median
    channel's, at most ``limit`` (the largest). Inputs without outliers are left out."""
    names = list(_matmul_inputs(Path(src), exclude_nodes))
    if not names or not batches:
        return {}
    peak: dict[str, np.ndarray] = {}
    for got in _calibration_rows(Path(src), batches, names):
        for name, rows in got.items():
            m = np.abs(rows).max(axis=0)
            peak[name] = m if name not in peak else np.maximum(peak[name], m)
    found: dict[str, list[int]] = {}
    for name, m in peak.items():
        big = np.flatnonzero(m > ratio * max(float(np.median(m)), 1e-12))
        if big.size:
            found[name] = sorted(int(c) for c in big[np.argsort(-m[big])][:limit])
    return found


def noisy_inputs(
    src: str | os.PathLike,
    batches: Sequence[dict],
    outliers: dict[str, list[int]],
    exclude_nodes: Sequence[str] = (),
    share: float = ROWS_FLOAT_SHARE,
) -> dict[str, float]:
    """The MatMul inputs to keep float -> their calibrated int8 noise (mean over tokens of the per-row rounding
    step's rms, max|x|/127/sqrt(12), over the row's rms; ``outliers`` channels left out as they stay float):
    the noisiest first while their weights' multiply-adds stay within ``share`` of all."""
    groups = _matmul_inputs(Path(src), exclude_nodes)
    if not groups or not batches or share <= 0:
        return {}
    total: dict[str, float] = {}
    count = 0
    for got in _calibration_rows(Path(src), batches, list(groups)):
        for name, rows in got.items():
            x = rows.astype(np.float32, copy=True)
            x[:, outliers.get(name, [])] = 0.0
            rms = np.sqrt(np.mean(x * x, axis=1))
            noise = np.abs(x).max(axis=1) / 127.0 / np.sqrt(12.0) / np.maximum(rms, 1e-12)
            total[name] = total.get(name, 0.0) + float(noise.sum())
        count += next(iter(got.values())).shape[0]
    onnx = require("onnx", "onnx", "int8 quantization")
    dims = {i.name: list(i.dims) for i in onnx.load(str(src), load_external_data=False).graph.initializer}
    macs = {x: sum(int(np.prod(dims[n.input[1]])) for n in ns) for x, ns in groups.items()}
    budget, chosen = share * sum(macs.values()), {}
    for name in sorted(total, key=lambda k: -total[k]):
        if macs[name] > budget:
            break
        budget -= macs[name]
        chosen[name] = total[name] / max(count, 1)
    return chosen


def _rows_node(op: str, inputs: list[str], output: str, **attrs):
    """One node named after its single output (the per-row int8 graph's naming)."""
    from onnx import helper

    return helper.make_node(op, inputs, [output], output, **attrs)


def _rows_quantize_input(g, x0: str, p: str, width: int, out_ch: list[int], opset: int) -> list:
    """The nodes that quantize MatMul input ``x0`` (``width`` channels) per row to ``{p}/q`` with scale
    ``{p}/scale``; its ``out_ch`` outlier channels are zeroed there and gathered to ``{p}/outliers``."""
    from onnx import numpy_helper

    node = _rows_node
    pre, x = [], x0
    if out_ch:  # inliers go int8 (outliers zeroed), outliers a thin float MatMul
        mask = np.ones(width, np.float32)
        mask[out_ch] = 0.0
        g.initializer.extend(
            [
                numpy_helper.from_array(mask, f"{p}/inlier_mask"),
                numpy_helper.from_array(np.array(out_ch, np.int64), f"{p}/outlier_index"),
            ]
        )
        pre = [
            node("Mul", [x0, f"{p}/inlier_mask"], f"{p}/inliers"),
            node("Gather", [x0, f"{p}/outlier_index"], f"{p}/outliers", axis=-1),
        ]
        x = f"{p}/inliers"
    reduce = (
        node("ReduceMax", [f"{p}/abs", "rows/last_axis"], f"{p}/max", keepdims=1)
        if opset >= 18
        else node("ReduceMax", [f"{p}/abs"], f"{p}/max", axes=[-1], keepdims=1)
    )
    return pre + [
        node("Abs", [x], f"{p}/abs"),
        reduce,
        node("Max", [f"{p}/max", "rows/tiny"], f"{p}/max_pos"),
        node("Mul", [f"{p}/max_pos", "rows/inv_127"], f"{p}/scale"),
        node("Div", [x, f"{p}/scale"], f"{p}/scaled"),
        node("QuantizeLinear", [f"{p}/scaled", "rows/one", "rows/zero_point"], f"{p}/q"),
    ]


def _rows_matmul(g, n, w, p: str, out_ch: list[int]) -> list:
    """The nodes that replace MatMul ``n`` (float weight ``w``) on the per-row quantized input ``p``: int8
    weights per column, and a float MatMul on the outlier channels ``out_ch`` added back."""
    from onnx import helper, numpy_helper

    node = _rows_node
    qmax = 2 ** (ROWS_WEIGHT_BITS - 1) - 1
    m = f"{n.name}/rows"
    ws = np.abs(w).max(axis=0) / qmax
    ws[ws == 0] = 1.0
    wq = np.clip(np.round(w / ws), -qmax, qmax).astype(np.int8)
    g.initializer.extend([numpy_helper.from_array(wq, f"{m}/weight"), numpy_helper.from_array(ws, f"{m}/wscale")])
    y = f"{m}/int8_part" if out_ch else n.output[0]
    # int32 products to float with the weight scales in one pass (onnxruntime's MatMulIntegerToFloat: its
    # activation scale is per tensor, so the row scale is a Mul after it)
    out = [
        node(
            "MatMulIntegerToFloat",
            [f"{p}/q", f"{m}/weight", "rows/one", f"{m}/wscale", "rows/zero_point"],
            f"{m}/wscaled",
            domain="com.microsoft",
        ),
        node("Mul", [f"{m}/wscaled", f"{p}/scale"], y),
    ]
    if out_ch:
        g.initializer.append(numpy_helper.from_array(w[out_ch], f"{m}/outlier_weight"))
        out += [
            node("MatMul", [f"{p}/outliers", f"{m}/outlier_weight"], f"{m}/float_part"),
            helper.make_node("Add", [y, f"{m}/float_part"], [n.output[0]], f"{m}/add_float_part"),
        ]
    return out


def quantize_rows_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    batches: Sequence[dict] = (),
    exclude_nodes: Sequence[str] = (),
    embeddings: bool = True,
) -> dict:
    """int8 whose activations are quantized at run time per row: every MatMul by a constant weight (outside
    ``exclude_nodes``) becomes MatMulInteger on uint8 activations scaled by their row's own max |x| and int8
    weights (``ROWS_WEIGHT_BITS``, per channel), so a token's result never depends on the other rows of its
    batch (batch-invariant, unlike onnxruntime's dynamic int8, which scales the whole batch at once). Inputs
    shared by several MatMuls (query, key, value) are quantized once. The outlier channels found on the
    calibration ``batches`` (outlier_channels) stay float, and so do the MatMuls on the noisiest inputs
    (noisy_inputs, within ``ROWS_FLOAT_SHARE`` of the multiply-adds). ``embeddings``: the word-embedding table to uint8
    too (quantize_embeddings). Standard ONNX operators and onnxruntime's MatMulIntegerToFloat (per-column weight
    scales; checked on onnxruntime 1.17 and 1.32)."""
    onnx = require("onnx", "onnx", "int8 quantization")
    from onnx import helper, numpy_helper

    from .onnx_graph import normalize_external_data, save_onnx

    outliers = outlier_channels(src, batches, exclude_nodes)
    floats = noisy_inputs(src, batches, outliers, exclude_nodes)
    proto = onnx.load(str(src))
    g = proto.graph
    opset = {o.domain: o.version for o in proto.opset_import}.get("", 17)
    inits = {i.name: i for i in g.initializer}
    matmuls = _weight_matmul_nodes(proto, exclude_nodes)
    targets = [n for n in matmuls if n.input[0] not in floats]
    by_input: dict[str, list] = {}
    for n in targets:
        by_input.setdefault(n.input[0], []).append(n)
    const = {
        "rows/one": np.array(1.0, np.float32),
        "rows/inv_127": np.array(1.0 / 127.0, np.float32),
        "rows/tiny": np.array(1e-12, np.float32),
        "rows/zero_point": np.array(ROWS_ACTIVATION_ZERO, np.uint8),
        "rows/last_axis": np.array([-1], np.int64),
    }
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in const.items())
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))

    before: dict[str, list] = {}  # node name -> the nodes to insert before it
    instead: dict[str, list] = {}  # node name -> its replacement
    for x0, ns in by_input.items():
        p = f"{ns[0].name}/rows"
        out_ch = outliers.get(x0, [])
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in ns]
        before[ns[0].name] = _rows_quantize_input(g, x0, p, weights[0].shape[0], out_ch, opset)
        for n, w in zip(ns, weights):
            instead[n.name] = _rows_matmul(g, n, w, p, out_ch)
    nodes = []
    for n in g.node:
        nodes += before.get(n.name, []) + instead.get(n.name, [n])
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    dst = Path(dst)
    written = save_onnx(proto, dst)
    table = quantize_embeddings(dst) if embeddings else []
    kept = normalize_external_data(dst)
    for f in set(written) - set(kept):  # the float table's data file, once the table is uint8 inline
        f.unlink(missing_ok=True)
    return {
        "method": "rows",
        "activations": f"QUInt8 per row (token) at run time: scale max|x|/127, zero point {ROWS_ACTIVATION_ZERO}",
        "weights": f"QInt8 symmetric per channel, {ROWS_WEIGHT_BITS} bits",
        "per_channel": True,
        "matmuls": len(targets),
        "float_outlier_channels": {
            "ratio_to_median": ROWS_OUTLIER_RATIO,
            "inputs": len(outliers),
            "channels": sum(map(len, outliers.values())),
        },
        "float_matmuls": {
            "rule": f"noisiest inputs in int8 first, within {ROWS_FLOAT_SHARE:.0%} of the multiply-adds",
            "inputs": len(floats),
            "matmuls": len(matmuls) - len(targets),
        },
        "calibration_texts": count_calibration(batches),
        "embeddings": "QUInt8 rows dequantized after Gather" if table else None,
        "float_nodes": {"tail": len(set(exclude_nodes))},
    }


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
            "as": "int8 weights, activations left to the engine (OpenVINO's CPU plugin quantizes them per token at "
            "run time: engine option dynamic_quantization_group_size)"
            if float_matmuls
            else "int8",
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
