"""Verification: run real texts through an exported graph and through the PyTorch fp32 model,
compare (mean/min cosine, max abs difference) and, with an STS eval set, compare Spearman."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import PairScores, iter_batches, pairwise_cosine, spearman
from ..errors import CheckFailedError, StedgeError, require

DEFAULT_MAX_DROP_SPEARMAN = 2.0   # points, when an eval set is given and no --max-drop
DEFAULT_MAX_DROP_COSINE = 0.05    # 1 - mean cosine, without eval set


@dataclass
class Verification:
    """One variant's verification record (as stored in stedge.json)."""

    mean_cosine: float
    min_cosine: float
    max_abs_diff: float
    spearman: float | None
    reference_spearman: float | None
    drop: float
    drop_unit: str              # "spearman_points" or "cosine"
    max_drop: float
    num_texts: int
    finite: bool
    device: str
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


class Runner:
    """Runs an exported graph (ONNX via onnxruntime, or OpenVINO IR) on numpy feeds."""

    def __init__(self, backend: str, file: str | os.PathLike, device: str = "cpu", root: str | os.PathLike | None = None) -> None:
        self.backend = backend
        file = Path(file)
        self.device = device
        if backend == "onnx":
            ort = require("onnxruntime", "onnx", "running ONNX graphs")
            from .onnx import check_external_data

            check_external_data(file, root or file.parent)
            providers = ["CPUExecutionProvider"]
            if device == "cuda":
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise StedgeError("--device cuda: onnxruntime has no CUDAExecutionProvider here; install stedge[gpu] or use --device cpu")
                providers.insert(0, "CUDAExecutionProvider")
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._sess = ort.InferenceSession(str(file), opts, providers=providers)
            self.inputs = [i.name for i in self._sess.get_inputs()]
            self.outputs = [o.name for o in self._sess.get_outputs()]
        elif backend == "openvino":
            ov = require("openvino", "openvino", "running OpenVINO models")
            core = ov.Core()
            dev = "GPU" if device == "cuda" else "CPU"
            self._compiled = core.compile_model(str(file), dev, {"INFERENCE_PRECISION_HINT": "f32"})
            self._req = self._compiled.create_infer_request()
            self.inputs = [i.get_any_name() for i in self._compiled.inputs]
            self.outputs = [o.get_any_name() for o in self._compiled.outputs]
        else:
            raise StedgeError(f"unknown backend {backend!r}: expected onnx or openvino")

    def __call__(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        if self.backend == "onnx":
            return self._sess.run([output], feeds)[0]
        res = self._req.infer(feeds)
        return np.asarray(res[self._compiled.output(output)])


def _numpy_feeds(feats: dict) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy().astype(np.int64) for k, v in feats.items()}


def graph_embed(model, runner: Callable, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Embeddings of ``texts`` from an embedding graph, with the model's tokenizer and default prompt."""
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
    """Scores (activation applied) of ``pairs`` from a reranker graph."""
    out = []
    for batch in iter_batches(list(pairs), batch_size):
        feeds = _numpy_feeds(model.tokenize(list(batch)))
        out.append(runner(feeds, "scores"))
    s = np.concatenate(out).astype(np.float32)
    return s[:, 0] if s.ndim == 2 and s.shape[1] == 1 else s


class Reference:
    """PyTorch fp32 outputs for the verification texts (computed once, shared by all variants)."""

    def __init__(self, model, task: str, texts: Sequence[str], eval_set: PairScores | None, batch_size: int = 32) -> None:
        self.model, self.task, self.texts, self.eval_set, self.batch_size = model, task, list(texts), eval_set, batch_size
        if task == "embedding":
            self.outputs = np.asarray(model.encode(self.texts, batch_size=batch_size), dtype=np.float32)
        else:
            self.pairs = reranker_pairs(self.texts)
            self.outputs = np.asarray(model.predict(self.pairs, batch_size=batch_size), dtype=np.float32)
        self.spearman = self._spearman(None) if eval_set is not None else None

    def _spearman(self, runner: Callable | None) -> float:
        ev = self.eval_set
        if self.task == "embedding":
            if runner is None:
                a = self.model.encode(ev.sentences1, batch_size=self.batch_size)
                b = self.model.encode(ev.sentences2, batch_size=self.batch_size)
            else:
                a = graph_embed(self.model, runner, ev.sentences1, self.batch_size)
                b = graph_embed(self.model, runner, ev.sentences2, self.batch_size)
            pred = pairwise_cosine(a, b)
        else:
            pairs = list(zip(ev.sentences1, ev.sentences2))
            pred = self.model.predict(pairs, batch_size=self.batch_size) if runner is None else graph_scores(self.model, runner, pairs, self.batch_size)
            pred = np.asarray(pred)
            if pred.ndim == 2:
                pred = pred[:, -1]
        return spearman(pred, ev.scores)

    def compare(self, runner: Runner, max_drop: float | None) -> Verification:
        """Verify one graph against the reference; ``max_drop`` None uses the defaults (not fatal)."""
        if self.task == "embedding":
            got = graph_embed(self.model, runner, self.texts, self.batch_size)
            cos = pairwise_cosine(got, self.outputs)
        else:
            got = graph_scores(self.model, runner, self.pairs, self.batch_size)
            ref = self.outputs.reshape(len(self.pairs), -1)
            g = got.reshape(len(self.pairs), -1)
            # A score vector per label column: cosine over all pairs (one number per label).
            cos = pairwise_cosine(g.T, ref.T)
        finite = bool(np.isfinite(got).all())
        diff = float(np.abs(got.reshape(self.outputs.shape) - self.outputs).max()) if finite else float("inf")
        mean_c = float(np.mean(cos)) if finite else 0.0
        min_c = float(np.min(cos)) if finite else 0.0
        sp = self._spearman(runner) if self.eval_set is not None and finite else None
        if self.eval_set is not None:
            unit = "spearman_points"
            drop = (self.spearman - sp) * 100 if sp is not None else float("inf")
            limit = DEFAULT_MAX_DROP_SPEARMAN if max_drop is None else max_drop
        else:
            unit = "cosine"
            drop = 1.0 - mean_c
            limit = DEFAULT_MAX_DROP_COSINE if max_drop is None else max_drop
        return Verification(
            mean_cosine=mean_c, min_cosine=min_c, max_abs_diff=diff, spearman=sp, reference_spearman=self.spearman,
            drop=float(drop), drop_unit=unit, max_drop=float(limit), num_texts=len(self.texts), finite=finite,
            device=runner.device, passed=finite and drop <= limit,
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
        return f"variant {variant}: the graph produced inf/NaN outputs; use a wider precision (fp32) or another --quantize"
    what = f"Spearman drop {v.drop:.2f} points" if v.drop_unit == "spearman_points" else f"cosine drop {v.drop:.5f}"
    return (f"variant {variant}: {what} exceeds --max-drop {v.max_drop:g}; nothing was written. "
            "Try another --quantize / --calibration-method, more calibration texts, or a larger --max-drop")


def check(variant: str, v: Verification) -> None:
    """Raise CheckFailedError when a variant did not pass."""
    if not v.passed:
        raise CheckFailedError(fail_message(variant, v))

