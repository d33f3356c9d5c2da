"""stedge.json: build, validate (against manifest.schema.json) and write the artifact manifest."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InvalidModelError, require

MANIFEST = "stedge.json"
FORMAT_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


def schema() -> dict:
    """The JSON schema of stedge.json."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def _clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def validate(manifest: dict, where: str | os.PathLike = MANIFEST) -> None:
    """Raise InvalidModelError naming the first field that breaks the schema."""
    jsonschema = require("jsonschema", "onnx", "validating stedge.json")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InvalidModelError(f"{where}: field '{field}': {e.message}")
    default = manifest.get("default_variant")
    if default not in manifest.get("variants", {}):
        raise InvalidModelError(f"{where}: default_variant {default!r} is not one of the variants")


def write(folder: str | os.PathLike, manifest: dict) -> Path:
    """Validate and write ``folder/stedge.json``."""
    data = _clean(manifest)
    path = Path(folder) / MANIFEST
    validate(data, path)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read(folder: str | os.PathLike) -> dict:
    """Read and validate ``folder/stedge.json``."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelError(f"{path} is missing: {folder} is not a stedge artifact") from None
    except json.JSONDecodeError as e:
        raise InvalidModelError(f"{path} is not valid JSON ({e})") from None
    validate(data, path)
    return data


def created_with() -> dict[str, str | None]:
    """Versions of the tools that wrote the artifact."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"stedge": __version__}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def model_fields(model, task: str) -> dict:
    """The manifest fields that describe the model (everything but source, variants, versions)."""
    if task == "embedding":
        t = model.transformer
        pooling = model.pooling
        dense = [
            {"in_features": m.in_features, "out_features": m.out_features, "activation": type(m.activation_function).__name__}
            for m in model if type(m).__name__ == "Dense"
        ]
        return {
            "task": "embedding",
            "tokenizer": "tokenizer.json",
            "max_seq_length": int(t.max_seq_length),
            "do_lower_case": bool(t.do_lower_case),
            "pooling": {"mode": pooling.pooling_mode, "include_prompt": bool(pooling.include_prompt)},
            "normalize": model.normalize is not None,
            "dimension": int(model.get_sentence_embedding_dimension()),
            "dense": dense,
            "prompts": dict(model.prompts),
            "default_prompt_name": model.default_prompt_name,
            "similarity_fn_name": model.similarity_fn_name,
        }
    act = type(model.activation).__name__.lower()
    return {
        "task": "reranking",
        "tokenizer": "tokenizer.json",
        "max_seq_length": int(model.max_length),
        "do_lower_case": False,  # the HF tokenizer (tokenizer.json) lower-cases itself where needed
        "pooling": None,
        "normalize": False,
        "dimension": None,
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": None,
        "num_labels": int(model.num_labels),
        "activation": {"identity": None}.get(act, act),
    }


def check_tokenizer(folder: Path, manifest: dict) -> None:
    """The runtime reads tokenizer.json: refuse an artifact without it."""
    if not (folder / manifest["tokenizer"]).is_file():
        raise InvalidModelError(
            f"{folder / manifest['tokenizer']} is missing: the runtime needs a fast tokenizer (tokenizer.json); "
            "re-save the model with a fast tokenizer"
        )
