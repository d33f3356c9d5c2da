"""Export as build: one builder per variant kind turns a ``PlannedVariant`` into files inside the artifact
being written and returns a ``BuiltVariant`` (files, settings, verification). Every builder ends in
``finish``, which hashes the files, writes a provisional stedge.json and verifies the variant by loading
the artifact with ``stedge_runtime`` (see ``stedge.export.verify``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import StedgeError
from ..io import sha256_file
from .plan import ExportPlan, PlannedVariant

logger = logging.getLogger(__name__)

WORK = ".stedge-work"
# How static int8 ONNX graphs treat the FFN down-projections (see quantize.quantize_static_int8).
ONNX_FFN_DOWN = "int8-rows"


@dataclass(frozen=True)
class BuiltVariant:
    """A variant written into the artifact: its record fields and verification."""

    plan: PlannedVariant
    files: tuple[str, ...]
    sha256: str | dict[str, str]
    size_bytes: int
    devices: tuple[str, ...]
    quantization: dict | None = None
    optimization_settings: dict | None = None
    verification: dict | None = None
    note: str | None = None

    def entry(self, inputs: list[str], outputs: list[str]) -> dict:
        """The variant's record in stedge.json."""
        p = self.plan
        e: dict[str, Any] = {
            "file": p.file,
            "backend": p.backend,
            "precision": p.precision,
            "optimization": p.optimization,
            "optimization_settings": self.optimization_settings,
            "quantization": self.quantization,
            "devices": list(self.devices),
            "inputs": list(inputs),
            "outputs": list(outputs),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "verification": self.verification,
        }
        if p.engine_options:
            e["engine_options"] = dict(p.engine_options)
        if p.cpu_flags_any:
            e["cpu_flags_any"] = list(p.cpu_flags_any)
        if self.note:
            e["note"] = self.note
        return e


@dataclass
class BuildContext:
    """Everything the builders share: the model, the plan, the folder being written, the exported fp32 graph,
    calibration batches, the PyTorch reference, and the variant records written so far."""

    model: Any
    task: str
    plan: ExportPlan
    root: Path
    source: dict
    fields: dict
    spec: Any = None  # GraphSpec of the exported graph
    fp32: Path | None = None  # the fp32 ONNX graph every variant starts from
    reference: Any = None  # verify.Reference
    batches: list | None = None  # calibration batches (static int8)
    calibration_source: str | None = None  # the --calibration data, or "built-in"
    entries: dict[str, dict] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.root / WORK

    @property
    def options(self):
        return self.plan.options

    @property
    def qbase(self) -> Path:
        """The graph quantized / fp16 variants start from: the O1-O3 graph when one was asked."""
        opt = self.options.optimize
        return self.root / "onnx" / f"model_{opt}.onnx" if opt in ("O1", "O2", "O3") else self.fp32

    @property
    def config(self):
        return self.model.transformer.config if self.task == "embedding" else self.model.config

    def manifest(self, default: str) -> dict:
        """The stedge.json content for the records so far."""
        from . import manifest as mf

        fields = dict(self.fields)
        return {
            "format_version": mf.FORMAT_VERSION,
            "task": fields.pop("task"),
            "source": self.source,
            **fields,
            "default_variant": default,
            "variants": dict(self.entries),
            "created_with": mf.created_with(),
        }

    def calibration(self) -> list[dict]:
        """The calibration batches with only the graph's inputs."""
        from .calibration import restrict

        if self.batches is None:  # pragma: no cover - check_options requires --calibration
            raise StedgeError(f"--quantize {self.options.quantize} needs --calibration")
        return restrict(self.batches, self.spec.inputs)


def _files_of(pv: PlannedVariant, root: Path) -> list[Path]:
    main = root / pv.file
    if pv.backend == "openvino":
        return [main, main.with_suffix(".bin")]
    from .onnx_graph import check_external_data

    return [main] + check_external_data(main, root)


def _record(ctx: BuildContext, pv: PlannedVariant, verification: dict | None, **settings: Any) -> BuiltVariant:
    files = _files_of(pv, ctx.root)
    rel = tuple(f.relative_to(ctx.root).as_posix() for f in files)
    hashes: str | dict[str, str] = (
        sha256_file(files[0]) if len(files) == 1 else {r: sha256_file(f) for r, f in zip(rel, files)}
    )
    built = BuiltVariant(
        pv, rel, hashes, sum(f.stat().st_size for f in files), tuple(pv.devices), verification=verification, **settings
    )
    ctx.entries.pop(pv.name, None)
    ctx.entries[pv.name] = built.entry(ctx.spec.inputs, ctx.spec.outputs)
    return built


# onnxruntime's words for a graph no device can load (as against a kernel this device lacks).
INVALID_GRAPH_MESSAGES = ("This is an invalid model", "INVALID_GRAPH", "INVALID_PROTOBUF")


def finish(
    ctx: BuildContext,
    pv: PlannedVariant,
    *,
    verify: bool = True,
    note: str | None = None,
    tolerate: bool = False,
    **settings: Any,
) -> BuiltVariant:
    """Record the variant's files and verify it through stedge_runtime on the export device.

    ``tolerate``: a variant that may not run on this device (fp16 on a CPU) gets a note instead of failing;
    when it does run, the device joins its ``devices``. A graph onnxruntime calls invalid fails on every device, so
    it stops the export even then."""
    from . import manifest as mf

    device = ctx.options.device
    built = _record(ctx, pv, None, note=note, **settings)
    if not verify:
        return built
    trial = built if device in built.devices else replace(built, devices=built.devices + (device,))
    ctx.entries[pv.name] = trial.entry(ctx.spec.inputs, ctx.spec.outputs)
    mf.write(ctx.root, ctx.manifest(pv.name))
    try:
        result = ctx.reference.compare(ctx.root, pv.name, device, ctx.options.max_drop)
    except Exception as e:  # onnxruntime has no kernel for an op on this device
        if not tolerate or any(m in str(e) for m in INVALID_GRAPH_MESSAGES):
            raise
        first = str(e).splitlines()[0][:200] if str(e) else ""
        done = replace(built, note=f"not verified on {device}: {type(e).__name__}: {first}")
        ctx.entries[pv.name] = done.entry(ctx.spec.inputs, ctx.spec.outputs)
        return done
    done = replace(trial, verification=result.to_dict())
    ctx.entries[pv.name] = done.entry(ctx.spec.inputs, ctx.spec.outputs)
    return done


# ------------------------------------------------------------------ builders, one per kind
def _target(ctx: BuildContext, pv: PlannedVariant) -> Path:
    t = ctx.root / pv.file
    t.parent.mkdir(parents=True, exist_ok=True)
    return t


def build_onnx_fp32(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """The exported fp32 graph itself."""
    return finish(ctx, pv)


def build_onnx_optimized(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """onnxruntime transformer optimizer at O1-O3."""
    from . import optimize as opt

    settings = opt.optimize(
        ctx.fp32, _target(ctx, pv), pv.optimization, ctx.config, for_gpu=ctx.options.device == "cuda"
    )
    return finish(ctx, pv, optimization_settings=settings)


def build_onnx_fp16(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """fp16 weights and compute (O4: optimized for the GPU first); ops that overflow are kept fp32."""
    from . import optimize as opt

    target = _target(ctx, pv)
    settings: dict = {}
    src = ctx.qbase
    if pv.optimization == "O4":
        src = ctx.work / "model_O4_fp32.onnx"
        settings["optimization_settings"] = opt.optimize(ctx.fp32, src, "O4", ctx.config, for_gpu=True)
    q = {"method": "fp16", **opt.to_fp16(src, target)}
    built = finish(ctx, pv, tolerate=True, quantization=q, **settings)
    if built.verification is not None and not built.verification["finite"]:
        logger.warning("%s overflowed in fp16: keeping %s in fp32", pv.name, ", ".join(opt.FP16_SENSITIVE_OPS))
        q = {"method": "fp16", **opt.to_fp16(src, target, keep_ops=opt.FP16_SENSITIVE_OPS)}
        built = finish(ctx, pv, tolerate=True, quantization=q, **settings)
    return built


def build_onnx_int8_dynamic(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """onnxruntime dynamic int8 for one instruction set."""
    from .quantize import quantize_dynamic_int8

    return finish(ctx, pv, quantization=quantize_dynamic_int8(ctx.qbase, _target(ctx, pv), pv.isa))


def build_onnx_int8_static(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """onnxruntime static int8 (QDQ), calibrated."""
    from . import optimize as opt
    from .onnx_graph import load_graph
    from .quantize import quantize_static_int8

    tail = opt.tail_nodes(load_graph(ctx.qbase))
    q = quantize_static_int8(
        ctx.qbase,
        _target(ctx, pv),
        ctx.calibration(),
        ctx.options.calibration_method,
        exclude_nodes=tail,
        ffn_down=ONNX_FFN_DOWN,
    )
    return finish(ctx, pv, quantization={**q, "calibration": ctx.calibration_source})


def build_onnx_int8_rows(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """onnxruntime int8 with activations quantized per row at run time, from the fp32 graph (calibration
    only picks the outlier channels that stay float)."""
    from . import optimize as opt
    from .onnx_graph import load_graph
    from .quantize import quantize_rows_int8

    q = quantize_rows_int8(
        ctx.fp32, _target(ctx, pv), ctx.calibration(), exclude_nodes=opt.tail_nodes(load_graph(ctx.fp32))
    )
    return finish(ctx, pv, quantization={**q, "calibration": ctx.calibration_source})


def _ov_model(ctx: BuildContext):
    from . import openvino as ovx

    return ovx.from_onnx(ctx.fp32)


def build_openvino_fp32(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """The fp32 graph as OpenVINO IR. With --add, an IR that another variant kept from the artifact runs (the
    bf16 one shares it) stays as it is and is verified again as fp32: a new conversion is not byte-identical
    (OpenVINO numbers its node names per process), so rewriting it would leave that variant's record false."""
    from . import openvino as ovx

    if not kept_variants_on(ctx, pv.file):
        ovx.save(_ov_model(ctx), _target(ctx, pv))
    return finish(ctx, pv)


def _digests(entry: dict) -> dict[str, str]:
    """A variant record's files and their sha256 (one digest is the graph file's)."""
    d = entry.get("sha256")
    return {entry["file"]: d} if isinstance(d, str) else dict(d or {})


def _intact(root: Path, entry: dict) -> bool:
    return all((root / r).is_file() and sha256_file(root / r) == h for r, h in _digests(entry).items())


def _kept(ctx: BuildContext) -> dict[str, dict]:
    """The records of variants kept from the artifact: those this export does not rebuild."""
    planned = {v.name for v in ctx.plan.variants}
    return {name: e for name, e in ctx.entries.items() if name not in planned}


def kept_variants_on(ctx: BuildContext, rel: str) -> list[str]:
    """Kept variants whose files include ``rel`` (export checked before building that their files are intact)."""
    return [name for name, e in _kept(ctx).items() if rel in _digests(e)]


def stale_kept_variants(ctx: BuildContext) -> list[str]:
    """Kept variants whose files differ from their records."""
    return [name for name, e in _kept(ctx).items() if not _intact(ctx.root, e)]


def build_openvino_bf16(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """The fp32 IR (same files) run with INFERENCE_PRECISION_HINT bf16 (``engine_options``); verified only on
    a CPU that runs bf16, since elsewhere OpenVINO would quietly run fp32."""
    if not (ctx.root / pv.file).is_file():
        from . import openvino as ovx

        ovx.save(_ov_model(ctx), _target(ctx, pv))
    q = {"method": "bf16", "inference_precision_hint": "bf16", "weights": "fp32 (converted when compiled)"}
    if not ctx.plan.bf16_here or ctx.options.device != "cpu":
        note = "not verified: this CPU has no avx512_bf16 / amx_bf16 (OpenVINO would run it in fp32)"
        return finish(ctx, pv, verify=False, note=note, quantization=q)
    return finish(ctx, pv, quantization=q)


def build_openvino_fp16(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """fp16-compressed IR weights."""
    from . import openvino as ovx

    ovx.save(_ov_model(ctx), _target(ctx, pv), fp16=True)
    return finish(ctx, pv, quantization={"method": "fp16", "compress_to_fp16": True})


def build_openvino_int8_static(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
    """NNCF post-training int8, calibrated; its lookup tables stay int8 when compiled (``gather_int8_tables``)."""
    from . import openvino as ovx
    from .quantize import after_gelu_matmuls, ov_quantize_static

    model, q = ov_quantize_static(
        _ov_model(ctx), ctx.calibration(), ctx.task, float_matmuls=after_gelu_matmuls(ctx.fp32)
    )
    tables = ovx.gather_int8_tables(model)
    ovx.save(model, _target(ctx, pv))
    q["embeddings"] = f"int8 rows dequantized after Gather ({len(tables)} tables)" if tables else None
    return finish(ctx, pv, quantization={**q, "calibration": ctx.calibration_source})


def _ov_weights(bits: int) -> Callable[[BuildContext, PlannedVariant], BuiltVariant]:
    def build(ctx: BuildContext, pv: PlannedVariant) -> BuiltVariant:
        from . import openvino as ovx
        from .quantize import ov_compress_weights

        model, q = ov_compress_weights(_ov_model(ctx), bits)
        ovx.save(model, _target(ctx, pv))
        return finish(ctx, pv, quantization=q)

    build.__doc__ = f"NNCF int{bits} weight compression."
    return build


BUILDERS: dict[str, Callable[[BuildContext, PlannedVariant], BuiltVariant]] = {
    "onnx-fp32": build_onnx_fp32,
    "onnx-optimized": build_onnx_optimized,
    "onnx-fp16": build_onnx_fp16,
    "onnx-int8-dynamic": build_onnx_int8_dynamic,
    "onnx-int8-static": build_onnx_int8_static,
    "onnx-int8-rows": build_onnx_int8_rows,
    "openvino-fp32": build_openvino_fp32,
    "openvino-bf16": build_openvino_bf16,
    "openvino-fp16": build_openvino_fp16,
    "openvino-int8-static": build_openvino_int8_static,
    "openvino-int8-weights": _ov_weights(8),
    "openvino-int4-weights": _ov_weights(4),
}


def build_all(ctx: BuildContext, progress: Callable[[str], None] = lambda _: None) -> list[BuiltVariant]:
    """Build and verify every planned variant in order; with ``max_drop`` a variant over it raises
    CheckFailedError (the caller's atomic folder then leaves nothing behind)."""
    from .verify import Verification, check, failure_note

    out = []
    for pv in ctx.plan.variants:
        progress(f"Building and verifying {pv.name}")
        built = BUILDERS[pv.kind](ctx, pv)
        if built.verification is not None:
            ver = Verification(**built.verification)
            if ctx.options.max_drop is not None:
                check(pv.name, ver)
            note = failure_note(ver, pv.precision)
            if note:
                logger.warning("%s: %s", pv.name, note)
                built = replace(built, note=note)
                ctx.entries[pv.name] = built.entry(ctx.spec.inputs, ctx.spec.outputs)
        out.append(built)
    return out
