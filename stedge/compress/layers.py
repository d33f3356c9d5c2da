"""Layer reduction: keep a chosen subset of a transformer's layers."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import StedgeError

# Where common architectures keep their stack of layers (attribute path from the base model).
LAYER_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, XLM-R, ELECTRA, MPNet, MiniLM
    "transformer.layer",  # DistilBERT
    "encoder.layers",  # BART/Marian encoders, some ViT-style models
    "layers",  # ModernBERT, Llama/Qwen/Mistral base models (model.layers)
    "encoder.block",  # T5 encoder
    "block",  # T5EncoderModel body
    "h",  # GPT-2 style
    "transformer.h",
    "model.layers",
)
# Config fields that hold the number of layers, per family.
LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer", "encoder_layers")


def _get_path(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (attribute path, ModuleList) of a Hugging Face model's transformer layers.

    Known layouts are tried first; otherwise the single ModuleList whose length equals the
    config's layer count is used.
    """
    for path in LAYER_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path, found
    config = getattr(model, "config", None)
    count = next((getattr(config, f) for f in LAYER_COUNT_FIELDS if isinstance(getattr(config, f, None), int)), None)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(candidates) == 1:
        return candidates[0]
    raise StedgeError(
        f"cannot find the transformer layers of {type(model).__name__}: none of "
        f"{', '.join(LAYER_PATHS)} is a ModuleList; layer reduction supports BERT-like models "
        "(use --student MODEL to distill into another model instead)"
    )


def spread_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices evenly spread over ``total`` layers, first and last included."""
    if keep < 1:
        raise StedgeError(f"--num-layers must be at least 1, got {keep}")
    if keep > total:
        raise StedgeError(f"--num-layers {keep} is more than the model's {total} layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def check_layers(layers: Sequence[int], total: int) -> list[int]:
    """Validate layer indices (in range 0..total-1, no duplicates); returns them sorted."""
    if not layers:
        raise StedgeError("--layers: give at least one layer index, e.g. --layers 0,2,5")
    seen: set[int] = set()
    for i in layers:
        if not 0 <= i < total:
            raise StedgeError(f"--layers: index {i} is out of range; the model has {total} layers (0..{total - 1})")
        if i in seen:
            raise StedgeError(f"--layers: index {i} is given twice; list each layer once")
        seen.add(i)
    return sorted(layers)


def parse_layers(text: str) -> list[int]:
    """Parse ``0,2,4`` into [0, 2, 4] with a clear error on anything else."""
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise StedgeError(f"--layers: expected comma-separated integers like 0,2,4, got {text!r}") from None


def keep_layers(model: nn.Module, layers: Sequence[int]) -> list[int]:
    """Keep only ``layers`` (indices into the original stack) of a Hugging Face model, in place.

    Updates the config's layer count (and per-layer config lists such as ``layer_types``) and
    renumbers ``layer_idx`` attributes. Returns the sorted indices kept.
    """
    path, layer_list = find_layer_list(model)
    total = len(layer_list)
    kept = check_layers(list(layers), total)
    new_list = nn.ModuleList([layer_list[i] for i in kept])
    for new_idx, layer in enumerate(new_list):
        for sub in layer.modules():
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = new_idx
    parent_path, _, attr = path.rpartition(".")
    parent = _get_path(model, parent_path) if parent_path else model
    setattr(parent, attr, new_list)
    config = getattr(model, "config", None)
    if config is not None:
        for field in LAYER_COUNT_FIELDS:
            if isinstance(getattr(config, field, None), int) and getattr(config, field) == total:
                setattr(config, field, len(kept))
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == total:
            config.layer_types = [types[i] for i in kept]
    return kept


def count_layers(model: nn.Module) -> int | None:
    """Number of transformer layers, or None when the layout is unknown."""
    try:
        return len(find_layer_list(model)[1])
    except StedgeError:
        return None
