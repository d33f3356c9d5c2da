"""Verification through the runtime users run: each variant of the artifact being written is loaded with
``stedge_runtime`` (``Encoder`` / ``Reranker``, the variant named, sha256 checked), run on real texts with the
artifact's own ``tokenizer.json``, padding and engine settings, and compared with the PyTorch fp32 model:
mean/min cosine (for a reranker's scores, ``stedge_runtime.similarity.score_agreement`` on the same scale), max
abs difference, Spearman on an STS eval set, batch invariance (a text alone vs inside a mixed batch of 32) and the
precision tier the variant reaches (exact / near / compressed)."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from stedge_runtime import select
from stedge_runtime.similarity import agreement

from ..data import PairScores, iter_batches, spearman
from ..errors import CheckFailedError, StedgeError, require

DEFAULT_MAX_DROP_SPEARMAN = 1.0  # points: the compressed tier's budget with an eval set and no --max-drop
DEFAULT_MAX_DROP_COSINE = 0.05  # 1 - mean cosine: the compressed tier's budget without an eval set
INVARIANCE_BATCH = 32  # a text alone vs inside a mixed batch of this many texts


@dataclass(frozen=True)
class Tier:
    """One precision tier: the bars a variant must clear (Spearman drop in points, None = the user's max_drop)."""

    name: str
    min_cosine: float | None
    max_spearman_drop: float | None
    batch_invariance: float


TIERS = tuple(Tier(n, select.MIN_COS[n], select.MAX_SPEARMAN_DROP[n], select.INVARIANCE[n]) for n in select.TIERS)
TIER_NAMES = tuple(t.name for t in TIERS)
# The tier a variant of each precision must reach to pass: an fp32 graph that is not exact means the
# runtime disagrees with PyTorch (tokenizer.json, padding, pooling, engine settings), not rounding.
EXPECTED_TIER = {"fp32": "exact", "fp16": "near", "bf16": "near"}


def meets(tier: str | None, precision: str | None) -> bool:
    """True when ``tier`` is at least the one ``precision`` promises (EXPECTED_TIER, else compressed)."""
    if tier is None:
        return False
    want = EXPECTED_TIER.get(str(precision), "compressed")
    return TIER_NAMES.index(tier) <= TIER_NAMES.index(want)


@dataclass
class Verification:
    """One variant's verification record (as stored in stedge.json)."""

    mean_cosine: float
    min_cosine: float
    max_abs_diff: float
    spearman: float | None
    reference_spearman: float | None
    drop: float
    drop_unit: str  # "spearman_points" or "cosine"
    max_drop: float
    num_texts: int
    finite: bool
    device: str
    batch_invariance_min_cos: float
    tier: str | None  # best tier reached: exact, near, compressed, or None
    passed: bool  # the tier reached is at least the one the precision promises (meets)
    runtime: str = "stedge_runtime"
    agreement: str = "cosine"  # what the *_cos(ine) figures measure: "cosine", or "score" for a reranker's scores

    def to_dict(self) -> dict:
        return asdict(self)


def tier_of(
    min_cos: float, drop: float, drop_unit: str, max_drop: float, invariance: float, finite: bool
) -> str | None:
    """The best tier whose bars the numbers clear (see TIERS); None when not even ``compressed``."""
    if not finite:
        return None
    for t in TIERS:
        if invariance < t.batch_invariance:
            continue
        if t.min_cosine is not None and min_cos < t.min_cosine:
            continue
        if t.name == "compressed" and drop > max_drop:
            continue
        if t.max_spearman_drop is not None and drop_unit == "spearman_points" and drop > t.max_spearman_drop:
            continue
        return t.name
    return None


# ------------------------------------------------------------------ graphs on numpy feeds (no artifact yet)
class Runner:
    """One exported graph run by the runtime's own engine (``stedge_runtime.engines``) on numpy feeds.

    For checks of a graph before an artifact exists (tests, graph export); variants are verified
    through ``Reference.compare`` on the artifact instead.
    """

    def __init__(
        self, backend: str, file: str | os.PathLike, device: str = "cpu", root: str | os.PathLike | None = None
    ) -> None:
        from stedge_runtime.engines import open_engine

        file = Path(file)
        if backend not in ("onnx", "openvino"):
            raise StedgeError(f"unknown backend {backend!r}: expected onnx or openvino")
        if backend == "onnx":
            require("onnxruntime", "onnx", "running ONNX graphs")
            from .onnx_graph import check_external_data

            check_external_data(file, root or file.parent)
        else:
            require("openvino", "openvino", "running OpenVINO models")
        self.backend = backend
        self.device = device
        dev = "gpu" if device == "cuda" and backend == "openvino" else device
        self._engine = open_engine(backend, file, dev, "fp32", None, {})
        self.inputs = list(self._engine.inputs)
        self.outputs = list(self._engine.outputs)

    def __call__(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        return self._engine.run(feeds, output)


def _numpy_feeds(feats: dict) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy().astype(np.int64) for k, v in feats.items()}


def graph_embed(model, runner: Callable, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Embeddings of ``texts`` from an embedding graph, with the torch model's tokenizer and default prompt."""
    prompt = model.resolve_prompt()
    plen = model.prompt_length(prompt) if prompt else 0
    items = [prompt + t for t in texts] if prompt else list(texts)
    out = []
    for batch in iter_batches(items, batch_size):
        feeds = _numpy_feeds(model.tokenize(list(batch)))
        if "token_type_ids" in getattr(runner, "inputs", ()) and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        feeds["prompt_length"] = np.full(len(batch), plen, dtype=np.int64)
        out.append(runner(feeds, "sentence_embedding"))
    return np.concatenate(out).astype(np.float32)


def graph_scores(model, runner: Callable, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
    """Scores (activation applied) of ``pairs`` from a reranker graph, with the torch model's tokenizer."""
    out = []
    for batch in iter_batches(list(pairs), batch_size):
        feeds = _numpy_feeds(model.tokenize(list(batch)))
        out.append(runner(feeds, "scores"))
    s = np.concatenate(out).astype(np.float32)
    return s[:, 0] if s.ndim == 2 and s.shape[1] == 1 else s


# ------------------------------------------------------------------ variants through stedge_runtime
def runtime_device(backend: str, device: str) -> str:
    """The stedge_runtime device name for an export ``--device`` (cuda is 'gpu' to OpenVINO)."""
    return "gpu" if device == "cuda" and backend == "openvino" else device


def load_runtime(root: Path, variant: str, task: str, device: str = "cpu"):
    """The artifact at ``root`` loaded as users load it: ``Encoder`` / ``Reranker`` with ``variant`` named
    and every file's sha256 checked."""
    from stedge_runtime import Encoder, Reranker
    from stedge_runtime.artifact import Manifest

    backend = Manifest.read(root, task).variant(variant, root).backend
    cls = Encoder if task == "embedding" else Reranker
    with warnings.catch_warnings():  # the variant is not verified yet: that is what we are doing
        warnings.simplefilter("ignore", RuntimeWarning)
        return cls.load(root, variant=variant, device=runtime_device(backend, device), verify=True)


def _run(obj, task: str, items: Sequence, batch_size: int) -> np.ndarray:
    if task == "embedding":
        return np.asarray(obj.encode(list(items), batch_size=batch_size), dtype=np.float32)
    return np.asarray(obj.predict(list(items), batch_size=batch_size), dtype=np.float32)


def batch_invariance(obj, task: str, items: Sequence, batch: int = INVARIANCE_BATCH) -> float:
    """Min cosine between each item's output alone (batch 1) and inside a mixed batch of ``batch`` items
    (the items in their order, wrapping around, so lengths and padding differ). Rerankers: the score agreement
    of each pair alone vs in a batch (``stedge_runtime.similarity.agreement``)."""
    items = list(items)
    n = len(items)
    alone = _run(obj, task, items, 1)
    inside = np.empty_like(alone)
    for start in range(0, n, batch):
        idx = [(start + j) % n for j in range(batch)]
        got = _run(obj, task, [items[i] for i in idx], batch)
        inside[idx[: min(batch, n - start)]] = got[: min(batch, n - start)]
    return float(np.min(agreement(task, alone, inside)))


class Reference:
    """PyTorch fp32 outputs for the verification texts (computed once, shared by all variants).

    With an eval set, the agreement check covers the eval set too (both sides of every pair for an embedding
    model, every pair's score for a reranker): the variant runs them for the Spearman anyway, and a tier's bar
    should hold on the user's own data, not only on the built-in texts (MiniLM's OpenVINO static int8 on a
    Zen 4: min cos 0.9957 on the 128 verification texts, 0.9701 on the 2,758 STS-B test texts)."""

    def __init__(
        self, model, task: str, texts: Sequence[str], eval_set: PairScores | None, batch_size: int = 32
    ) -> None:
        self.model, self.task, self.texts, self.eval_set = model, task, list(texts), eval_set
        self.batch_size = batch_size
        if task == "embedding":
            self.items: list = self.texts
            self.outputs = np.asarray(model.encode(self.texts, batch_size=batch_size), dtype=np.float32)
        else:
            self.items = reranker_pairs(self.texts)
            self.outputs = np.asarray(model.predict(self.items, batch_size=batch_size), dtype=np.float32)
        self.eval_outputs: tuple[np.ndarray, ...] | None = None  # embeddings: (sentences1, sentences2); scores
        self.spearman = None
        if eval_set is not None:
            self.spearman, self.eval_outputs = self._spearman(self._torch)

    def _torch(self, items: Sequence) -> np.ndarray:
        if self.task == "embedding":
            return np.asarray(self.model.encode(list(items), batch_size=self.batch_size), dtype=np.float32)
        return np.asarray(self.model.predict(list(items), batch_size=self.batch_size))

    def _spearman(self, run: Callable[[Sequence], np.ndarray]) -> tuple[float, tuple[np.ndarray, ...]]:
        """(Spearman on the eval set, its outputs: the embeddings of both sides, or a reranker's scores)."""
        ev = self.eval_set
        if self.task == "embedding":
            a, b = run(ev.sentences1), run(ev.sentences2)
            return spearman(agreement("embedding", a, b), ev.scores), (a, b)
        pred = np.asarray(run(list(zip(ev.sentences1, ev.sentences2))), dtype=np.float32)
        return spearman(pred[:, -1] if pred.ndim == 2 else pred, ev.scores), (pred,)

    def compare(
        self, root: str | os.PathLike, variant: str, device: str = "cpu", max_drop: float | None = None
    ) -> Verification:
        """Load ``variant`` of the artifact at ``root`` through stedge_runtime and verify it against the
        reference; ``max_drop`` None uses the compressed tier's defaults."""
        import logging

        log = logging.getLogger("stedge_runtime")
        level = log.level
        log.setLevel(logging.ERROR)  # the torch side has already warned about truncated texts
        try:
            obj = load_runtime(Path(root), variant, self.task, device)
            return self.verify(obj, device, max_drop, obj.manifest.variant(variant).precision)
        finally:
            log.setLevel(level)

    def verify(self, obj: Any, device: str, max_drop: float | None, precision: str | None = None) -> Verification:
        """Verify a loaded runtime ``Encoder`` / ``Reranker`` of ``precision`` (see ``compare``)."""
        task = self.task  # "embedding" or "reranking", as similarity.agreement takes it
        got = _run(obj, task, self.items, self.batch_size).reshape(self.outputs.shape)
        finite = bool(np.isfinite(got).all())
        cos = agreement(task, got, self.outputs) if finite else np.zeros(1)
        diff = float(np.abs(got - self.outputs).max()) if finite else float("inf")
        invariance = batch_invariance(obj, self.task, self.items) if finite else 0.0
        sp, n_eval = None, 0
        if self.eval_set is not None and finite:
            sp, mine = self._spearman(lambda items: _run(obj, self.task, items, self.batch_size))
            if self.eval_outputs is not None:
                finite = all(bool(np.isfinite(x).all()) for x in mine)
                if finite:
                    cos = np.concatenate([cos, *(agreement(task, x, ref) for x, ref in zip(mine, self.eval_outputs))])
                n_eval = len(mine) * len(self.eval_set.scores)
        mean_c = float(np.mean(cos)) if finite else 0.0
        min_c = float(np.min(cos)) if finite else 0.0
        if self.eval_set is not None:
            unit, limit = "spearman_points", DEFAULT_MAX_DROP_SPEARMAN if max_drop is None else max_drop
            drop = (self.spearman - sp) * 100 if sp is not None else float("inf")
        else:
            unit, limit = "cosine", DEFAULT_MAX_DROP_COSINE if max_drop is None else max_drop
            drop = 1.0 - mean_c
        tier = tier_of(min_c, drop, unit, limit, invariance, finite)
        return Verification(
            mean_cosine=mean_c,
            min_cosine=min_c,
            max_abs_diff=diff,
            spearman=sp,
            reference_spearman=self.spearman,
            drop=float(drop),
            drop_unit=unit,
            max_drop=float(limit),
            num_texts=len(self.texts) + n_eval,
            finite=finite,
            device=device,
            batch_invariance_min_cos=invariance,
            tier=tier,
            passed=meets(tier, precision),
            runtime=f"stedge_runtime/{type(obj).__name__}",
            agreement="cosine" if task == "embedding" else "score",
        )


def reranker_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    """Verification pairs for a reranker: each text with the next one and with itself."""
    t = list(texts)
    return [(t[i], t[(i + 1) % len(t)]) for i in range(len(t))] + [(x, x) for x in t[: len(t) // 2]]


def default_texts() -> list[str]:
    """The built-in verification sentences (varied topics, lengths and punctuation)."""
    import json

    return json.loads((Path(__file__).parent / "verify_texts.json").read_text(encoding="utf-8"))


def fail_message(variant: str, v: Verification) -> str:
    """One line saying why a variant failed its check and what to do."""
    if not v.finite:
        return (
            f"variant {variant}: the graph produced inf/NaN outputs; use a wider precision (fp32) or another --quantize"
        )
    what = f"Spearman drop {v.drop:.2f} points" if v.drop_unit == "spearman_points" else f"cosine drop {v.drop:.5f}"
    return (
        f"variant {variant}: {what} exceeds --max-drop {v.max_drop:g}; nothing was written. "
        "Try another --quantize / --calibration-method, more calibration texts, or a larger --max-drop"
    )


def failure_note(v: Verification, precision: str | None) -> str | None:
    """Why a variant did not pass (it is then never chosen automatically), or None when it passed."""
    bar = TIERS[-1].batch_invariance
    if v.passed or not v.finite:
        return None
    if v.batch_invariance_min_cos < bar:
        return (
            f"not batch-invariant: a text alone vs inside a batch of {INVARIANCE_BATCH} agrees only to cos "
            f"{v.batch_invariance_min_cos:.5f} (< {bar}); never chosen automatically"
        )
    want = EXPECTED_TIER.get(str(precision), "compressed")
    return (
        f"reaches tier {v.tier or 'none'}, below the {want} tier a {precision} variant must reach (min cos "
        f"{v.min_cosine:.5f}); check that tokenizer.json matches the model's tokenizer; never chosen automatically"
    )


def check(variant: str, v: Verification) -> None:
    """Raise CheckFailedError when a variant lost more than the user's --max-drop (or is not finite)."""
    if not v.finite or v.drop > v.max_drop:
        raise CheckFailedError(fail_message(variant, v))
