"""The export side of stedge.json: the fields that describe a torch model, and writing through the contract.

The contract itself (fields, validation, naming, files, devices) lives in ``stedge_runtime.artifact``.
"""

from __future__ import annotations

import os
from pathlib import Path

from stedge_runtime.artifact import FORMAT_VERSION, MANIFEST, Manifest, write_manifest

from .. import __version__
from ..errors import InvalidModelError

__all__ = ["FORMAT_VERSION", "MANIFEST", "write", "read", "created_with", "model_fields", "check_tokenizer"]


def write(folder: str | os.PathLike, manifest: dict) -> Path:
    """Validate and write ``folder/stedge.json`` through the artifact contract (``stedge_runtime.artifact``)."""
    from stedge_runtime.errors import ArtifactError

    try:
        return write_manifest(folder, manifest)
    except ArtifactError as e:  # a bug in the export stage, or a model field of an unexpected type
        raise InvalidModelError(str(e)) from None


def read(folder: str | os.PathLike) -> dict:
    """The JSON form of ``folder/stedge.json``, read and validated by the artifact contract."""
    from stedge_runtime.errors import ArtifactError

    try:
        return Manifest.read(folder).to_dict()
    except ArtifactError as e:
        raise InvalidModelError(str(e)) from None


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
            {
                "in_features": m.in_features,
                "out_features": m.out_features,
                "activation": type(m.activation_function).__name__,
            }
            for m in model
            if type(m).__name__ == "Dense"
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
