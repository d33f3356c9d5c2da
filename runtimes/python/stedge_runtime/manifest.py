"""Reading stedge.json, choosing a variant for a device, and checking file hashes (cached)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import ArtifactError

MANIFEST = "stedge.json"
FORMAT_VERSION = 1
TASKS = ("embedding", "reranking")

# Device families and the engine (variant backend) that serves them.
ONNX_DEVICES = ("cpu", "cuda", "tensorrt", "ort-openvino")
OPENVINO_DEVICES = ("cpu", "gpu", "npu", "auto")



def is_artifact(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a readable stedge.json with variants (never raises)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        return isinstance(data, dict) and isinstance(data.get("variants"), dict)
    except (OSError, ValueError):
        return False


def read_manifest(root: Path, task: str) -> dict[str, Any]:
    """Load and check stedge.json: format_version, task and the fields the runtime needs."""
    file = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a folder: pass an artifact folder written by `stedge export`")
    try:
        m = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{file} is missing: {root} is not a stedge artifact (run `stedge export` on the model)") from None
    except ValueError as e:
        raise ArtifactError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{file}: expected a JSON object")
    version = m.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{file}: field 'format_version' is missing or not an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: format_version {version} is newer than this stedge_runtime reads ({FORMAT_VERSION}): "
            "upgrade stedge-runtime"
        )
    if m.get("task", "embedding") != task:
        other = "Reranker" if task == "embedding" else "Encoder"
        raise ArtifactError(f"{file}: field 'task' is {m.get('task')!r}, expected {task!r} (load it with {other})")
    variants = m.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ArtifactError(f"{file}: field 'variants' is missing or empty: re-export the model")
    for name, v in variants.items():
        for key in ("file", "backend"):
            if not isinstance(v, dict) or not v.get(key):
                raise ArtifactError(f"{file}: variants.{name}.{key} is missing")
        if v["backend"] not in ("onnx", "openvino"):
            raise ArtifactError(f"{file}: variants.{name}.backend is {v['backend']!r}, expected 'onnx' or 'openvino'")
    if task == "embedding" and not isinstance(m.get("dimension"), int):
        raise ArtifactError(f"{file}: field 'dimension' is missing or not an integer")
    return m


def device_family(device: str) -> str:
    """'cuda:1' -> 'cuda', 'GPU.1' -> 'gpu', 'AUTO:GPU,CPU' -> 'auto'."""
    d = device.strip().lower()
    for sep in (":", "."):
        d = d.split(sep, 1)[0]
    return d


def backends_for(family: str) -> tuple[str, ...]:
    """Variant backends that can serve a device family (onnx first on the CPU)."""
    out = []
    if family in ONNX_DEVICES:
        out.append("onnx")
    if family in OPENVINO_DEVICES:
        out.append("openvino")
    return tuple(out)


def choose_variant(m: dict, family: str, name: str | None, installed: set[str], where: Path,
                   tier: str | None = None) -> str:
    """The variant to run: ``name`` when given, else the best fit for the device family at ``tier``.

    The rule (tiers, this machine's tuning profile, CPU flags) is stedge_runtime.select.select_variant;
    this returns only the name. The manifest's ``default_variant`` plays no part.
    """
    from .select import select_variant

    sel = select_variant(m["variants"], family, name, installed, where, tier=tier, where=str(where / MANIFEST))
    return sel.variant


# ------------------------------------------------------------------------ sha256
_cache_lock = threading.Lock()
_verified: set[tuple] = set()


def _cache_file() -> Path:
    base = os.environ.get("STEDGE_RUNTIME_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stedge-runtime"
    )
    return Path(base) / "sha256.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str | None, field: str, verify: bool | str = "cached") -> None:
    """Compare a file's sha256 with the manifest (``field`` names where the hash came from).

    ``verify="cached"`` hashes a file only the first time this (path, size, mtime, inode) is seen
    and remembers the result in ~/.cache/stedge-runtime/sha256.json ($STEDGE_RUNTIME_CACHE);
    ``True`` always hashes; ``False`` skips the check.
    """
    if not verify or not expected:
        return
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, expected)
    cache_key = "|".join(map(str, key))
    if verify == "cached":
        if key in _verified:
            return
        try:
            if json.loads(_cache_file().read_text()).get(cache_key):
                _verified.add(key)
                return
        except (OSError, ValueError):
            pass
    actual = _sha256(path)
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 {actual[:16]}... does not match {field} ({expected[:16]}...): the file changed "
            "after export; export the model again or restore the file"
        )
    _verified.add(key)
    if verify == "cached":
        _remember(cache_key)


def _remember(cache_key: str) -> None:
    file = _cache_file()
    with _cache_lock:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                data = {}
            data[cache_key] = True
            if len(data) > 500:  # keep the cache small: drop the oldest entries
                data = dict(list(data.items())[-500:])
            fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".sha256-")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, file)
        except OSError:  # a read-only home only costs a re-hash next time
            pass
