"""Before/after reports and lineage for compressed models."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..data import PairScores, pairwise_cosine, spearman
from ..models import SentenceEncoder
from .layers import count_layers

REPORT_FILE = "compression_report.json"
LINEAGE_FILE = "stedge_lineage.json"


def weights_bytes(path: str | os.PathLike | None) -> int | None:
    """Total size of the ``*.safetensors`` weight files of a model folder (None without a folder)."""
    if path is None or not Path(path).is_dir():
        return None
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors") if f.is_file())


def model_summary(encoder: SentenceEncoder, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Dimensions, layer count, parameter count and weight-file size of a model."""
    return {
        "model": str(path) if path is not None else (encoder.model_ref or None),
        "dim": encoder.get_sentence_embedding_dimension(),
        "layers": count_layers(encoder.transformer.auto_model),
        "parameters": int(sum(p.numel() for p in encoder.parameters())),
        "weights_bytes": weights_bytes(path if path is not None else encoder.model_path),
        "modules": [type(m).__name__ for m in encoder],
    }


def sts_spearman(encoder: SentenceEncoder, pairs: PairScores, batch_size: int = 64) -> float:
    """Spearman (x100) between cosine similarities of the pairs' embeddings and the gold scores."""
    emb = encoder.encode(pairs.sentences1 + pairs.sentences2, batch_size=batch_size)
    n = len(pairs)
    return 100.0 * spearman(pairwise_cosine(emb[:n], emb[n:]), pairs.scores)


def embedding_mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error between two embedding matrices of the same shape."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest row-wise cosine between two embedding matrices."""
    return float(pairwise_cosine(a, b).min())


def eval_sentences(pairs: PairScores | None, limit: int = 1000) -> list[str]:
    """Unique sentences of an eval set (first ``limit``), for MSE/cosine comparisons."""
    if pairs is None:
        return []
    return list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))[:limit]


def read_lineage(path: str | os.PathLike | None) -> list[dict]:
    """The lineage steps recorded in a model folder (empty when none)."""
    if path is None:
        return []
    f = Path(path) / LINEAGE_FILE
    if not f.is_file():
        return []
    try:
        return list(json.loads(f.read_text(encoding="utf-8")).get("steps", []))
    except (json.JSONDecodeError, AttributeError):
        return []


def make_step(step: str, source: str | None, **details: Any) -> dict:
    """One lineage step: what was done, to which model, with which settings."""
    return {
        "step": step,
        "source": source,
        **details,
        "stedge": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS = (
    ("dim", "dimensions"),
    ("layers", "layers"),
    ("parameters", "parameters"),
    ("weights_bytes", "weights (bytes)"),
    ("spearman", "Spearman x100"),
)


def print_report(report: dict, console=None) -> None:
    """Print a before/after report as a rich table (on stderr unless a console is given)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(stderr=True)
    table = Table(title=escape(f"stedge {report['command']}: {report.get('output', '')}"))
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key, label in ROWS:
        table.add_row(label, _fmt(report["before"].get(key)), _fmt(report["after"].get(key)))
    for key, value in report.get("comparison", {}).items():
        table.add_row(key.replace("_", " "), "", _fmt(value))
    console.print(table)


def model_card(steps: Sequence[dict], report: dict) -> str:
    """A short README.md recording how the model was made."""
    lines = [
        "---",
        "library_name: sentence-transformers",
        "tags:",
        "- sentence-transformers",
        "- stedge",
        "---",
        "",
        f"# {Path(report.get('output') or 'model').name}",
        "",
        f"Made with `stedge {report['command']}` from `{report['before'].get('model')}`.",
        "",
        "## Lineage",
        "",
    ]
    for i, s in enumerate(steps, 1):
        details = ", ".join(
            f"{k}={json.dumps(v)}" for k, v in s.items() if k not in ("step", "source", "stedge", "date")
        )
        lines.append(f"{i}. **{s['step']}** of `{s.get('source')}`" + (f": {details}" if details else ""))
    lines += ["", "## Before / after", "", "| | before | after |", "| --- | ---: | ---: |"]
    for key, label in ROWS:
        lines.append(f"| {label} | {_fmt(report['before'].get(key))} | {_fmt(report['after'].get(key))} |")
    for key, value in report.get("comparison", {}).items():
        lines.append(f"| {key.replace('_', ' ')} | | {_fmt(value)} |")
    lines.append("")
    return "\n".join(lines)


def save_with_report(
    encoder: SentenceEncoder,
    output: str | os.PathLike,
    report: dict,
    step: dict,
    parent: str | os.PathLike | None,
    overwrite: bool = False,
) -> Path:
    """Save the model atomically with its lineage (card + stedge_lineage.json) and the report JSON.

    Fills ``report['after']['weights_bytes']`` from the written files.
    """
    from ..io import atomic_dir

    output = Path(output)
    steps = read_lineage(parent) + [step]
    with atomic_dir(output, overwrite=overwrite) as tmp:
        encoder.save(tmp, overwrite=True)
        report["output"] = str(output)
        report["after"]["model"] = str(output)
        report["after"]["weights_bytes"] = weights_bytes(tmp)
        (tmp / "README.md").write_text(model_card(steps, report), encoding="utf-8")
        (tmp / LINEAGE_FILE).write_text(json.dumps({"steps": steps}, indent=2), encoding="utf-8")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return output


def load_sentences(sources: Sequence[str | os.PathLike], limit: int | None = None) -> list[str]:
    """Unique sentences from one or more text files or tables (every text column of a pair table)."""
    from ..data import read_texts
    from ..errors import StedgeError

    if not sources:
        raise StedgeError("--data: give at least one file of sentences")
    texts = list(dict.fromkeys(t for src in sources for t in read_texts(src)))
    if not texts:
        raise StedgeError(f"--data {', '.join(map(str, sources))}: no sentences found")
    return texts[:limit] if limit else texts
