"""Build the artifact variants a suite asks for, through the export stage (``stedge.export.export_model``).

Each variant name maps to one export call (backend, optimize, quantize, isa); calls that differ only
in backend are merged (``backend="all"``). The artifact is reused while its stedge.json records the
model's source hash; only the missing variants are exported, added to it with ``add=True``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from stedge.errors import StedgeError

_VARIANT = re.compile(
    r"^(?P<backend>onnx|openvino)-(?P<prec>fp32|fp16|int8|int4)"
    r"(?:-(?P<q>static|weights|avx2|avx512|avx512_vnni|arm64))?(?:-(?P<opt>O[1-4]))?$"
)


def export_call(variant: str) -> tuple[str, str | None, str, str | None]:
    """(backend, optimize, quantize, isa) of the export_model call that writes ``variant``.

    ``onnx-fp32`` -> (onnx, None, none); ``onnx-fp32-O3`` -> (onnx, O3, none); ``onnx-fp16-O4`` ->
    (onnx, O4, none); ``onnx-int8-avx512_vnni`` -> (onnx, None, int8, avx512_vnni);
    ``onnx-int8-static`` -> (onnx, None, int8-static); ``openvino-int8-static`` -> (openvino, None,
    int8-static); ``openvino-int4-weights`` -> (openvino, None, int4-weights); ``onnx-fp16`` -> fp16.
    """
    m = _VARIANT.match(variant)
    if m is None:
        raise StedgeError(
            f"variant {variant!r}: expected <backend>-<precision>[-<quantization>][-O<n>] like onnx-fp32, onnx-fp32-O3, "
            "onnx-fp16-O4, onnx-int8-avx2, onnx-int8-static, openvino-fp32, openvino-int8-static, openvino-int4-weights"
        )
    backend, prec, q, opt = m["backend"], m["prec"], m["q"], m["opt"]
    if prec == "fp32":
        if q:
            raise StedgeError(f"variant {variant!r}: fp32 takes no quantization suffix")
        return backend, opt, "none", None
    if prec == "fp16":
        return backend, opt, ("none" if opt == "O4" else "fp16"), None
    if q == "static":
        return backend, opt, f"{prec}-static", None
    if q == "weights":
        return backend, opt, f"{prec}-weights", None
    if q and prec == "int8" and backend == "onnx":
        return backend, opt, "int8", q
    raise StedgeError(f"variant {variant!r}: unknown quantization; use -static, -weights or an ISA (avx2, avx512, avx512_vnni, arm64)")


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


def _manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / "stedge.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_variants(model_path: Path, artifact: Path, variants: list[str], calibration: tuple[str, int] | None = None,
                   device: str = "cpu", log: Callable[[str], None] = print) -> Path:
    """Make sure ``artifact`` holds ``variants`` of ``model_path`` (exporting what is missing); return it."""
    from stedge.export import export_model
    from stedge.export.core import source_sha256

    from .machine import int8_isa

    wanted = list(dict.fromkeys(v.split(":", 1)[-1].replace("{isa}", int8_isa()) for v in variants))
    m = _manifest(artifact)
    fresh = m is None or (m.get("source") or {}).get("sha256") != source_sha256(model_path)
    have = set() if fresh else set(m.get("variants") or {})
    missing = [v for v in wanted if v not in have]
    if not missing:
        log(f"reusing {artifact} (same source weights; has {', '.join(wanted)})")
        return artifact
    calls = plan_calls(missing)
    for i, call in enumerate(calls):
        if call["quantize"] in ("int8-static",) and calibration is not None:
            call["calibration"], call["calibration_size"] = calibration
        first = fresh and i == 0
        log(f"exporting {model_path.name} -> {artifact} ({', '.join(f'{k}={v}' for k, v in call.items() if v)})")
        export_model(str(model_path), str(artifact), device="cuda" if device.startswith(("cuda", "tensorrt")) else "cpu",
                     overwrite=first, add=not first, **call)
    m = _manifest(artifact) or {}
    still = [v for v in wanted if v not in (m.get("variants") or {})]
    if still:
        raise StedgeError(
            f"{artifact}/stedge.json: the export did not produce {', '.join(still)} "
            f"(it has: {', '.join(m.get('variants') or []) or 'nothing'}); fix the suite's variants list"
        )
    return artifact
