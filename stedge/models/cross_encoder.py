"""CrossEncoder: a sentence-transformers-compatible reranker (sequence classification) on torch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidModelError
from ..hub import resolve_model
from stedge_runtime.inputs import as_pairs, rank_documents

from ..data import check_texts
from ..io import atomic_dir
from .encoder import default_device
from .modules import _activation_from_name, _activation_name, check_model_files, loading


def _check_pairs(pairs: Any) -> tuple[list[tuple[str, str]], bool]:
    items, single = as_pairs(pairs)
    for i, p in enumerate(items):
        check_texts(list(p), f"pairs[{i}]")
    return items, single


class CrossEncoder(nn.Module):
    """Scores (query, document) pairs with a sequence-classification model and its activation."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        num_labels: int | None = None,
        max_length: int | None = None,
        activation: nn.Module | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.model_path = resolve_model(model_name_or_path, revision=revision)
        path = str(self.model_path)
        if not (self.model_path / "config.json").exists():
            raise InvalidModelError(f"{self.model_path / 'config.json'} is missing: not a cross-encoder folder")
        check_model_files(self.model_path)
        with loading(path, "config.json"):
            self.config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if num_labels is not None and num_labels != getattr(self.config, "num_labels", None):
            self.config.num_labels = num_labels
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, config=self.config, trust_remote_code=trust_remote_code, use_safetensors=True
            )
        except OSError as e:
            raise InvalidModelError(f"{path}: could not load a sequence-classification model ({e})") from None
        with loading(path, "the tokenizer files"):
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if max_length is None:
            st = getattr(self.config, "sentence_transformers", None) or {}
            max_length = st.get("max_length") if isinstance(st, dict) else None
        if max_length is None:
            limits = [getattr(self.config, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
            limits = [x for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
            max_length = min(limits) if limits else 512
        self.max_length = int(max_length)
        self.activation = activation if activation is not None else self._activation_from_config()
        self.to(device or default_device())

    def _activation_from_config(self) -> nn.Module:
        st = getattr(self.config, "sentence_transformers", None)
        name = None
        if isinstance(st, dict):
            name = st.get("activation_fn")
        name = name or getattr(self.config, "sbert_ce_default_activation_function", None)
        if name:
            return _activation_from_name(name)
        return nn.Sigmoid() if self.config.num_labels == 1 else nn.Identity()

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Tokenize (a, b) pairs, truncating the longest first to max_length."""
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        return dict(self.tokenizer(a, b, padding=True, truncation="longest_first", max_length=self.max_length, return_tensors="pt"))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw logits for a tokenized batch."""
        return self.model(**features, return_dict=True).logits

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, apply_activation: bool = True, show_progress_bar: bool = False) -> np.ndarray:
        """Scores for pairs: shape (n,) for one label, (n, num_labels) otherwise; input order kept."""
        items, single = _check_pairs(pairs)
        if not items:
            return np.zeros((0,) if self.num_labels == 1 else (0, self.num_labels), dtype=np.float32)
        order = np.argsort([-(len(a) + len(b)) for a, b in items], kind="stable")
        out = np.zeros((len(items), self.num_labels), dtype=np.float32)
        self.eval()
        from ..progress import progress_iter

        with torch.inference_mode():
            for s in progress_iter(range(0, len(items), batch_size), total=(len(items) + batch_size - 1) // batch_size, description="Scoring", enabled=show_progress_bar):
                idx = order[s : s + batch_size]
                feats = {k: v.to(self.device) for k, v in self.tokenize([items[i] for i in idx]).items()}
                logits = self.forward(feats)
                if apply_activation:
                    logits = self.activation(logits)
                out[idx] = logits.float().cpu().numpy()
        if self.num_labels == 1:
            out = out[:, 0]
        return out[0] if single else out

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False, batch_size: int = 32) -> list[dict]:
        """Documents sorted by score: [{corpus_id, score(, text)}]."""
        return rank_documents(lambda pairs: self.predict(pairs, batch_size=batch_size), query, documents,
                              self.num_labels, top_k, return_documents)

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the model, tokenizer and activation (config.sentence_transformers) atomically."""
        from .. import __version__

        with atomic_dir(path, overwrite=overwrite) as tmp:
            self.config.sentence_transformers = {"activation_fn": _activation_name(self.activation), "version": f"stedge-{__version__}"}
            self.model.config.sentence_transformers = self.config.sentence_transformers
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return Path(path)
