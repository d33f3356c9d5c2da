"""`export_model`: a model reference in, a verified artifact folder out (ST layout + onnx/ + openvino/ + stedge.json)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StedgeError
from ..hub import detect_task, model_display_name, resolve_model
from ..io import atomic_dir, check_output, output_lock, sha256_file

logger = logging.getLogger(__name__)

BACKENDS = ("onnx", "openvino", "all")
QUANTIZE = ("none", "fp16", "int8", "int8-static", "int4-weights", "int8-weights")
DEVICES = ("cpu", "cuda")
OPTIMIZE = ("O1", "O2", "O3", "O4")
WORK = ".stedge-work"


@dataclass
class ExportResult:
    """What export_model wrote: the folder, its manifest and one table row per variant."""

    path: Path
    manifest: dict
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "default_variant": self.manifest["default_variant"], "variants": self.rows}


# ------------------------------------------------------------------ model loading
def source_sha256(*folders: Path) -> str:
    """One hash over the weight files (safetensors / bin) of the source folders."""
    h = hashlib.sha256()
    for folder in folders:
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".safetensors", ".bin") and not ({"onnx", "openvino"} & set(p.relative_to(folder).parts))
        )
        for f in files:
            h.update(str(f.relative_to(folder)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _merge_adapter(path: Path):
    from ..models.adapters import adapter_base, merge_adapter

    return merge_adapter(path, device="cpu"), adapter_base(path)


def load_model(ref: str | os.PathLike) -> tuple[Any, str, dict]:
    """(torch model on the CPU, task, source fields for the manifest). Adapters are merged first."""
    from ..models import CrossEncoder, SentenceEncoder

    path = resolve_model(ref)
    if detect_task(path) == "adapter":
        model, base = _merge_adapter(path)
        base_path = model.model_path or path
        src = {"model": str(ref), "sha256": source_sha256(path, Path(base_path)), "adapter": str(path), "base_model": base}
        return model.eval(), "embedding", src
    task = detect_task(path)
    model = SentenceEncoder(path, device="cpu") if task == "embedding" else CrossEncoder(path, device="cpu")
    return model.eval(), task, {"model": str(ref), "sha256": source_sha256(path)}


# ------------------------------------------------------------------ planning
@dataclass
class Variant:
    name: str
    backend: str
    precision: str
    file: str
    optimization: str | None = None
    quantization: dict | None = None
    optimization_settings: dict | None = None
    devices: list[str] = field(default_factory=list)
    isa: str | None = None
    note: str | None = None


def _check_options(backend: str, optimize: str | None, quantize: str, calibration, calibration_method: str, device: str) -> str | None:
    if backend not in BACKENDS:
        raise StedgeError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if quantize not in QUANTIZE:
        raise StedgeError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if device not in DEVICES:
        raise StedgeError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    from .quantize import CALIBRATION_METHODS

    if calibration_method not in CALIBRATION_METHODS:
        raise StedgeError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration_method!r}")
    if optimize is not None:
        if optimize.upper() not in OPTIMIZE:
            raise StedgeError(f"--optimize must be one of {', '.join(OPTIMIZE)}, got {optimize!r}")
        optimize = optimize.upper()
    if quantize in ("int4-weights", "int8-weights") and backend == "onnx":
        raise StedgeError(f"--quantize {quantize} is OpenVINO weight compression: add --backend openvino (or all)")
    if optimize is not None and backend == "openvino":
        raise StedgeError("--optimize O1-O4 are onnxruntime levels: use --backend onnx or all (OpenVINO optimizes when it compiles)")
    if optimize == "O4" and quantize not in ("none", "fp16"):
        raise StedgeError(f"--optimize O4 already converts to fp16: combine --quantize {quantize} with O1-O3")
    if quantize == "int8-static" and calibration is None:
        raise StedgeError("--quantize int8-static needs --calibration DATA (a text file, a CSV/TSV/JSONL with --calibration-column, or a datasets name)")
    return optimize


def _check_cuda(backend: str) -> None:
    """--device cuda: fail early when the engines cannot reach a GPU here."""
    from ..errors import require

    if backend in ("onnx", "all"):
        ort = require("onnxruntime", "onnx", "verifying on cuda")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise StedgeError("--device cuda: onnxruntime has no CUDAExecutionProvider here; install stedge[gpu] or use --device cpu")
    if backend in ("openvino", "all"):
        ov = require("openvino", "openvino", "verifying on a GPU")
        if not any(d.startswith("GPU") for d in ov.Core().available_devices):
            raise StedgeError("--device cuda: OpenVINO sees no GPU here; use --device cpu or --backend onnx")


def plan_variants(backend: str, optimize: str | None, quantize: str, isas: list[str], device: str) -> list[Variant]:
    """The variants one export writes, in build order."""
    out: list[Variant] = []
    if backend in ("onnx", "all"):
        out.append(Variant("onnx-fp32", "onnx", "fp32", "onnx/model.onnx", devices=["cpu", "cuda", "tensorrt"]))
        opt_sfx = f"-{optimize}" if optimize else ""
        file_sfx = f"_{optimize}" if optimize else ""
        if optimize == "O4":
            out.append(Variant("onnx-fp16-O4", "onnx", "fp16", "onnx/model_O4.onnx", "O4", devices=["cuda", "tensorrt"]))
        elif optimize:
            devs = ["cpu", "cuda", "tensorrt"] if optimize == "O1" else ["cpu", "cuda"]
            out.append(Variant(f"onnx-fp32{opt_sfx}", "onnx", "fp32", f"onnx/model{file_sfx}.onnx", optimize, devices=devs))
        if quantize == "fp16" and optimize != "O4":
            out.append(Variant(f"onnx-fp16{opt_sfx}", "onnx", "fp16", f"onnx/model{file_sfx}_fp16.onnx", optimize, devices=["cuda", "tensorrt"]))
        if quantize == "int8":
            for isa in isas:
                out.append(Variant(f"onnx-int8-{isa}{opt_sfx}", "onnx", "int8", f"onnx/model_qint8_{isa}{file_sfx}.onnx", optimize, devices=["cpu"], isa=isa))
        if quantize == "int8-static":
            out.append(Variant(f"onnx-int8-static{opt_sfx}", "onnx", "int8", f"onnx/model_qint8_static{file_sfx}.onnx", optimize, devices=["cpu", "tensorrt"]))
    if backend in ("openvino", "all"):
        ov_devs = ["cpu", "gpu", "npu", "auto"]
        out.append(Variant("openvino-fp32", "openvino", "fp32", "openvino/openvino_model.xml", devices=ov_devs))
        if quantize == "fp16":
            out.append(Variant("openvino-fp16", "openvino", "fp16", "openvino/openvino_model_fp16.xml", devices=ov_devs))
        if quantize == "int8-static":
            out.append(Variant("openvino-int8-static", "openvino", "int8", "openvino/openvino_model_qint8_quantized.xml", devices=ov_devs))
        if quantize in ("int8", "int8-weights"):
            out.append(Variant("openvino-int8-weights", "openvino", "int8", "openvino/openvino_model_int8_weights.xml", devices=ov_devs))
        if quantize == "int4-weights":
            out.append(Variant("openvino-int4-weights", "openvino", "int4", "openvino/openvino_model_int4_weights.xml", devices=["cpu", "gpu", "auto"]))
    return out


def _headline(variants: list[Variant], quantize: str, optimize: str | None) -> str:
    for v in variants:
        if quantize not in ("none",) and (v.quantization or v.precision != "fp32"):
            return v.name
    for v in variants:
        if optimize and v.optimization == optimize:
            return v.name
    return variants[0].name


# ------------------------------------------------------------------ export
def _files_of(v: Variant, root: Path) -> list[Path]:
    main = root / v.file
    if v.backend == "openvino":
        return [main, main.with_suffix(".bin")]
    from .onnx import check_external_data

    return [main] + check_external_data(main, root)


def _hashes(files: list[Path], root: Path) -> str | dict[str, str]:
    if len(files) == 1:
        return sha256_file(files[0])
    return {f.relative_to(root).as_posix(): sha256_file(f) for f in files}


def export_model(
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    backend: str = "onnx",
    optimize: str | None = None,
    quantize: str = "none",
    isa: str | None = "auto",
    calibration: str | os.PathLike | None = None,
    calibration_column: str | None = None,
    calibration_method: str = "minmax",
    calibration_size: int = 300,
    eval: str | os.PathLike | None = None,
    eval_limit: int | None = None,
    max_drop: float | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    add: bool = False,
    show_progress: bool = False,
) -> ExportResult:
    """Export ``model`` to a verified artifact folder and return what was written.

    Variants: ONNX fp32 (always, with ``backend`` onnx/all), ``optimize`` O1-O4 (onnxruntime
    levels; O4 is fp16), ``quantize`` fp16 / int8 (dynamic, one variant per ``isa``: auto = this CPU,
    all, or names) / int8-static (calibrated on ``calibration``) / int8-weights / int4-weights
    (OpenVINO). OpenVINO fp32 always with backend openvino/all. Every variant is verified against
    PyTorch fp32 on real texts (and Spearman on ``eval``); with ``max_drop`` a failing variant raises
    CheckFailedError and nothing is written. ``add`` keeps the variants of an existing artifact of
    the same source model; ``overwrite`` replaces it.
    """
    from ..data import read_sts
    from . import manifest as mf
    from .quantize import isas_for

    optimize = _check_options(backend, optimize, quantize, calibration, calibration_method, device)
    isas = isas_for(isa) if quantize == "int8" and backend in ("onnx", "all") else []
    if device == "cuda":
        _check_cuda(backend)
    if max_drop is not None and max_drop < 0:
        raise StedgeError(f"--max-drop must be >= 0, got {max_drop}")
    out = Path(output) if output is not None else Path("models") / f"{model_display_name(model)}-stedge"
    src_path = resolve_model(model)
    check_output(out, overwrite or add, protect=[src_path],
                 exists_hint="pass --overwrite to replace it or --add to add variants to it")
    if add and out.exists() and not (out / mf.MANIFEST).is_file():
        raise StedgeError(f"--add: {out} has no {mf.MANIFEST}, so it is not an artifact to add variants to; "
                          "choose another -o")

    cal_texts = None
    if quantize == "int8-static":
        from .calibration import calibration_texts

        cal_texts = calibration_texts(calibration, calibration_column, limit=calibration_size)
    elif calibration is not None:
        from .calibration import embedding_texts

        cal_texts = embedding_texts(calibration, calibration_column, limit=calibration_size)
    eval_set = read_sts(eval, limit=eval_limit) if eval is not None else None

    steps = _Steps(show_progress)
    try:
        with output_lock(out):  # a second writer of `out` waits here, then sees what the first wrote
            steps.start("Loading the model")
            existing = mf.read(out) if add and out.exists() else None
            torch_model, task, source = load_model(model)
            if existing is not None and ((existing.get("source") or {}).get("sha256") != source["sha256"]
                                         or existing.get("task") != task):
                raise StedgeError(
                    f"{out / mf.MANIFEST}: the artifact was exported from another model (source sha256 differs); "
                    "use --overwrite to replace it or another -o"
                )
            variants = plan_variants(backend, optimize, quantize, isas, device)
            with atomic_dir(out, overwrite=overwrite or add, protect=[src_path]) as tmp:
                if existing is not None:
                    shutil.copytree(out, tmp, dirs_exist_ok=True)
                else:
                    torch_model.save(tmp)
                    torch_model.eval()
                manifest = _build(torch_model, task, source, variants, tmp, optimize, cal_texts, calibration_method,
                                  eval_set, max_drop, device, existing, steps)
                manifest["default_variant"] = _headline(variants, quantize, optimize)
                _embedding_calibration(manifest, torch_model, task, cal_texts, quantize, existing, tmp)
                mf.check_tokenizer(tmp, manifest)
                mf.write(tmp, manifest)
    finally:
        steps.stop()
    rows = _rows(manifest, {v.name for v in variants}, out)
    return ExportResult(out.resolve(), manifest, rows)


def _embedding_calibration(manifest: dict, model, task: str, cal_texts, quantize: str, existing: dict | None,
                           root: Path) -> None:
    """Embedding models: int8/uint8 output ranges from the calibration texts (PyTorch fp32), or the
    existing artifact's when --add brings no new texts."""
    if task != "embedding":
        if cal_texts is not None and quantize != "int8-static":
            logger.warning("--calibration is only used by --quantize int8-static for rerankers; ignoring it")
        return
    if cal_texts is not None:
        from .calibration import save_embedding_calibration

        emb = model.encode(cal_texts, batch_size=32, show_progress_bar=False)
        manifest["embedding_calibration"] = save_embedding_calibration(root, emb, len(cal_texts), None)
    elif existing is not None and existing.get("embedding_calibration"):
        manifest["embedding_calibration"] = existing["embedding_calibration"]


class _Steps:
    """A one-line rich progress display of the export steps (no-op when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self._p = None
        self._task = None
        if enabled:
            from ..progress import make_progress

            self._p = make_progress(transient=True)
            self._p.start()

    def start(self, what: str) -> None:
        if self._p is None:
            return
        if self._task is None:
            self._task = self._p.add_task(what, total=None)
        else:
            self._p.update(self._task, description=what)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def _build(model, task: str, source: dict, variants: list[Variant], root: Path, optimize: str | None, cal_texts,
           cal_method: str, eval_set, max_drop: float | None, device: str, existing: dict | None, steps: _Steps) -> dict:
    """Export, build and verify every variant inside ``root``; return the manifest (default_variant set later)."""
    from . import manifest as mf
    from . import onnx as ox
    from .verify import Reference, Runner, Verification, check, default_texts

    work = root / WORK
    work.mkdir(exist_ok=True)
    fp32 = root / "onnx" / "model.onnx" if any(v.backend == "onnx" for v in variants) else work / "model.onnx"
    steps.start("Exporting to ONNX")
    spec = ox.export_onnx(model, task, fp32)
    steps.start("PyTorch reference outputs")
    texts = default_texts()
    if eval_set is not None:
        texts = texts + [t for t in eval_set.sentences1[:64] if t.strip()]
    ref = Reference(model, task, texts, eval_set)
    batches = None
    if cal_texts is not None:
        from .calibration import calibration_batches

        steps.start("Tokenizing calibration texts")
        batches = calibration_batches(model, task, cal_texts)
    config = model.transformer.config if task == "embedding" else model.config
    # quantized / fp16 ONNX variants build on the optimized graph when O1-O3 was asked
    qbase = root / "onnx" / f"model_{optimize}.onnx" if optimize in ("O1", "O2", "O3") else fp32

    entries: dict[str, dict] = dict((existing or {}).get("variants") or {})
    for v in variants:
        steps.start(f"Building {v.name}")
        target = root / v.file
        target.parent.mkdir(parents=True, exist_ok=True)
        if v.backend == "onnx":
            verification = _build_onnx(v, fp32, qbase, target, work, config, batches, cal_method, spec, device, ref, max_drop, root)
        else:
            _build_openvino(v, fp32, target, batches, task, spec)
            verification = None
        if verification is None and v.note is None:
            steps.start(f"Verifying {v.name}")
            verification = ref.compare(Runner(v.backend, target, device, root), max_drop).to_dict()
        if verification is not None and max_drop is not None:
            check(v.name, Verification(**verification))
        entries.pop(v.name, None)
        entries[v.name] = _entry(v, spec, root, verification)
    shutil.rmtree(work, ignore_errors=True)
    fields = mf.model_fields(model, task)
    return {
        "format_version": mf.FORMAT_VERSION, "task": fields.pop("task"), "source": source, **fields,
        "default_variant": next(iter(entries)), "variants": entries, "created_with": mf.created_with(),
    }


def _verify_or_note(v: Variant, target: Path, device: str, ref, max_drop, root: Path) -> dict | None:
    """Verify a variant that may not run on this device (fp16 on a CPU): a note instead of a failure."""
    from .verify import Runner

    try:
        runner = Runner(v.backend, target, device, root)
        return ref.compare(runner, max_drop).to_dict()
    except StedgeError:
        raise
    except Exception as e:  # onnxruntime has no kernel for an op on this device
        v.note = f"not verified on {device}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return None


def _build_onnx(v: Variant, fp32: Path, qbase: Path, target: Path, work: Path, config, batches, cal_method: str, spec,
                device: str, ref, max_drop, root: Path) -> dict | None:
    """Write one ONNX variant; returns its verification when building needed it (fp16), else None."""
    from . import optimize as opt
    from . import quantize as q

    if v.name == "onnx-fp32":
        return None
    if v.precision == "fp32":  # O1-O3
        v.optimization_settings = opt.optimize(fp32, target, v.optimization, config, for_gpu=device == "cuda")
        return None
    if v.precision == "fp16":
        if v.optimization == "O4":
            src = work / "model_O4_fp32.onnx"
            v.optimization_settings = opt.optimize(fp32, src, "O4", config, for_gpu=True)
        else:
            src = qbase
        v.quantization = {"method": "fp16", **opt.to_fp16(src, target)}
        result = _verify_or_note(v, target, device, ref, max_drop, root)
        if result is not None and not result["finite"]:
            logger.warning("%s overflowed in fp16: keeping %s in fp32", v.name, ", ".join(opt.FP16_SENSITIVE_OPS))
            v.quantization = {"method": "fp16", **opt.to_fp16(src, target, keep_ops=opt.FP16_SENSITIVE_OPS)}
            result = _verify_or_note(v, target, device, ref, max_drop, root)
        if result is not None and device == "cpu" and "cpu" not in v.devices:
            v.devices = v.devices + ["cpu"]
        return result
    if v.isa is not None:
        v.quantization = q.quantize_dynamic_int8(qbase, target, v.isa)
        return None
    from .calibration import restrict

    tail = opt.tail_nodes(_load_graph(qbase))
    v.quantization = q.quantize_static_int8(qbase, target, restrict(batches, spec.inputs), cal_method, exclude_nodes=tail)
    return None


def _load_graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _build_openvino(v: Variant, fp32: Path, target: Path, batches, task: str, spec) -> None:
    from . import openvino as ovx
    from . import quantize as q
    from .calibration import restrict

    model = ovx.from_onnx(fp32)
    if v.name == "openvino-fp32":
        ovx.save(model, target)
    elif v.name == "openvino-fp16":
        ovx.save(model, target, fp16=True)
        v.quantization = {"method": "fp16", "compress_to_fp16": True}
    elif v.name == "openvino-int8-static":
        model, v.quantization = q.ov_quantize_static(model, restrict(batches, spec.inputs), task)
        ovx.save(model, target)
    elif v.name == "openvino-int8-weights":
        model, v.quantization = q.ov_compress_weights(model, 8)
        ovx.save(model, target)
    elif v.name == "openvino-int4-weights":
        model, v.quantization = q.ov_compress_weights(model, 4)
        ovx.save(model, target)
    else:  # pragma: no cover - plan_variants only makes the names above
        raise StedgeError(f"unknown OpenVINO variant {v.name}")


def _entry(v: Variant, spec, root: Path, verification: dict | None) -> dict:
    files = _files_of(v, root)
    e = {
        "file": v.file, "backend": v.backend, "precision": v.precision, "optimization": v.optimization,
        "optimization_settings": v.optimization_settings, "quantization": v.quantization,
        "devices": list(v.devices), "inputs": list(spec.inputs), "outputs": list(spec.outputs),
        "sha256": _hashes(files, root), "size_bytes": sum(f.stat().st_size for f in files),
        "verification": verification,
    }
    if v.note:
        e["note"] = v.note
    return e


def _rows(manifest: dict, new: set[str], root: Path) -> list[dict]:
    rows = []
    for name, e in manifest["variants"].items():
        ver = e.get("verification") or {}
        rows.append({
            "variant": name, "file": e["file"], "size_bytes": e["size_bytes"],
            "mean_cosine": ver.get("mean_cosine"), "min_cosine": ver.get("min_cosine"),
            "spearman": ver.get("spearman"), "reference_spearman": ver.get("reference_spearman"),
            "drop": ver.get("drop"), "drop_unit": ver.get("drop_unit"),
            "passed": ver.get("passed") if ver else None, "note": e.get("note"), "new": name in new,
        })
    return rows
