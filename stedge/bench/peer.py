"""The sentence-transformers peers in another interpreter (``stedge bench --peer-python PATH``).

The main line (transformers 5, sentence-transformers 6) cannot install sentence-transformers' ONNX /
OpenVINO backends (optimum-onnx, optimum-intel); the compatibility venv (``make setup-compat``) can. With a
peer interpreter every ``st`` subject is probed, exported (``python -m stedge.bench.peer_export``) and
measured (``python -m stedge.bench.worker``) in that interpreter, so the table still holds
sentence-transformers' best backend, labelled with the version that ran.

One probe per interpreter and backend (cached for the process): it imports sentence_transformers and the
backend's libraries there and reports their versions.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from stedge.errors import StedgeError

ENV_VAR = "STEDGE_BENCH_PEER_PYTHON"

# Modules each backend imports in the peer interpreter, and the distributions whose versions the rows record.
BACKEND_MODULES = {
    "torch": ("sentence_transformers",),
    "onnx": ("sentence_transformers", "optimum.onnxruntime", "onnxruntime"),
    "openvino": ("sentence_transformers", "optimum.intel"),
}
_DISTS = {
    "torch": ("sentence-transformers", "transformers", "torch"),
    "onnx": ("sentence-transformers", "transformers", "torch", "optimum", "optimum-onnx", "onnxruntime"),
    "openvino": ("sentence-transformers", "transformers", "torch", "optimum", "optimum-intel", "openvino"),
}
PROBE_TIMEOUT_S = 300

# Runs in the peer interpreter: argv = backend, then JSON lists of modules and distributions. Prints one JSON line.
_PROBE = r"""
import importlib, importlib.metadata as md, importlib.util, json, sys
backend, modules, dists = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {"python_version": sys.version.split()[0], "missing": None, "error": None, "versions": {}}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as e:
        out["missing"], out["error"] = name, f"{type(e).__name__}: {e}".splitlines()[0][:300]
        break
for d in dists:
    try:
        out["versions"][d] = md.version(d)
    except md.PackageNotFoundError:
        out["versions"][d] = None
if out["missing"] is None:
    out["stedge"] = importlib.util.find_spec("stedge") is not None
    if backend == "onnx":
        import onnxruntime
        out["providers"] = list(onnxruntime.get_available_providers())
    import torch
    out["cuda"] = bool(torch.cuda.is_available())
print(json.dumps(out))
"""


def resolve_peer_python(cli: str | os.PathLike | None, suite_value: str | None) -> str | None:
    """The peer interpreter: ``--peer-python``, else ``$STEDGE_BENCH_PEER_PYTHON``, else the suite's
    ``peer_python`` (None: the peers run in this interpreter). Relative paths resolve against the working
    directory, without following symlinks (a venv's python is one). A missing or non-executable file is a
    StedgeError naming it and where it came from."""
    for value, where in (
        (cli, "--peer-python"),
        (os.environ.get(ENV_VAR) or None, ENV_VAR),
        (suite_value, "the suite's peer_python"),
    ):
        if value is None or str(value) == "":
            continue
        path = os.path.abspath(os.path.expanduser(str(value)))
        if not os.path.isfile(path):
            raise StedgeError(
                f"{where}: {path} does not exist (give the python of a venv with sentence-transformers, "
                "e.g. .venv-compat/bin/python after `make setup-compat`)"
            )
        if not os.access(path, os.X_OK):
            raise StedgeError(f"{where}: {path} is not executable (chmod +x it, or give a venv's bin/python)")
        return path
    return None


@functools.lru_cache(maxsize=None)
def probe(python: str, backend: str) -> dict[str, Any]:
    """What ``python`` can run of sentence-transformers' ``backend``: ``{"ok", "reason", "python",
    "python_version", "versions", "providers", "cuda"}`` (cached per interpreter and backend)."""
    modules, dists = BACKEND_MODULES[backend], _DISTS[backend]
    base: dict[str, Any] = {"ok": False, "python": python, "versions": {}}
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, backend, json.dumps(modules), json.dumps(dists)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {**base, "reason": f"peer python {python} could not be probed ({type(e).__name__}: {e})"}
    lines = proc.stdout.strip().splitlines()
    try:
        info = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        tail = (proc.stderr.strip() or proc.stdout.strip())[-300:] or "no output"
        return {**base, "reason": f"peer python {python} failed its probe (exit {proc.returncode}): {tail}"}
    out = {**base, **info, "ok": info.get("missing") is None}
    if info.get("missing"):
        out["reason"] = (
            f"sentence-transformers' {backend} backend cannot run in peer python {python}: "
            f"import {info['missing']} failed ({info.get('error')})"
        )
    elif not info.get("stedge"):
        out.update(
            ok=False,
            reason=f"peer python {python} cannot import stedge (the bench worker); "
            "pip install -e . in that venv (make setup-compat does)",
        )
    else:
        out["reason"] = None
    return out


def short_version(version: str | None) -> str | None:
    """``5.7.0`` -> ``5.7`` (major.minor for labels)."""
    return ".".join(version.split(".")[:2]) if version else None


def export_st_peer(model_path: str | Path, backend: str, out: str | Path, task: str = "embedding") -> None:
    """sentence-transformers' own export of ``model_path`` for ``backend`` (onnx / openvino), saved into ``out``
    (task ``reranking``: through its ``CrossEncoder``, which writes the same ``onnx/`` / ``openvino/`` files).

    Runs in whichever interpreter calls it: the harness's own, or the peer interpreter through
    ``python -m stedge.bench.peer_export MODEL BACKEND OUT [TASK]``.
    """
    from sentence_transformers import CrossEncoder, SentenceTransformer

    cls = CrossEncoder if task == "reranking" else SentenceTransformer
    model = cls(str(model_path), backend=backend, device="cpu", local_files_only=True)
    model.save(str(out))
