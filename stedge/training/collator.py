"""Data collator: rows of text columns -> one tokenized batch per input column.

Output keys: ``{column}_input_ids``, ``{column}_attention_mask`` (and ``token_type_ids``), plus
``{column}_prompt_length`` when a prompt is prepended and the pooling excludes prompt tokens,
``label`` when the data has a label (``label`` or ``score``), and ``dataset_name`` for multi-dataset batches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .arguments import Prompts, prompt_for
from .data import DATASET_NAME_COLUMN, LABEL_COLUMNS


class SentenceEncoderDataCollator:
    """Tokenize each input column with the model's tokenizer, prepending prompts."""

    def __init__(
        self,
        tokenize_fn: Callable[[list[str]], dict[str, torch.Tensor]],
        prompts: Prompts = None,
        prompt_length_fn: Callable[[str], int] | None = None,
        include_prompt: bool = True,
    ) -> None:
        self.tokenize_fn = tokenize_fn
        self.prompts = prompts
        self.prompt_length_fn = prompt_length_fn
        self.include_prompt = include_prompt
        self._prompt_lengths: dict[str, int] = {}

    def _prompt_length(self, prompt: str) -> int:
        if prompt not in self._prompt_lengths:
            if self.prompt_length_fn is None:
                raise ValueError("the pooling excludes prompts but no prompt_length_fn was given")
            self._prompt_lengths[prompt] = self.prompt_length_fn(prompt)
        return self._prompt_lengths[prompt]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        first = rows[0]
        dataset_name = first.get(DATASET_NAME_COLUMN)
        if dataset_name is not None:
            batch[DATASET_NAME_COLUMN] = dataset_name
        for col in first:
            if col == DATASET_NAME_COLUMN:
                continue
            if col in LABEL_COLUMNS:
                batch["label"] = torch.tensor([r[col] for r in rows])
                continue
            texts = [r[col] for r in rows]
            prompt = prompt_for(self.prompts, dataset_name, col)
            if prompt:
                texts = [prompt + t for t in texts]
            for key, value in self.tokenize_fn(texts).items():
                batch[f"{col}_{key}"] = value
            if prompt and not self.include_prompt:
                batch[f"{col}_prompt_length"] = torch.full((len(rows),), self._prompt_length(prompt), dtype=torch.long)
        return batch


def split_features(inputs: dict[str, Any], columns: list[str]) -> list[dict[str, torch.Tensor]]:
    """The per-column feature dicts (``input_ids``, ``attention_mask``...) for the given input columns."""
    keys = ("input_ids", "attention_mask", "token_type_ids", "prompt_length")
    return [{k: inputs[f"{col}_{k}"] for k in keys if f"{col}_{k}" in inputs} for col in columns]


class CrossEncoderDataCollator:
    """Tokenize (text1, text2) pairs together for a cross-encoder; label column as float."""

    def __init__(self, tokenize_fn: Callable[[list[tuple[str, str]]], dict[str, torch.Tensor]]) -> None:
        self.tokenize_fn = tokenize_fn

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        cols = [c for c in rows[0] if c not in LABEL_COLUMNS and c != DATASET_NAME_COLUMN]
        label_col = next((c for c in LABEL_COLUMNS if c in rows[0]), None)
        batch: dict[str, Any] = dict(self.tokenize_fn([(r[cols[0]], r[cols[1]]) for r in rows]))
        if label_col is not None:
            batch["label"] = torch.tensor([float(r[label_col]) for r in rows], dtype=torch.float32)
        return batch
