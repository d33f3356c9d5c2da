"""Spearman after PCA for several dimensions, centred vs uncentred, as a markdown table.

    python -m stedge.compress.pca_table MODEL --data FILE [--data FILE ...] --eval STS_FILE --dims 256,128,64,32

The fit and eval sentences are embedded once (before Normalize, as the PCA layer sees them); each
row then applies the very Dense layer `stedge pca` would insert (``pca_dense``) and the cosine.
"""

from __future__ import annotations

import time
from typing import List, Optional

import typer


def pca_table(
    model: str, data: list[str], eval_path: str, dims: list[int], batch_size: int = 64, max_sentences: int | None = None
) -> dict:
    """Spearman x100 on ``eval_path`` for each dim, centred and uncentred, plus the full-width baseline."""
    import torch

    from ..data import pairwise_cosine, read_sts, spearman
    from ..models import SentenceEncoder
    from .pca import check_pca_dim, fit_pca, pca_dense, pre_normalize_embeddings
    from .report import load_sentences

    start = time.perf_counter()
    encoder = SentenceEncoder(model, device="cpu")
    sentences = load_sentences(data, limit=max_sentences)
    width = encoder.get_sentence_embedding_dimension()
    for d in dims:
        check_pca_dim(d, width, len(sentences))
    pairs = read_sts(eval_path)
    fit = pre_normalize_embeddings(encoder, sentences, batch_size=batch_size, show_progress_bar=True)
    ev = pre_normalize_embeddings(encoder, pairs.sentences1 + pairs.sentences2, batch_size=batch_size)
    n = len(pairs)

    def score(x) -> float:
        return 100.0 * spearman(pairwise_cosine(x[:n], x[n:]), pairs.scores)

    rows = []
    for d in dims:
        comps, mean, ratio = fit_pca(fit, d)
        row = {"dim": d, "explained_variance": float(ratio.sum())}
        for name, m in (("centred", mean), ("uncentred", None)):
            with torch.no_grad():
                out = pca_dense(comps, m)({"sentence_embedding": torch.as_tensor(ev)})["sentence_embedding"].numpy()
            row[name] = score(out)
        rows.append(row)
    return {
        "model": model,
        "width": width,
        "baseline": score(ev),
        "fit_sentences": len(sentences),
        "eval_pairs": n,
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }


def to_markdown(result: dict) -> str:
    """The table as markdown."""
    base = result["baseline"]
    lines = [
        "| dims | centred | uncentred | centred - full | uncentred - full | explained variance |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {result['width']} (no PCA) | {base:.2f} | {base:.2f} | 0.00 | 0.00 | 1.000 |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['dim']} | {r['centred']:.2f} | {r['uncentred']:.2f} | {r['centred'] - base:+.2f} | "
            f"{r['uncentred'] - base:+.2f} | {r['explained_variance']:.3f} |"
        )
    return "\n".join(lines)


def main(
    model: str = typer.Argument(..., help="Model reference or folder."),
    data: List[str] = typer.Option(..., "--data", help="Fit sentences (repeatable)."),
    eval_path: str = typer.Option(..., "--eval", help="STS pairs to score."),
    dims: str = typer.Option("256,128,64,32", help="Comma-separated output dimensions."),
    max_sentences: Optional[int] = typer.Option(None, help="Fit on at most this many sentences (in --data order)."),
) -> None:
    """Print the centred-vs-uncentred PCA table."""
    result = pca_table(model, data, eval_path, [int(x) for x in dims.split(",")], max_sentences=max_sentences)
    typer.echo(to_markdown(result))
    typer.echo(
        f"\n{result['fit_sentences']} fit sentences, {result['eval_pairs']} eval pairs, {result['seconds']:.0f} s"
    )


if __name__ == "__main__":
    typer.run(main)
