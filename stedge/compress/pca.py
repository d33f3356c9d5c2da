"""PCA as a Dense layer: fit on the model's embeddings, project (and centre) inside the model."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import StedgeError
from ..models import Dense, Normalize, SentenceEncoder


def _normalize_index(encoder: SentenceEncoder) -> int:
    """Index where a new sentence-embedding module goes: before the first Normalize, else at the end."""
    return next((i for i, m in enumerate(encoder) if isinstance(m, Normalize)), len(encoder))


def pre_normalize_embeddings(
    encoder: SentenceEncoder, sentences: Sequence[str], batch_size: int = 64, show_progress_bar: bool | None = None
) -> np.ndarray:
    """Embeddings as the module inserted before Normalize will see them (Normalize skipped)."""
    idx = _normalize_index(encoder)
    head = SentenceEncoder(modules=list(encoder)[:idx], device=str(encoder.device)) if idx < len(encoder) else encoder
    head.prompts, head.default_prompt_name = encoder.prompts, encoder.default_prompt_name
    return head.encode(list(sentences), batch_size=batch_size, show_progress_bar=show_progress_bar)


def check_pca_dim(dim: int, width: int, n_sentences: int) -> None:
    """PCA to ``dim`` needs 1 <= dim <= embedding width and dim <= number of fit sentences."""
    if dim < 1:
        raise StedgeError(f"--dim must be at least 1, got {dim}")
    if dim > width:
        raise StedgeError(f"--dim {dim} is larger than the model's embedding width {width}; choose --dim <= {width}")
    if dim > n_sentences:
        raise StedgeError(
            f"--dim {dim} is larger than the number of fit sentences ({n_sentences}); "
            f"PCA can find at most {n_sentences} components: give more --data or a smaller --dim"
        )


def fit_pca(embeddings: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of the rows of ``embeddings``.

    Returns (components ``[dim, width]``, mean ``[width]``, explained-variance ratio ``[dim]``),
    components sorted by variance, sign-fixed so the largest loading is positive.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    check_pca_dim(dim, x.shape[1], x.shape[0])
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim]
    signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    var = s**2
    ratio = var[:dim] / var.sum() if var.sum() > 0 else np.zeros(dim)
    return comps.astype(np.float32), mean.astype(np.float32), ratio


def pca_dense(components: np.ndarray, mean: np.ndarray | None) -> Dense:
    """A Dense layer with identity activation computing ``(x - mean) @ components.T``.

    ``mean=None`` gives the uncentred projection ``x @ components.T`` (no bias), as the
    sentence-transformers dimensionality-reduction example does.
    """
    comps = torch.as_tensor(np.asarray(components, dtype=np.float32))
    dense = Dense(comps.shape[1], comps.shape[0], bias=mean is not None, activation_function=nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(comps)
        if mean is not None:
            dense.linear.bias.copy_(-(torch.as_tensor(np.asarray(mean, dtype=np.float32)) @ comps.T))
    return dense


def add_pca(encoder: SentenceEncoder, components: np.ndarray, mean: np.ndarray | None) -> SentenceEncoder:
    """A new SentenceEncoder with the PCA Dense inserted before Normalize (normalization stays last)."""
    idx = _normalize_index(encoder)
    mods = list(encoder)
    dense = pca_dense(components, mean).to(encoder.device)
    out = SentenceEncoder(
        modules=mods[:idx] + [dense] + mods[idx:],
        device=str(encoder.device),
        prompts=encoder.prompts,
        default_prompt_name=encoder.default_prompt_name,
        similarity_fn_name=encoder.similarity_fn_name,
    )
    out.model_path = encoder.model_path
    out.model_ref = encoder.model_ref
    return out


def reduce_dim(
    encoder: SentenceEncoder,
    sentences: Sequence[str],
    dim: int,
    centred: bool = True,
    batch_size: int = 64,
    show_progress_bar: bool | None = None,
) -> tuple[SentenceEncoder, dict]:
    """Fit PCA to ``dim`` on ``sentences`` and return (new encoder, fit info)."""
    sentences = list(sentences)
    check_pca_dim(dim, encoder.get_sentence_embedding_dimension(), len(sentences))
    emb = pre_normalize_embeddings(encoder, sentences, batch_size=batch_size, show_progress_bar=show_progress_bar)
    comps, mean, ratio = fit_pca(emb, dim)
    out = add_pca(encoder, comps, mean if centred else None)
    info = {
        "dim_in": int(emb.shape[1]),
        "dim_out": int(dim),
        "centred": centred,
        "fit_sentences": len(sentences),
        "explained_variance": float(ratio.sum()),
    }
    return out, info


def run_pca(
    model: str,
    dim: int,
    data: Sequence[str],
    output: str,
    eval_path: str | None = None,
    centred: bool = True,
    overwrite: bool = False,
    batch_size: int = 64,
    device: str | None = None,
    show_progress_bar: bool | None = None,
) -> dict:
    """`stedge pca`: fit PCA on the model's embeddings of ``data``, save the model, return the report."""
    from ..data import read_sts
    from ..io import check_output
    from .report import load_sentences, make_step, model_summary, save_with_report, sts_spearman

    check_output(output, overwrite, protect=[model] if Path(model).is_dir() else [])
    sentences = load_sentences(data)
    pairs = read_sts(eval_path) if eval_path else None
    encoder = SentenceEncoder(model, device=device)
    check_pca_dim(dim, encoder.get_sentence_embedding_dimension(), len(sentences))
    before = model_summary(encoder)
    before["model"] = str(model)
    if pairs is not None:
        before["spearman"] = sts_spearman(encoder, pairs, batch_size)
    reduced, info = reduce_dim(
        encoder, sentences, dim, centred=centred, batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    after = model_summary(reduced)
    comparison: dict = {"explained_variance": info["explained_variance"], "centred": centred}
    if pairs is not None:
        after["spearman"] = sts_spearman(reduced, pairs, batch_size)
        comparison["spearman_change"] = after["spearman"] - before["spearman"]
    report = {
        "command": "pca",
        "before": before,
        "after": after,
        "comparison": comparison,
        "settings": {
            "dim": dim,
            "centred": centred,
            "data": [str(d) for d in data],
            "eval": eval_path,
            "fit_sentences": len(sentences),
        },
    }
    step = make_step(
        "pca",
        str(model),
        dim_in=info["dim_in"],
        dim_out=dim,
        centred=centred,
        fit_data=[str(d) for d in data],
        fit_sentences=len(sentences),
        explained_variance=round(info["explained_variance"], 6),
    )
    save_with_report(reduced, output, report, step, parent=encoder.model_path, overwrite=overwrite)
    return report
