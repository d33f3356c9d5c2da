"""Export as a plan: the options checked once, the ``--quantize`` choice interpreted in one table, and the
immutable list of variants one export writes (``make_plan``). Building happens in ``stedge.export.build``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import StedgeError

BACKENDS = ("onnx", "openvino", "all")
DEVICES = ("cpu", "cuda")
OPTIMIZE = ("O1", "O2", "O3", "O4")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPUs where OpenVINO runs bf16 natively
OV_DEVICES = ("cpu", "gpu", "npu", "auto")
ONNX_DEVICES = ("cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class QuantizeChoice:
    """What one ``--quantize`` value adds: variant kinds per backend (see BUILDERS in build.py)."""

    onnx: tuple[str, ...] = ()
    openvino: tuple[str, ...] = ()
    calibrated: bool = False  # calibrates: on --calibration, else on the built-in texts
    needs_calibration: bool = False  # --calibration is required
    help: str = ""


# The one place the --quantize string is interpreted.
QUANTIZE: dict[str, QuantizeChoice] = {
    "none": QuantizeChoice(help="fp32 only"),
    "fp16": QuantizeChoice(("onnx-fp16",), ("openvino-fp16",), help="fp16 weights and compute (GPUs)"),
    "bf16": QuantizeChoice((), ("openvino-bf16",), help="the OpenVINO fp32 graph run in bf16 (avx512_bf16 / AMX CPUs)"),
    "int8": QuantizeChoice(
        ("onnx-int8-static", "onnx-int8-rows"),
        ("openvino-int8-static",),
        calibrated=True,
        help="static int8 and per-row int8 (both batch-invariant), calibrated on --calibration or built-in texts",
    ),
    "int8-static": QuantizeChoice(
        ("onnx-int8-static",),
        ("openvino-int8-static",),
        calibrated=True,
        needs_calibration=True,
        help="static int8 calibrated on --calibration",
    ),
    "int8-rows": QuantizeChoice(
        ("onnx-int8-rows",),
        calibrated=True,
        help="onnxruntime int8 with activations quantized per row at run time (batch-invariant; outlier channels "
        "and the noisiest MatMuls, found on --calibration or built-in texts, stay float)",
    ),
    "int8-dynamic": QuantizeChoice(
        ("onnx-int8-dynamic",),
        help="onnxruntime dynamic int8, one variant per --isa (not batch-invariant: never chosen automatically)",
    ),
    "auto": QuantizeChoice(
        ("onnx-int8-static", "onnx-int8-rows"),
        ("openvino-int8-static", "openvino-bf16"),
        calibrated=True,
        help="every variant that may be the fastest verified one on this CPU: int8 (static and per-row) and, on "
        "CPUs that run bf16 (avx512_bf16 / AMX), openvino-bf16; with --backend unset, OpenVINO's too when installed",
    ),
    "int8-weights": QuantizeChoice((), ("openvino-int8-weights",), help="OpenVINO int8 weight compression"),
    "int4-weights": QuantizeChoice((), ("openvino-int4-weights",), help="OpenVINO int4 weight compression"),
}


@dataclass(frozen=True)
class ExportOptions:
    """Every export parameter, checked (``check_options``); travels in the build context."""

    backend: str = "onnx"
    optimize: str | None = None
    quantize: str = "none"
    isas: tuple[str, ...] = ()
    calibration: str | os.PathLike | None = None
    calibration_column: str | None = None
    calibration_method: str = "minmax"
    calibration_size: int = 300
    eval_data: str | os.PathLike | None = None
    eval_limit: int | None = None
    max_drop: float | None = None
    device: str = "cpu"

    @property
    def choice(self) -> QuantizeChoice:
        return QUANTIZE[self.quantize]

    @property
    def onnx(self) -> bool:
        return self.backend in ("onnx", "all")

    @property
    def openvino(self) -> bool:
        return self.backend in ("openvino", "all")


@dataclass(frozen=True)
class PlannedVariant:
    """One variant to build: its name, builder ``kind`` and the record fields known before building."""

    name: str
    kind: str
    backend: str
    precision: str
    file: str
    devices: tuple[str, ...]
    optimization: str | None = None
    isa: str | None = None
    engine_options: Mapping[str, Any] | None = None
    cpu_flags_any: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExportPlan:
    """The variants of one export in build order, and the one that becomes ``default_variant``."""

    options: ExportOptions
    variants: tuple[PlannedVariant, ...]
    default: str
    bf16_here: bool = False
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(v.name for v in self.variants))


def bf16_hint(path: str | os.PathLike, variants: Iterable[str], model: str, device: str = "cpu") -> str | None:
    """A note for `stedge export`, `stedge tune` and `stedge info` when this CPU runs bf16 and the artifact at
    ``path`` (with ``variants``, exported from ``model``) has no openvino-bf16, often the fastest verified variant on
    such CPUs; None otherwise."""
    from stedge_runtime.machine import cpu_flags

    have = sorted(set(BF16_FLAGS) & set(cpu_flags()))
    if device != "cpu" or not have or "openvino-bf16" in set(variants):
        return None
    return (
        f"this CPU runs bf16 ({', '.join(have)}) and {path} has no openvino-bf16, often the fastest verified variant "
        f"on such CPUs: add it with `stedge export {model} -o {path} --add --backend openvino --quantize bf16 "
        "--tune` (or export with --quantize auto)"
    )


def outdated_builds(variants: Mapping[str, Any]) -> dict[str, str]:
    """The variants (name -> record with ``quantization``) that an older stedge built in a way the current export
    improves on, each with what exporting it again changes; verified records stay true, so nothing forces it."""
    out = {}
    for name, v in variants.items():
        q = getattr(v, "quantization", None) or {}
        if name == "openvino-int8-static" and q and "embeddings" not in q:
            out[name] = (
                "its embedding tables are dequantized before their lookup, so OpenVINO holds a float copy of them in "
                "every compilation (47 MB each for MiniLM's word table); export it again so rows are looked up in the "
                "int8 tables (the same arithmetic)"
            )
    return out


def resolve_backend(backend: str | None, quantize: str, device: str = "cpu") -> str:
    """``--backend`` when given; unset, ``all`` for ``--quantize auto`` verified on the CPU where OpenVINO is
    installed (its bf16 and int8 graphs are candidates there), else ``onnx``."""
    if backend is not None:
        return backend
    if quantize == "auto" and device == "cpu":
        import importlib.util

        return "all" if importlib.util.find_spec("openvino") is not None else "onnx"
    return "onnx"


def check_options(options: ExportOptions) -> ExportOptions:
    """Raise StedgeError naming the bad argument; return the options with ``optimize`` normalized."""
    from .quantize import CALIBRATION_METHODS

    o = options
    if o.backend not in BACKENDS:
        raise StedgeError(f"--backend must be one of {', '.join(BACKENDS)}, got {o.backend!r}")
    if o.quantize not in QUANTIZE:
        raise StedgeError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {o.quantize!r}")
    if o.device not in DEVICES:
        raise StedgeError(f"--device must be one of {', '.join(DEVICES)}, got {o.device!r}")
    if o.calibration_method not in CALIBRATION_METHODS:
        raise StedgeError(
            f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got {o.calibration_method!r}"
        )
    if o.max_drop is not None and o.max_drop < 0:
        raise StedgeError(f"--max-drop must be >= 0, got {o.max_drop}")
    optimize = o.optimize
    if optimize is not None:
        if optimize.upper() not in OPTIMIZE:
            raise StedgeError(f"--optimize must be one of {', '.join(OPTIMIZE)}, got {optimize!r}")
        optimize = optimize.upper()
    choice = QUANTIZE[o.quantize]
    if choice.openvino and not choice.onnx and o.backend == "onnx":
        raise StedgeError(f"--quantize {o.quantize} is an OpenVINO variant: add --backend openvino (or all)")
    if choice.onnx and not choice.openvino and o.backend == "openvino":
        raise StedgeError(f"--quantize {o.quantize} is an onnxruntime variant: use --backend onnx (or all)")
    if optimize is not None and o.backend == "openvino":
        raise StedgeError(
            "--optimize O1-O4 are onnxruntime levels: use --backend onnx or all (OpenVINO optimizes when it compiles)"
        )
    if optimize == "O4" and o.quantize not in ("none", "fp16", "bf16"):
        raise StedgeError(f"--optimize O4 already converts to fp16: combine --quantize {o.quantize} with O1-O3")
    if choice.needs_calibration and o.calibration is None:
        raise StedgeError(
            f"--quantize {o.quantize} needs --calibration DATA (a text file, a CSV/TSV/JSONL with "
            "--calibration-column, a datasets name, or builtin for the built-in texts)"
        )
    from dataclasses import replace

    return replace(o, optimize=optimize)


def _onnx_variants(o: ExportOptions) -> list[PlannedVariant]:
    opt = o.optimize
    sfx, fsfx = (f"-{opt}", f"_{opt}") if opt else ("", "")
    out = [PlannedVariant("onnx-fp32", "onnx-fp32", "onnx", "fp32", "onnx/model.onnx", ONNX_DEVICES)]
    if opt == "O4":
        out.append(
            PlannedVariant(
                "onnx-fp16-O4", "onnx-fp16", "onnx", "fp16", "onnx/model_O4.onnx", ("cuda", "tensorrt"), "O4"
            )
        )
    elif opt:
        devs = ONNX_DEVICES if opt == "O1" else ("cpu", "cuda")
        out.append(
            PlannedVariant(f"onnx-fp32{sfx}", "onnx-optimized", "onnx", "fp32", f"onnx/model{fsfx}.onnx", devs, opt)
        )
    for kind in o.choice.onnx:
        if kind == "onnx-fp16" and opt != "O4":
            out.append(
                PlannedVariant(
                    f"onnx-fp16{sfx}", kind, "onnx", "fp16", f"onnx/model{fsfx}_fp16.onnx", ("cuda", "tensorrt"), opt
                )
            )
        elif kind == "onnx-int8-dynamic":
            out += [
                PlannedVariant(
                    f"onnx-int8-{isa}{sfx}",
                    kind,
                    "onnx",
                    "int8",
                    f"onnx/model_qint8_{isa}{fsfx}.onnx",
                    ("cpu",),
                    opt,
                    isa=isa,
                )
                for isa in o.isas
            ]
        elif kind == "onnx-int8-rows":  # from the plain fp32 graph: O2+ fuse the MatMuls it quantizes
            out.append(PlannedVariant("onnx-int8-rows", kind, "onnx", "int8", "onnx/model_qint8_rows.onnx", ("cpu",)))
        elif kind == "onnx-int8-static":
            out.append(
                PlannedVariant(
                    f"onnx-int8-static{sfx}",
                    kind,
                    "onnx",
                    "int8",
                    f"onnx/model_qint8_static{fsfx}.onnx",
                    ("cpu", "tensorrt"),
                    opt,
                )
            )
    return out


_OV_FILES = {
    "openvino-fp16": ("fp16", "openvino_model_fp16.xml", OV_DEVICES),
    "openvino-int8-static": ("int8", "openvino_model_qint8_quantized.xml", OV_DEVICES),
    "openvino-int8-weights": ("int8", "openvino_model_int8_weights.xml", OV_DEVICES),
    "openvino-int4-weights": ("int4", "openvino_model_int4_weights.xml", ("cpu", "gpu", "auto")),
}


def _openvino_variants(o: ExportOptions, bf16_here: bool) -> list[PlannedVariant]:
    fp32 = "openvino/openvino_model.xml"
    out = [PlannedVariant("openvino-fp32", "openvino-fp32", "openvino", "fp32", fp32, OV_DEVICES)]
    for kind in o.choice.openvino:
        if kind == "openvino-bf16" and o.quantize == "auto" and not (bf16_here and o.device == "cpu"):
            continue  # auto builds only what can run here: elsewhere OpenVINO would run this graph in fp32
        if kind == "openvino-bf16":
            out.append(
                PlannedVariant(
                    "openvino-bf16",
                    kind,
                    "openvino",
                    "bf16",
                    fp32,
                    ("cpu",),
                    engine_options={"inference_precision": "bf16"},
                    cpu_flags_any=BF16_FLAGS,
                )
            )
        else:
            precision, file, devs = _OV_FILES[kind]
            # int8-static: the float parts pinned to f32, so a bf16 CPU runs what export verified
            opts = {"inference_precision": "f32"} if kind == "openvino-int8-static" else None
            out.append(PlannedVariant(kind, kind, "openvino", precision, f"openvino/{file}", devs, engine_options=opts))
    return out


def _default(variants: list[PlannedVariant], o: ExportOptions) -> str:
    """The variant the user asked for: the first quantized one, else the optimized one, else the first."""
    wanted = set(o.choice.onnx) | set(o.choice.openvino)
    for v in variants:
        if v.kind in wanted:
            return v.name
    for v in variants:
        if o.optimize and v.optimization == o.optimize:
            return v.name
    return variants[0].name


def make_plan(options: ExportOptions, cpu_flags: set[str] | frozenset[str] = frozenset()) -> ExportPlan:
    """The immutable list of variants for checked ``options``; ``cpu_flags`` (this CPU's) say whether a bf16
    variant can be verified here."""
    bf16_here = bool(set(BF16_FLAGS) & set(cpu_flags))
    variants: list[PlannedVariant] = []
    if options.onnx:
        variants += _onnx_variants(options)
    if options.openvino:
        variants += _openvino_variants(options, bf16_here)
    return ExportPlan(options, tuple(variants), _default(variants, options), bf16_here)
