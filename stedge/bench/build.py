"""Build the artifact variants a suite asks for, through the export stage (``stedge.export.export_model``).

Each variant name maps to one export call (backend, optimize, quantize, isa); calls that differ only
in backend are merged (``backend="all"``). The artifact is reused while its stedge.json records the
model's source hash; only the missing variants are exported, added to it with ``add=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from stedge.errors import StedgeError

INT8_ISAS = ("avx2", "avx512", "avx512_vnni", "arm64")  # dynamic-int8 kernel families (stedge export --isa)


def export_call(variant: str) -> tuple[str, str | None, str, str | None]:
    """(backend, optimize, quantize, isa) of the export_model call that writes ``variant``.

    ``onnx-fp32`` -> (onnx, None, none); ``onnx-fp32-O3`` -> (onnx, O3, none); ``onnx-fp16-O4`` ->
    (onnx, O4, none); ``onnx-int8-avx512_vnni`` -> (onnx, None, int8-dynamic, avx512_vnni);
    ``onnx-int8-static`` -> (onnx, None, int8-static); ``onnx-int8-rows`` -> (onnx, None, int8-rows);
    ``openvino-int8-static`` -> (openvino, None,
    int8-static); ``openvino-int4-weights`` -> (openvino, None, int4-weights); ``onnx-fp16`` -> fp16;
    ``openvino-bf16`` -> (openvino, None, bf16).
    """
    from stedge_runtime.artifact import parse_variant_name
    from stedge_runtime.errors import ArtifactError

    try:
        n = parse_variant_name(variant, "suite")
    except ArtifactError as e:
        raise StedgeError(str(e)) from None
    backend, prec, q, opt = n.backend, n.precision, n.qualifier, n.optimization
    if prec == "fp32":
        if q:
            raise StedgeError(f"variant {variant!r}: fp32 takes no quantization suffix")
        return backend, opt, "none", None
    if prec == "fp16":
        return backend, opt, ("none" if opt == "O4" else "fp16"), None
    if prec == "bf16":
        if backend != "openvino" or q:
            raise StedgeError(f"variant {variant!r}: bf16 is an OpenVINO variant without a suffix (openvino-bf16)")
        return backend, opt, "bf16", None
    if q in ("static", "weights", "rows"):
        return backend, opt, f"{prec}-{q}", None
    if q in INT8_ISAS and prec == "int8" and backend == "onnx":
        return backend, opt, "int8-dynamic", q
    raise StedgeError(
        f"variant {variant!r}: unknown quantization; use -static, -rows, -weights "
        "or an ISA (avx2, avx512, avx512_vnni, arm64)"
    )


def plan_calls(variants: list[str]) -> list[dict]:
    """export_model keyword sets writing ``variants``, backends merged where the rest is equal."""
    groups: dict[tuple, list[str]] = {}
    for v in variants:
        backend, opt, quant, isa = export_call(v)
        groups.setdefault((opt, quant, isa), []).append(backend)
    calls = []
    for (opt, quant, isa), backends in groups.items():
        if set(backends) == {"onnx", "openvino"} and opt is None:
            backends = ["all"]
        for b in dict.fromkeys(backends):
            call = {"backend": b, "optimize": opt, "quantize": quant}
            if isa:
                call["isa"] = isa
            calls.append(call)
    return calls


def _manifest(path: Path):
    from stedge_runtime.artifact import Manifest
    from stedge_runtime.errors import ArtifactError

    try:
        return Manifest.read(path)
    except ArtifactError:
        return None


def stale_calibration(manifest, source: str | None) -> list[str]:
    """The variants of ``manifest`` calibrated on other texts than ``source`` ("builtin": the built-in ones), or on a
    file's first rows (artifacts from before calibration texts were spread over the file)."""
    from stedge.export.calibration import calibrated_on

    return [
        name
        for name, v in manifest.variants.items()
        if (v.quantization or {}).get("calibration") and not calibrated_on(v.quantization["calibration"], source)
    ]


def build_variants(
    model_path: Path,
    artifact: Path,
    variants: list[str],
    calibration: tuple[str | None, int] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    eval_data: tuple[str, int | None] | None = None,
) -> Path:
    """Make sure ``artifact`` holds ``variants`` of ``model_path`` (exporting what is missing); return it.

    ``eval_data`` (STS pairs, limit): every variant is verified on them too (Spearman and min cosine over their
    texts), so the tiers the auto subjects choose by are the ones users get from ``stedge export --eval``; an
    artifact verified without an eval set is exported again.

    ``calibration`` (source, at most this many texts; source "builtin": the export's built-in texts) calibrates the
    int8-static and int8-rows variants; an artifact whose calibrated variants name other texts is exported
    again. Without it, what the artifact has is kept (new exports of int8-static need it)."""
    from stedge.export import export_model
    from stedge.export.core import source_sha256

    from .machine import int8_isa

    wanted = list(dict.fromkeys(v.split(":", 1)[-1].replace("{isa}", int8_isa()) for v in variants))
    m = _manifest(artifact)
    fresh = m is None or m.source.get("sha256") != source_sha256(model_path)
    if not fresh and eval_data is not None:
        fresh = any(v.verification is None or v.verification.spearman is None for v in m.variants.values())
    stale = [] if fresh or calibration is None else stale_calibration(m, calibration[0])
    if stale:
        log(f"{artifact}: {', '.join(stale)} calibrated on other texts than the suite's; exporting again")
        fresh = True
    have = set() if fresh else set(m.variants)
    if not fresh:
        from stedge.export.plan import outdated_builds

        old = {n: why for n, why in outdated_builds(m.variants).items() if n in wanted}
        for name, why in old.items():
            log(f"{artifact}: {name} was built by an older stedge ({why}); exporting it again")
        have -= set(old)
    missing = [v for v in wanted if v not in have]
    if not missing:
        log(f"reusing {artifact} (same source weights; has {', '.join(wanted)})")
        return artifact
    calls = plan_calls(missing)
    for i, call in enumerate(calls):
        if call["quantize"] in ("int8-static", "int8-rows") and calibration is not None:
            call["calibration"], call["calibration_size"] = calibration
        if eval_data is not None:
            call["eval_data"], call["eval_limit"] = eval_data
        first = fresh and i == 0
        log(f"exporting {model_path.name} -> {artifact} ({', '.join(f'{k}={v}' for k, v in call.items() if v)})")
        export_model(
            str(model_path),
            str(artifact),
            device="cuda" if device.startswith(("cuda", "tensorrt")) else "cpu",
            overwrite=first,
            add=not first,
            **call,
        )
    m = _manifest(artifact)
    have = set(m.variants) if m else set()
    still = [v for v in wanted if v not in have]
    if still:
        raise StedgeError(
            f"{artifact}: the export did not produce {', '.join(still)} "
            f"(it has: {', '.join(sorted(have)) or 'nothing'}); fix the suite's variants list"
        )
    return artifact
