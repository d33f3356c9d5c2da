"""Training on transformers.Trainer: arguments, data loading, collator, samplers, trainer, CLI.

Heavy pieces are imported lazily so `import stedge.training` stays cheap.
"""

from __future__ import annotations

__all__ = [
    "SentenceEncoderTrainer",
    "SentenceEncoderTrainingArguments",
    "CrossEncoderTrainer",
    "CrossEncoderTrainingArguments",
    "load_dataset",
    "prepare_dataset",
]


def __getattr__(name: str):
    if name == "SentenceEncoderTrainer":
        from .trainer import SentenceEncoderTrainer

        return SentenceEncoderTrainer
    if name == "SentenceEncoderTrainingArguments":
        from .arguments import SentenceEncoderTrainingArguments

        return SentenceEncoderTrainingArguments
    if name in ("CrossEncoderTrainer", "CrossEncoderTrainingArguments"):
        from . import cross_encoder

        return getattr(cross_encoder, name)
    if name in ("load_dataset", "prepare_dataset"):
        from . import data

        return getattr(data, name)
    raise AttributeError(name)
