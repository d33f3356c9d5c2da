"""What every evaluator shares: metric naming, the CSV log, and encoding through any model's ``encode``."""

from __future__ import annotations

import csv
import inspect
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StedgeError


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def encode(
    model: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    prompt_name: str | None = None,
    prompt: str | None = None,
    show_progress_bar: bool | None = None,
) -> np.ndarray:
    """Embeddings as a float32 array from anything with ``encode(texts, batch_size=...)``.

    Works with stedge.SentenceEncoder, sentence_transformers.SentenceTransformer and the torch-free
    stedge_runtime.Encoder; ``prompt_name``/``prompt`` are passed only when given.
    """
    if not hasattr(model, "encode"):
        raise StedgeError(
            f"{type(model).__name__} has no encode(): pass an embedding model (SentenceEncoder, SentenceTransformer, "
            "stedge_runtime.Encoder)"
        )
    kwargs: dict[str, Any] = {"batch_size": batch_size}
    if prompt_name is not None:
        kwargs["prompt_name"] = prompt_name
    if prompt is not None:
        kwargs["prompt"] = prompt
    if show_progress_bar is not None and _accepts(model.encode, "show_progress_bar"):
        kwargs["show_progress_bar"] = show_progress_bar
    texts = list(texts)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    out = model.encode(texts, **kwargs)
    if hasattr(out, "detach"):  # a torch tensor from a model that returns one
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise StedgeError(
            f"{type(model).__name__}.encode returned shape {out.shape} for {len(texts)} texts; expected (n, dim)"
        )
    return out


def scores_pairs(model: Any) -> bool:
    """A cross-encoder: it scores (text, text) pairs itself (``predict``) and has no embeddings (``encode``)."""
    return hasattr(model, "predict") and not hasattr(model, "encode")


def encode_unique(model: Any, texts: Sequence[str], batch_size: int = 32, **kw: Any) -> np.ndarray:
    """Embeddings for ``texts`` encoding each distinct text once (rows in input order)."""
    unique = list(dict.fromkeys(texts))
    emb = encode(model, unique, batch_size=batch_size, **kw)
    index = {t: i for i, t in enumerate(unique)}
    return emb[[index[t] for t in texts]] if len(texts) else emb


def similarity_fn_names_for(model: Any, given: Sequence[str] | None) -> list[str]:
    """The similarity functions to report: those given, else the model's, else cosine."""
    from ..models.similarity import check_similarity_fn_name

    if given:
        return [check_similarity_fn_name(n) for n in given]
    return [check_similarity_fn_name(getattr(model, "similarity_fn_name", None) or "cosine")]


def pairwise_scores(a: np.ndarray, b: np.ndarray, fn: str) -> np.ndarray:
    """Row-by-row similarity (float64): cosine, dot, or negative euclidean/manhattan distance."""
    return _similarity(fn, a, b, pairwise=True, dtype=np.float64)


def all_pairs_scores(a: np.ndarray, b: np.ndarray, fn: str) -> np.ndarray:
    """All-pairs similarity matrix (float32): cosine, dot, or negative euclidean/manhattan distance."""
    return _similarity(fn, a, b)


def _similarity(fn: str, a, b, pairwise: bool = False, dtype=np.float32) -> np.ndarray:
    from stedge_runtime.errors import InputError
    from stedge_runtime.similarity import similarity_matrix

    try:
        return similarity_matrix(fn, a, b, pairwise=pairwise, dtype=dtype)
    except InputError as e:
        raise StedgeError(str(e)) from None


class Evaluator:
    """Base class: ``evaluator(model, output_path=None, epoch=-1, steps=-1) -> {name_metric: value}``.

    Subclasses implement ``compute_metrics(model) -> {metric: value}`` (unprefixed) and set
    ``primary`` (the unprefixed primary metric); ``primary_metric`` is the full key.
    """

    csv_prefix = "evaluation"
    greater_is_better = True

    def __init__(
        self, name: str = "", batch_size: int = 32, show_progress_bar: bool | None = None, write_csv: bool = True
    ) -> None:
        if batch_size < 1:
            raise StedgeError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.batch_size = int(batch_size)
        self.show_progress_bar = show_progress_bar
        self.write_csv = write_csv
        self.primary = ""

    # ----------------------------------------------------------------- naming
    def prefix(self, key: str) -> str:
        return f"{self.name}_{key}" if self.name else key

    @property
    def primary_metric(self) -> str:
        """The full key of the metric that ranks models (e.g. 'sts-dev_spearman_cosine')."""
        return self.prefix(self.primary)

    def primary_metric_for(self, model: Any) -> str:
        """The primary metric's full key when ``model`` is evaluated (the same for every model here)."""
        return self.primary_metric

    @property
    def csv_file(self) -> str:
        return f"{self.csv_prefix}{'_' + self.name if self.name else ''}_results.csv"

    # ------------------------------------------------------------------- run
    def compute_metrics(self, model: Any) -> dict[str, float]:
        raise NotImplementedError

    def __call__(
        self, model: Any, output_path: str | os.PathLike | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        metrics = {k: float(v) for k, v in self.compute_metrics(model).items()}
        if output_path is not None and self.write_csv:
            self.append_csv(Path(output_path), metrics, epoch, steps)
        return {self.prefix(k): v for k, v in metrics.items()}

    def append_csv(self, folder: Path, metrics: dict[str, float], epoch: int, steps: int) -> Path:
        """Append one row (epoch, steps, metrics...) to the evaluator's CSV, writing the header once."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.csv_file
        header = ["epoch", "steps", *metrics]
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerow([epoch, steps, *metrics.values()])
        return path

    def get_config_dict(self) -> dict[str, Any]:
        """Settings worth recording in a model card."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
