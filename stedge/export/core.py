"""`export_model`: a model reference in, a verified artifact folder out (ST layout + onnx/ + openvino/ +
stedge.json). The options become an immutable plan (``plan.py``), built and verified variant by variant
(``build.py``, ``verify.py``)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import StedgeError
from ..hub import detect_task, model_display_name, resolve_model
from ..io import atomic_dir, check_output, output_lock, sha256_file
from .manifest import MANIFEST

logger = logging.getLogger(__name__)


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
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.suffix in (".safetensors", ".bin")
            and not ({"onnx", "openvino"} & set(p.relative_to(folder).parts))
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
        src = {
            "model": str(ref),
            "sha256": source_sha256(path, Path(base_path)),
            "adapter": str(path),
            "base_model": base,
        }
        return model.eval(), "embedding", src
    task = detect_task(path)
    model = SentenceEncoder(path, device="cpu") if task == "embedding" else CrossEncoder(path, device="cpu")
    return model.eval(), task, {"model": str(ref), "sha256": source_sha256(path)}


# ------------------------------------------------------------------ export
def _check_cuda(backend: str) -> None:
    """--device cuda: fail early when the engines cannot reach a GPU here."""
    from ..errors import require

    if backend in ("onnx", "all"):
        ort = require("onnxruntime", "onnx", "verifying on cuda")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise StedgeError(
                "--device cuda: onnxruntime has no CUDAExecutionProvider here; install stedge[gpu] or use --device cpu"
            )
    if backend in ("openvino", "all"):
        ov = require("openvino", "openvino", "verifying on a GPU")
        if not any(d.startswith("GPU") for d in ov.Core().available_devices):
            raise StedgeError("--device cuda: OpenVINO sees no GPU here; use --device cpu or --backend onnx")


def export_model(
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    backend: str | None = None,
    optimize: str | None = None,
    quantize: str = "none",
    isa: str | None = "auto",
    calibration: str | os.PathLike | None = None,
    calibration_column: str | None = None,
    calibration_method: str = "minmax",
    calibration_size: int = 300,
    eval_data: str | os.PathLike | None = None,
    eval_limit: int | None = None,
    max_drop: float | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    add: bool = False,
    show_progress: bool = False,
) -> ExportResult:
    """Export ``model`` to a verified artifact folder and return what was written.

    Variants: ONNX fp32 (always, with ``backend`` onnx/all; unset: onnx, or all for ``quantize="auto"``
    where OpenVINO is installed), ``optimize`` O1-O4 (onnxruntime levels; O4 is fp16), ``quantize`` (see
    ``stedge.export.plan.QUANTIZE``: fp16, bf16, int8, int8-dynamic (one variant per ``isa``: auto = this
    CPU, all, or names), int8-static (calibrated on ``calibration``), int8-rows (activations quantized per
    row at run time), int8-weights, int4-weights, auto (int8 static and per-row, and bf16 on a CPU with
    avx512_bf16 / AMX)). OpenVINO fp32 always with backend openvino/all. Every variant is verified by
    loading the artifact with stedge_runtime and comparing with PyTorch fp32 on real texts (Spearman on
    ``eval_data``, batch invariance, the precision tier reached); with ``max_drop`` a variant over it raises
    CheckFailedError and nothing is written. ``add`` keeps the variants of an existing artifact of the same
    source model; ``overwrite`` replaces it.
    """
    from .plan import ExportOptions, check_options, make_plan, resolve_backend
    from .quantize import cpu_flags, isas_for

    backend = resolve_backend(backend, quantize, device)
    options = check_options(
        ExportOptions(
            backend=backend,
            optimize=optimize,
            quantize=quantize,
            calibration=calibration,
            calibration_column=calibration_column,
            calibration_method=calibration_method,
            calibration_size=calibration_size,
            eval_data=eval_data,
            eval_limit=eval_limit,
            max_drop=max_drop,
            device=device,
        )
    )
    isas = tuple(isas_for(isa))  # a bad --isa is an error even where only int8-dynamic would use it
    if "onnx-int8-dynamic" in options.choice.onnx and options.onnx:
        options = replace(options, isas=isas)
    plan = make_plan(options, cpu_flags())
    if device == "cuda":
        _check_cuda(backend)
    out = Path(output) if output is not None else Path("models") / f"{model_display_name(model)}-stedge"
    src_path = resolve_model(model)
    check_output(
        out,
        overwrite or add,
        protect=[src_path],
        exists_hint="pass --overwrite to replace it or --add to add variants to it",
    )
    if add and out.exists() and not (out / MANIFEST).is_file():
        raise StedgeError(
            f"--add: {out} has no {MANIFEST}, so it is not an artifact to add variants to; choose another -o"
        )
    steps = _Steps(show_progress)
    try:
        with output_lock(out):  # a second writer of `out` waits here, then sees what the first wrote
            manifest = _export(model, out, plan, add, overwrite or add, src_path, steps)
    finally:
        steps.stop()
    return ExportResult(out.resolve(), manifest, _rows(manifest, plan.names))


def _inputs(options) -> tuple[list[str] | None, Any]:
    """Calibration texts and the eval set, read before anything is built (bad input fails early)."""
    from ..data import read_sts

    cal_texts = None
    if options.choice.calibrated:
        from .calibration import calibration_texts

        # no --calibration (or "builtin"): the built-in texts
        cal_texts = calibration_texts(options.calibration, options.calibration_column, limit=options.calibration_size)
    elif options.calibration is not None:
        from .calibration import embedding_texts

        cal_texts = embedding_texts(options.calibration, options.calibration_column, limit=options.calibration_size)
    eval_set = read_sts(options.eval_data, limit=options.eval_limit) if options.eval_data is not None else None
    return cal_texts, eval_set


def _export(
    model: str | os.PathLike, out: Path, plan, add: bool, replace_out: bool, src_path: Path, steps: _Steps
) -> dict:
    """Load, build and verify inside an atomic folder; return the manifest written."""
    from . import manifest as mf
    from .build import BuildContext, build_all

    cal_texts, eval_set = _inputs(plan.options)
    steps.start("Loading the model")
    existing = mf.read(out) if add and out.exists() else None
    torch_model, task, source = load_model(model)
    if existing is not None and (
        (existing.get("source") or {}).get("sha256") != source["sha256"] or existing.get("task") != task
    ):
        raise StedgeError(
            f"{out / mf.MANIFEST}: the artifact was exported from another model (source sha256 differs); "
            "use --overwrite to replace it or another -o"
        )
    with atomic_dir(out, overwrite=replace_out, protect=[src_path]) as tmp:
        if existing is not None:
            shutil.copytree(out, tmp, dirs_exist_ok=True)
        else:
            torch_model.save(tmp)
            torch_model.eval()
        ctx = BuildContext(
            torch_model,
            task,
            plan,
            tmp,
            source,
            mf.model_fields(torch_model, task),
            entries=dict((existing or {}).get("variants") or {}),
        )
        _check_kept(ctx, out, "they were changed after their export")
        _prepare(ctx, cal_texts, eval_set, steps)
        build_all(ctx, steps.start)
        _check_kept(ctx, out, "this export rewrote a file they share, which is a stedge bug: please report it")
        shutil.rmtree(ctx.work, ignore_errors=True)
        manifest = ctx.manifest(plan.default)
        user_texts = cal_texts if plan.options.calibration is not None else None  # not the built-in ones
        _embedding_calibration(manifest, torch_model, task, user_texts, plan.options.choice.calibrated, existing, tmp)
        mf.check_tokenizer(tmp, manifest)
        mf.write(tmp, manifest)
    return manifest


def _check_kept(ctx, out: Path, why: str) -> None:
    """--add keeps the artifact's other variants only while their files are the ones they were verified on."""
    from .build import stale_kept_variants

    stale = stale_kept_variants(ctx)
    if stale:
        raise StedgeError(
            f"{out}: the files of {', '.join(stale)} no longer match their records in {MANIFEST}: {why}. --add "
            f"cannot keep them, so nothing was written. Export them again in this call (add their --quantize "
            f"choice) or start over with --overwrite"
        )


def _prepare(ctx, cal_texts: list[str] | None, eval_set, steps: _Steps) -> None:
    """Export the fp32 ONNX graph, compute the PyTorch reference, tokenize calibration texts."""
    from . import onnx_graph as ox
    from .verify import Reference, default_texts

    ctx.work.mkdir(exist_ok=True)
    in_onnx = any(v.backend == "onnx" for v in ctx.plan.variants)
    ctx.fp32 = ctx.root / "onnx" / "model.onnx" if in_onnx else ctx.work / "model.onnx"
    steps.start("Exporting to ONNX")
    ctx.spec = ox.export_onnx(ctx.model, ctx.task, ctx.fp32)
    steps.start("PyTorch reference outputs")
    texts = default_texts()
    if eval_set is not None:
        texts = texts + [t for t in eval_set.sentences1[:64] if t.strip()]
    ctx.reference = Reference(ctx.model, ctx.task, texts, eval_set)
    if cal_texts is not None and ctx.plan.options.choice.calibrated:
        from .calibration import calibration_batches, calibration_label

        steps.start("Tokenizing calibration texts")
        ctx.batches = calibration_batches(ctx.model, ctx.task, cal_texts)
        o = ctx.options
        ctx.calibration_source = calibration_label(o.calibration, len(cal_texts))


def _embedding_calibration(
    manifest: dict, model, task: str, cal_texts, calibrated: bool, existing: dict | None, root: Path
) -> None:
    """Embedding models: int8/uint8 output ranges from the calibration texts (PyTorch fp32), or the
    existing artifact's when --add brings no new texts. ``calibrated``: the --quantize choice calibrates graphs."""
    if task != "embedding":
        if cal_texts is not None and not calibrated:
            logger.warning(
                "--calibration is only used by --quantize int8 / int8-static / int8-rows / auto for rerankers; "
                "ignoring it"
            )
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


def _rows(manifest: dict, new: frozenset[str]) -> list[dict]:
    rows = []
    for name, e in manifest["variants"].items():
        ver = e.get("verification") or {}
        rows.append(
            {
                "variant": name,
                "file": e["file"],
                "size_bytes": e["size_bytes"],
                "mean_cosine": ver.get("mean_cosine"),
                "min_cosine": ver.get("min_cosine"),
                "spearman": ver.get("spearman"),
                "reference_spearman": ver.get("reference_spearman"),
                "drop": ver.get("drop"),
                "drop_unit": ver.get("drop_unit"),
                "tier": ver.get("tier"),
                "batch_invariance_min_cos": ver.get("batch_invariance_min_cos"),
                "passed": ver.get("passed") if ver else None,
                "agreement": ver.get("agreement", "cosine") if ver else None,  # what the *cos* figures measure
                "note": e.get("note"),
                "new": name in new,
            }
        )
    return rows
