"""Encoder (sentence embeddings) and Reranker (pair scores) over a stedge artifact."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Set
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .artifact import (
    MANIFEST,
    Manifest,
    artifact_path,
    check_calibration_file,
    check_variant_files,
    device_family,
    known_device_family,
)
from .engines import installed_backends, open_engine
from .errors import ArtifactError, DeviceError, InputError
from .inputs import as_pairs, rank_documents, resolve_prompt
from .quantization import check_precision, load_ranges, quantize_embeddings
from .select import Selection, default_batch_tokens, select_variant
from .similarity import check_name, similarity_matrix
from .tokenize import Tokenizer, batches, pad

KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "prompt_length")


class _Artifact:
    """Shared loading: manifest -> variant -> hash check -> engine + tokenizer."""

    task = ""
    needed_outputs: tuple[str, ...] = ()

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        variant: str,
        engine: Any,
        tokenizer: Tokenizer,
        max_batch_tokens: int,
        selection: Selection | None = None,
        latency_engine: Any = None,
    ) -> None:
        self.path = root
        self._manifest = manifest
        self._variant = variant
        self._engine = engine
        self._latency_engine = latency_engine
        self._selection = selection or Selection(variant=variant, source="named", reason="named by the caller")
        self._tok = tokenizer
        self.max_batch_tokens = int(max_batch_tokens)
        self._verify: bool | str = "cached"  # how load() checked the files; side files (calibration) likewise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        variant: str | None = None,
        device: str = "cpu",
        threads: int | None = None,
        fallback: bool = False,
        verify: bool | str = "cached",
        max_batch_tokens: int | None = None,
        tier: str | None = None,
        route: bool | None = None,
        profile: bool = True,
        max_memory_mb: float | None = None,
        **engine_options: Any,
    ):
        """Load an artifact folder for ``device`` (cpu, cuda[:N], tensorrt[:N], ort-openvino[:DEV],
        gpu[.N], npu, auto[:DEVS]); ``variant`` names one from stedge.json, else the fastest variant of
        precision ``tier`` (exact, near (default), compressed) is chosen from this machine's tuning profile,
        or by the rule in stedge_runtime.select without one (``profile=False`` skips the profile). ``route``:
        batch-1 calls may run on a faster second variant when the profile shows it and the vectors agree
        (None), always when faster (True) or never (False). ``max_memory_mb``: the choice must have peaked at
        most that much in `stedge tune`'s memory probe here (a route is dropped, or a lighter configuration
        taken; a warning when nothing measured fits or nothing was measured). ``selection`` says what was
        chosen and why.
        An unavailable device is an error unless ``fallback=True``, which warns and runs on the CPU.
        ``verify`` controls the sha256 check ("cached", True, False). ``max_batch_tokens`` caps the padded
        tokens (rows x longest row) of one engine call: by default the budget the profile measured, else
        1024 on a CPU and 16384 on a GPU (stedge_runtime.select.BATCH_TOKENS). ``engine_options`` go to the
        engine (see OrtEngine / OpenVINOEngine) and win over the variant's and the profile's settings."""
        root = Path(path)
        if max_batch_tokens is not None and (
            isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens < 1
        ):
            raise InputError(f"max_batch_tokens must be an integer >= 1 (or None), got {max_batch_tokens!r}")
        known_device_family(device)
        m = Manifest.read(root, cls.task)
        choice = {"tier": tier, "route": route, "use_profile": profile, "max_memory_mb": max_memory_mb}
        try:
            sel, engines = cls._open(root, m, variant, device, threads, verify, engine_options, choice)
        except DeviceError as e:
            if not fallback or device_family(device) == "cpu":
                raise
            warnings.warn(f"{e}. Falling back to the CPU (fallback=True).", RuntimeWarning, stacklevel=2)
            v = variant if variant in m.variants and m.variants[variant].fits("cpu") else None
            sel, engines = cls._open(root, m, v, "cpu", threads, verify, engine_options, choice)
            device = "cpu"
        for w in sel.warnings:
            warnings.warn(f"{root}: {w}", RuntimeWarning, stacklevel=2)
        tok_file = artifact_path(root, m.tokenizer, "tokenizer")
        tok = Tokenizer(tok_file, m.max_seq_length, m.do_lower_case)
        budget = max_batch_tokens or sel.max_batch_tokens or default_batch_tokens(device)
        obj = cls(root, m, sel.variant, engines[0], tok, budget, sel, engines[1])
        obj._verify = verify
        return obj

    @classmethod
    def _open(
        cls,
        root: Path,
        m: Manifest,
        variant: str | None,
        device: str,
        threads: int | None,
        verify: bool | str,
        options: dict,
        choice: dict,
    ) -> tuple[Selection, tuple[Any, Any]]:
        family = device_family(device)
        sel = select_variant(
            m.variants, family, variant, installed_backends(), root, key=None, where=str(root / MANIFEST), **choice
        )
        user = dict(options, **({"threads": threads} if threads is not None else {}))
        lv = sel.latency_variant
        if options and lv is not None and m.variants[lv].backend != m.variants[sel.variant].backend:
            sel = replace(
                sel,
                latency_variant=None,
                latency_settings={},
                notes=sel.notes + (f"batch-1 routing to {lv} off: engine options were given for {sel.variant}",),
            )
        sel = _with_caller_options(sel, user)
        engine = cls._engine(root, m, sel.variant, device, verify, sel.settings)
        latency = None
        if sel.latency_variant is not None:
            latency = cls._engine(root, m, sel.latency_variant, device, verify, sel.latency_settings)
        return sel, (engine, latency)

    @classmethod
    def _engine(cls, root: Path, m: Manifest, name: str, device: str, verify: bool | str, settings: dict) -> Any:
        """Check one variant's files and open its engine with the variant's options, then ``settings``."""
        v = m.variants[name]
        file = check_variant_files(root, v, verify)[0]
        opts = {**(v.extra.get("engine_options") or {}), **settings}
        threads = opts.pop("threads", None)
        engine = open_engine(v.backend, file, device, v.precision, threads, opts, m.max_seq_length)
        unknown = [i for i in engine.inputs if i not in KNOWN_INPUTS]
        missing = [o for o in cls.needed_outputs if o not in engine.outputs]
        if unknown or missing:
            raise ArtifactError(
                f"{file}: graph does not follow the stedge contract (unknown inputs {unknown}, missing outputs "
                f"{missing})"
            )
        return engine

    # ------------------------------------------------------------ properties
    @property
    def manifest(self) -> Manifest:
        """The artifact's typed stedge.json (``stedge_runtime.artifact.Manifest``)."""
        return self._manifest

    @property
    def variant(self) -> str:
        """Name of the variant that runs (bulk calls; see ``selection.latency_variant`` for batch-1 calls)."""
        return self._variant

    @property
    def selection(self) -> Selection:
        """What was chosen and why: source (named / profile / rule), tier, settings, routing, exclusions."""
        return self._selection

    @property
    def device(self) -> str:
        """The device the engine runs on."""
        return self._engine.device

    @property
    def max_seq_length(self) -> int:
        """Longer inputs are truncated (with one warning)."""
        return self._tok.max_length

    def _run(self, items: list, batch_size: int, output: str, width: int, extra: dict | None = None) -> np.ndarray:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        one = len(items) == 1 or batch_size == 1  # batch-1 calls may run on the latency variant (selection)
        engine = self._latency_engine if one and self._latency_engine is not None else self._engine
        type_ids = "token_type_ids" in engine.inputs
        if len(items) == 1:  # the one-text path (Tokenizer.one): an app's query, one call at a time
            feeds = self._tok.one(items[0], type_ids)
            for k, v in (extra or {}).items():
                feeds[k] = np.full(1, v, dtype=np.int64)
            res = self._engine_run(lambda: engine.run(feeds, output), feeds["input_ids"].shape)
            return self._checked(res, 1, width, output)
        tokens = self._tok.tokens(items, type_ids)
        out = np.empty((len(items), width), dtype=np.float32)
        groups = list(batches(tokens.lengths, batch_size, self.max_batch_tokens))
        streams = getattr(engine, "parallel", 1) if device_family(engine.device) == "cpu" else 1
        if 1 < streams and 1 < len(items) and len(groups) <= streams:
            # One round of batches would leave CPU streams idle (32 texts: one batch on one of two streams, at
            # 0.68-0.71x a LATENCY engine's rate on the AMX guest) or wait on a lopsided pair (32 + 1): cut the rows
            # evenly. Not on a GPU, where a larger batch may pay more than a second stream (not measured).
            groups = list(batches(tokens.lengths, -(-len(items) // streams), self.max_batch_tokens))

        def feeds_of(idx: Any) -> dict[str, np.ndarray]:
            feeds = pad(tokens, idx, self._tok.pad_id, type_ids)
            for k, v in (extra or {}).items():
                feeds[k] = np.full(len(idx), v, dtype=np.int64)
            return feeds

        if getattr(engine, "parallel", 1) > 1 and len(groups) > 1:  # OpenVINO streams: batches run side by side
            # padded as the requests take them, so only the batches in flight are in memory
            largest = (max(len(g) for g in groups), int(tokens.lengths.max()))  # for an error message
            results = self._engine_run(lambda: engine.run_many((feeds_of(i) for i in groups), output), largest)
            for idx, res in zip(groups, results):
                out[idx] = self._checked(res, len(idx), width, output)
            return out
        for idx in groups:
            feeds = feeds_of(idx)
            res = self._engine_run(lambda feeds=feeds: engine.run(feeds, output), feeds["input_ids"].shape)
            out[idx] = self._checked(res, len(idx), width, output)
        return out

    def _engine_run(self, call: Any, shape: tuple) -> Any:
        """One engine call (``call()``, on a batch of ``shape``, or batches of at most it); an engine failure on
        input the runtime built is the artifact's fault (its max_seq_length longer than the graph's positions, a
        damaged graph): one line naming it."""
        try:
            return call()
        except Exception as e:  # onnxruntime / openvino raise their own types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ArtifactError(
                f"{self.path} variant {self._variant}: the engine failed on a batch of shape "
                f"{tuple(shape)} ({type(e).__name__}: {first}); check stedge.json max_seq_length "
                f"({self._tok.max_length}) against the model, or re-export it"
            ) from None

    def _checked(self, y: np.ndarray, rows: int, width: int, output: str) -> np.ndarray:
        if y.size != rows * width:
            field = "dimension" if output == "sentence_embedding" else "num_labels"
            raise ArtifactError(
                f"{self.path / MANIFEST}: field '{field}' says {width} but the graph's {output} has shape {y.shape} "
                f"for {rows} texts; the manifest does not match the graph: re-export the model"
            )
        return y.reshape(rows, width)


class Encoder(_Artifact):
    """Sentence embeddings from an embedding artifact; mirrors SentenceEncoder.encode."""

    task = "embedding"
    needed_outputs = ("sentence_embedding",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prompt_lengths: dict[str, int] = {}
        sim = self._manifest.similarity_fn_name or "cosine"
        try:
            self.similarity_fn_name: str = check_name(sim)
        except InputError:
            raise ArtifactError(f"{self.path / MANIFEST}: unknown similarity_fn_name {sim!r}") from None

    @property
    def dimension(self) -> int:
        """Width of the embeddings."""
        return int(self._manifest.dimension or 0)

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self._manifest.prompts)

    @property
    def default_prompt_name(self) -> str | None:
        return self._manifest.default_prompt_name

    def get_sentence_embedding_dimension(self) -> int:
        """Same as ``dimension`` (the torch side's name)."""
        return self.dimension

    def _resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str | None:
        return resolve_prompt(self.prompts, self.default_prompt_name, prompt_name, prompt)

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = False,
        normalize: bool | None = None,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Embeddings in input order: (n, width), or (width,) for one string.

        ``normalize_embeddings=True`` L2-normalizes here (the torch side's name); False returns what the
        graph gives (a graph exported with Normalize is already normalized). ``normalize`` is the same
        switch under its older name, kept so code written for stedge-runtime 0.1 runs unchanged.
        ``precision``: float32, int8, uint8 (width = dimension), binary or ubinary (width = dimension / 8),
        as sentence-transformers' encode; int8/uint8 use ``ranges``, else the ranges of
        ``calibration_embeddings``, else the artifact's saved calibration (``stedge calibrate``) -- see
        ``stedge_runtime.quantization``.
        """
        normalize_embeddings = bool(normalize_embeddings or normalize)
        check_precision(precision)
        single = isinstance(texts, str)
        if isinstance(texts, (Mapping, Set, bytes, bytearray)):
            raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
        items = [texts] if single else list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        text = self._resolve_prompt(prompt_name, prompt)
        extra = {}
        if "prompt_length" in self._engine.inputs:
            extra["prompt_length"] = self._prompt_length(text) if text else 0
        if text:
            items = [text + t for t in items]
        if precision in ("int8", "uint8") and ranges is None and calibration_embeddings is None:
            ranges = self.embedding_ranges
            if ranges is None:
                raise InputError(
                    f"precision {precision!r} needs calibration ranges and {self.path} has none: run "
                    f"`stedge calibrate {self.path} --texts FILE`, or pass ranges= / calibration_embeddings="
                )
        if not items:
            out = np.zeros((0, self.dimension), dtype=np.float32)
        else:
            out = self._run(items, batch_size, "sentence_embedding", self.dimension, extra)
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if precision != "float32":
            out = quantize_embeddings(out, precision, ranges=ranges, calibration_embeddings=calibration_embeddings)
        return out[0] if single else out

    @property
    def embedding_ranges(self) -> np.ndarray | None:
        """The calibration ranges (2, dimension) saved with the artifact, or None when it has none."""
        if not hasattr(self, "_ranges"):
            cal = self._manifest.embedding_calibration
            self._ranges = (
                None
                if cal is None
                else load_ranges(check_calibration_file(self.path, cal, self._verify), self.dimension)
            )
        return self._ranges

    def _prompt_length(self, prompt: str) -> int:
        """Leading tokens a prompt takes (start token included, end token not), as the torch side."""
        if prompt not in self._prompt_lengths:
            self._prompt_lengths[prompt] = len(self._tok.encode([prompt])[0].ids) - 1
        return self._prompt_lengths[prompt]

    def similarity(self, a, b) -> np.ndarray:
        """All-pairs similarity (n_a, n_b) with the model's similarity_fn_name."""
        return similarity_matrix(self.similarity_fn_name, a, b)

    def similarity_pairwise(self, a, b) -> np.ndarray:
        """Row-by-row similarity of two equally long arrays of embeddings."""
        return similarity_matrix(self.similarity_fn_name, a, b, pairwise=True)

    def __repr__(self) -> str:
        return f"Encoder({self.path}, variant={self.variant}, device={self.device}, dim={self.dimension})"


class Reranker(_Artifact):
    """Scores (query, document) pairs from a reranking artifact; mirrors CrossEncoder."""

    task = "reranking"
    needed_outputs = ("logits", "scores")

    @property
    def num_labels(self) -> int:
        return int(self._manifest.num_labels or 1)

    def predict(
        self, pairs: Sequence[Sequence[str]], batch_size: int = 32, apply_activation: bool = True
    ) -> np.ndarray:
        """Scores in input order: (n,) for one label, (n, num_labels) otherwise; one pair gives a scalar row."""
        items, single = as_pairs(pairs)
        if not items:
            return np.zeros((0,) if self.num_labels == 1 else (0, self.num_labels), dtype=np.float32)
        out = self._run(items, batch_size, "scores" if apply_activation else "logits", self.num_labels)
        if self.num_labels == 1:
            out = out[:, 0]
        return out[0] if single else out

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
    ) -> list[dict]:
        """Documents sorted by score, best first: [{corpus_id, score(, text)}]."""
        return rank_documents(
            lambda pairs: self.predict(pairs, batch_size=batch_size),
            query,
            documents,
            self.num_labels,
            top_k,
            return_documents,
        )

    def __repr__(self) -> str:
        return f"Reranker({self.path}, variant={self.variant}, device={self.device}, num_labels={self.num_labels})"


def _with_caller_options(sel: Selection, user: dict) -> Selection:
    """The selection with the caller's engine options (and ``threads``) over its settings, so that
    ``selection.settings`` says what runs, and a note naming each profile setting they replaced."""
    if not user:
        return sel
    replaced = [
        f"{k}={sel.settings[k]!r} -> {v!r}" for k, v in user.items() if k in sel.settings and sel.settings[k] != v
    ]
    note = (f"the caller's engine options replace the {sel.source}'s {', '.join(replaced)}",) if replaced else ()
    latency = {**sel.latency_settings, **user} if sel.latency_variant is not None else {}
    return replace(sel, settings={**sel.settings, **user}, latency_settings=latency, notes=sel.notes + note)
