"""A generated model card (README.md): base model, data, loss, arguments, final metrics."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__

# Arguments worth showing on the card even when left at their defaults.
_KEY_ARGS = (
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "learning_rate",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "lr_scheduler_type",
    "seed",
    "fp16",
    "bf16",
    "gradient_accumulation_steps",
    "batch_sampler",
    "multi_dataset_batch_sampler",
    "prompts",
)


_SKIP_ARGS = {
    "output_dir",
    "logging_dir",
    "hub_token",
    "push_to_hub_token",
    "local_rank",
    "debug",
    "fsdp",
    "fsdp_config",
    "accelerator_config",
    "report_to",
    "disable_tqdm",
    "dataloader_pin_memory",
    "include_num_input_tokens_seen",
    "remove_unused_columns",
    "use_cpu",
    "logging_steps",
    "save_steps",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v) + "`"
    return f"`{v}`" if isinstance(v, str) else str(v)


def loss_description(loss: Any) -> dict[str, str]:
    """Loss class name (and its simple hyper-parameters) per dataset name ('' for one dataset)."""

    def one(loss: Any) -> str:
        if hasattr(loss, "get_config_dict"):
            inner = ", ".join(f"{k}={v}" for k, v in loss.get_config_dict().items())
            return f"{type(loss).__name__}({inner})"
        params = {}
        for k, v in vars(loss).items():
            if not k.startswith("_") and k not in ("training", "model") and isinstance(v, (int, float, str, bool)):
                params[k] = v
        inner = ", ".join(f"{k}={v}" for k, v in params.items())
        return f"{type(loss).__name__}({inner})"

    if isinstance(loss, dict):
        return {k: one(v) for k, v in loss.items()}
    return {"": one(loss)}


def final_metrics(log_history: list[dict]) -> dict[str, float]:
    """The last value of every eval metric and the last training loss in the trainer's log history."""
    out: dict[str, float] = {}
    for entry in log_history:
        for k, v in entry.items():
            if isinstance(v, (int, float)) and (k.startswith("eval_") or k in ("loss", "train_loss", "epoch")):
                out[k] = float(v)
    return out


def model_card(
    model: Any,
    base_model: str | None,
    data: str,
    loss: Any,
    args: Any,
    log_history: list[dict],
) -> str:
    """Markdown for README.md of a trained model."""
    lines = [
        "---",
        "library_name: sentence-transformers",
        "tags:",
        "- sentence-transformers",
        "- sentence-similarity",
        "- stedge",
    ]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines += [
        "---",
        "",
        f"# {'Adapter on ' if getattr(model, 'has_adapters', False) else ''}{base_model or 'a sentence encoder'}, "
        "fine-tuned with stedge",
        "",
    ]
    lines.append(
        f"Trained with stedge {__version__} (transformers.Trainer); loads with `stedge.models.SentenceEncoder` "
        "and with `sentence_transformers.SentenceTransformer`"
        + (" (plus peft)." if getattr(model, "has_adapters", False) else ".")
    )
    lines += [
        "",
        "## Model",
        "",
        f"- base model: `{base_model}`",
        f"- modules: {' -> '.join(type(m).__name__ for m in model)}",
        f"- dimension: {model.get_sentence_embedding_dimension()}",
        f"- max_seq_length: {model.max_seq_length}",
        f"- similarity: {model.similarity_fn_name}",
    ]
    if getattr(model, "has_adapters", False):
        lines.append(f"- adapters: {', '.join(model.active_adapters())} (only the adapter weights are stored here)")
    if model.prompts:
        lines.append(f"- prompts: {_fmt(model.prompts)} (default: {model.default_prompt_name})")
    lines += ["", "## Training data", "", data, "", "## Loss", ""]
    for name, desc in loss_description(loss).items():
        lines.append(f"- {name + ': ' if name else ''}`{desc}`")
    lines += ["", "## Training arguments", "", "| argument | value |", "| --- | --- |"]
    for k, v in _changed_args(args).items():
        lines.append(f"| {k} | {_fmt(v)} |")
    metrics = final_metrics(log_history)
    if metrics:
        lines += ["", "## Final metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def _changed_args(args: Any) -> dict[str, Any]:
    import dataclasses

    d = args.to_dict()
    # Defaults from the dataclass fields (building a fresh TrainingArguments would reset accelerate's state).
    base = {f.name: f.default for f in dataclasses.fields(args) if f.default is not dataclasses.MISSING}
    base = {k: (v.value if hasattr(v, "value") else v) for k, v in base.items()}
    out = {}
    for k, v in d.items():
        if k in _SKIP_ARGS:
            continue
        if k in _KEY_ARGS or (k in base and base[k] != v):
            out[k] = v
    return out
