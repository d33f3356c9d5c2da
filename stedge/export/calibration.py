"""Calibration data for static quantization: texts from a file or `datasets` name, tokenized into
equally shaped batches (the histogram calibrators need one sequence length)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..data import read_texts
from ..errors import StedgeError

MIN_TEXTS = 16
DEFAULT_LIMIT = 300
BUILTIN = "builtin"  # --calibration builtin: the built-in texts, named (int8-static and int8-rows need a source)


def calibration_texts(
    source: str | os.PathLike | None, column: str | None = None, limit: int = DEFAULT_LIMIT, minimum: int = MIN_TEXTS
) -> list[str]:
    """Texts for calibration (a text file, a CSV/TSV/JSONL column, or a `datasets` name); at least ``minimum``.

    At most ``limit`` texts, spread evenly over the source (see `spread`), not its first rows; None or
    ``"builtin"``: the built-in texts."""
    try:
        texts = _drawn(source, column, limit)
    except StedgeError as e:
        msg = str(e).replace("--column", "--calibration-column")
        raise StedgeError(f"--calibration: {msg}") from None
    if len(texts) < minimum:
        raise StedgeError(
            f"--calibration {source or BUILTIN}: only {len(texts)} texts, static quantization needs at least "
            f"{minimum}; pass a larger file or --calibration-size (a few hundred in-domain texts is best)"
        )
    return texts


def _drawn(source: str | os.PathLike | None, column: str | None, limit: int | None) -> list[str]:
    """At most ``limit`` texts of ``source`` (None or "builtin": the built-in ones), spread over it."""
    return spread(builtin_texts() if is_builtin(source) else read_texts(source, column=column), limit)


def spread(texts: list[str], limit: int | None) -> list[str]:
    """At most ``limit`` of ``texts``, taken at even steps from first to last, in order.

    Files are often sorted by source or genre (STS-B train starts with 2,000 pairs of captions), so their first
    rows calibrate for one kind of text: all-MiniLM-L6-v2's OpenVINO static int8, calibrated on STS-B train's
    first 300 texts, left "How do you do that?" at cosine 0.970 to fp32 on a Zen 4, and at 0.988 calibrated on
    300 spread over the file (0.993 on the built-in texts)."""
    if limit is None or len(texts) <= limit:
        return list(texts)
    return [texts[i * len(texts) // limit] for i in range(limit)]


_LABEL = re.compile(r"^(?P<source>.*) \((?P<count>\d+) texts(?P<spread> spread over the file)?\)$")


def is_builtin(source: str | os.PathLike | None) -> bool:
    """Whether ``source`` names the built-in calibration texts (None, or ``"builtin"``)."""
    return source is None or str(source) == BUILTIN


def calibration_label(source: str | os.PathLike | None, count: int) -> str:
    """How a variant's ``quantization.calibration`` in stedge.json names its calibration texts (``source``
    None or "builtin": the built-in ones)."""
    if is_builtin(source):
        return f"built-in ({count} texts)"
    return f"{source} ({count} texts spread over the file)"


def calibrated_on(label: str | None, source: str | os.PathLike | None) -> bool:
    """Whether a recorded ``calibration_label`` names ``source`` (None or "builtin": the built-in texts), drawn
    from a file as this version draws (spread over it: labels of artifacts calibrated on a file's first rows say
    no)."""
    m = _LABEL.match(label or "")
    if m is None:
        return False
    if is_builtin(source):
        return m["source"] == "built-in"
    return m["source"] == str(source) and m["spread"] is not None


def builtin_texts() -> list[str]:
    """The built-in calibration texts (varied topics, lengths, queries and passages; none is a verification
    text), used by ``--quantize int8`` when no --calibration is given. In-domain texts calibrate better."""
    import json
    from pathlib import Path

    return json.loads((Path(__file__).with_name("calibration_texts.json")).read_text(encoding="utf-8"))


def calibration_batches(
    model, task: str, texts: list[str], batch_size: int = 16, max_length: int = 128
) -> list[dict[str, np.ndarray]]:
    """Tokenized calibration batches of one shape: padded to the longest text (at most ``max_length``),
    ``batch_size`` texts each (a remainder smaller than a batch is left out)."""
    if task == "reranking":
        items = [(texts[i], texts[(i + 1) % len(texts)]) for i in range(len(texts))]
    else:
        lower = bool(getattr(getattr(model, "transformer", None), "do_lower_case", False))
        items = [t.lower() for t in texts] if lower else list(texts)
    tok = model.tokenizer
    limit = min(max_length, getattr(model, "max_seq_length", None) or getattr(model, "max_length", max_length))
    if task == "reranking":
        enc = tok(
            [a for a, _ in items],
            [b for _, b in items],
            padding="longest",
            truncation="longest_first",
            max_length=limit,
            return_tensors="np",
        )
    else:
        enc = tok(items, padding="longest", truncation=True, max_length=limit, return_tensors="np")
    feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
    # the histogram calibrators stack batches: every batch gets the same shape (the remainder is dropped)
    n = len(items) - len(items) % batch_size if len(items) >= batch_size else len(items)
    batches = []
    for s in range(0, n, batch_size):
        b = {k: v[s : s + batch_size] for k, v in feeds.items()}
        b["prompt_length"] = np.zeros(len(b["input_ids"]), dtype=np.int64)
        batches.append(b)
    return batches


def restrict(batches: list[dict[str, np.ndarray]], inputs: list[str]) -> list[dict[str, np.ndarray]]:
    """Keep only the graph's inputs (token_type_ids filled with zeros when the graph wants it)."""
    out = []
    for b in batches:
        d = {k: v for k, v in b.items() if k in inputs}
        if "token_type_ids" in inputs and "token_type_ids" not in d:
            d["token_type_ids"] = np.zeros_like(b["input_ids"])
        out.append(d)
    return out


# ----------------------------------------------------------- embedding quantization ranges
EMBEDDING_MIN_TEXTS = 16
EMBEDDING_DEFAULT_LIMIT = 1000


def embedding_texts(
    source: str | os.PathLike, column: str | None = None, limit: int = EMBEDDING_DEFAULT_LIMIT
) -> list[str]:
    """Texts whose embeddings give the int8/uint8 ranges (at most ``limit``, spread over the source): at least
    16, a few hundred in-domain texts is best."""
    try:
        texts = _drawn(source, column, limit)
    except StedgeError as e:
        raise StedgeError(f"calibration texts: {e}") from None
    if len(texts) < EMBEDDING_MIN_TEXTS:
        raise StedgeError(
            f"calibration texts {source}: only {len(texts)} texts; int8/uint8 embedding ranges need at least "
            f"{EMBEDDING_MIN_TEXTS} (a few hundred in-domain texts, like the documents you will store, is best)"
        )
    return texts


def save_embedding_calibration(root: Path, embeddings: np.ndarray, texts: int, variant: str | None) -> dict:
    """Write the ranges of ``embeddings`` into ``root`` and return the manifest field ``embedding_calibration``
    ({file, sha256, texts, variant}; variant None: the PyTorch fp32 model at export)."""
    from stedge_runtime.quantization import RANGES_FILE, calibration_ranges, save_ranges

    digest = save_ranges(Path(root) / RANGES_FILE, calibration_ranges(np.asarray(embeddings, dtype=np.float32)))
    return {"file": RANGES_FILE, "sha256": digest, "texts": int(texts), "variant": variant}


def calibrate_artifact(
    path: str | os.PathLike,
    source: str | os.PathLike,
    column: str | None = None,
    limit: int = EMBEDDING_DEFAULT_LIMIT,
    variant: str | None = None,
    batch_size: int = 32,
) -> dict:
    """Embed calibration texts with an embedding artifact (stedge_runtime, ``variant`` or its default),
    save their ranges beside stedge.json and record them there; returns the ``embedding_calibration`` field.

    Same texts and variant give the same bytes; later ``encode(precision="int8"|"uint8")`` calls use them.
    """
    from stedge_runtime import Encoder

    from . import manifest as mf

    root = Path(path)
    manifest = mf.read(root)
    if manifest.get("task") != "embedding":
        raise StedgeError(
            f"{root}: embedding calibration applies to embedding artifacts, this one is {manifest.get('task')!r}"
        )
    texts = embedding_texts(source, column, limit)
    enc = Encoder.load(root, variant=variant)
    field = save_embedding_calibration(root, enc.encode(texts, batch_size=batch_size), len(texts), enc.variant)
    manifest["embedding_calibration"] = field
    mf.write(root, manifest)
    return field
