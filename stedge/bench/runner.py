"""Run a suite: build what is missing, measure every subject in its own process, collect the results.

Fairness rules applied here:

* the same texts (throughput, latency queries, STS pairs) for every subject of a model;
* the same thread budget for every engine: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` /
  ``OPENBLAS_NUM_THREADS`` / ``RAYON_NUM_THREADS`` in the worker's environment, plus
  ``torch.set_num_threads`` (torch subjects), ``intra_op_num_threads`` (ONNX Runtime) and
  ``INFERENCE_NUM_THREADS`` (OpenVINO), all set from the suite's ``threads`` and recorded;
* warm-up before timing, several repetitions, median with min/max spread;
* one subprocess per subject, so cold start and peak RSS are the subject's own;
* with ``interleave_cycles``, a last phase with every subject loaded at once and measured in turn
  (interleave.py), whose ratios a slow spell of the machine cannot tilt towards one subject.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import tomllib

from stedge.errors import StedgeError

from . import SUITES_DIR, work_root
from .subjects import TASKS, FastEmbedPeer, RuntimeVariant, StedgeTorch, STPeer, Subject, parse_auto

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- suite
@dataclass
class ModelEntry:
    """One model of a suite and what to measure on it."""

    name: str
    ref: str
    artifact: str | None = None
    torch: list[str] = field(default_factory=lambda: ["fp32"])
    variants: list[str] = field(default_factory=list)
    # exported for the auto subjects to choose from, but not measured by name (a suite of auto subjects alone)
    candidates: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    baseline_model: str | None = None  # compare speed with this other model of the suite (a teacher)
    # tiers measured as Encoder.load(tier=...) picks them; "near@300": with max_memory_mb=300
    auto: list[str] = field(default_factory=lambda: ["near"])
    optional: bool = False  # skip (and say so) when the ref does not resolve, e.g. a student not trained yet
    # "embedding" or "reranking" (a cross-encoder: measured on (query, passage) pairs); None: detected from the model
    # (stedge.hub.detect_task), and when set, checked against it
    task: str | None = None


@dataclass
class Suite:
    """A benchmark suite (see benchmarks/suites/*.toml and benchmarks/README.md for the fields)."""

    name: str
    file: str
    models: list[ModelEntry]
    description: str = ""
    device: str = "cpu"
    threads: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    headline_batch_size: int = 32
    repetitions: int = 3
    rounds: int = 1  # every subject runs this many times, in alternating order; the best round counts
    max_rounds: int = 0  # up to this many when its two best rounds differ by more than ROUNDS_AGREE (0: rounds)
    interleave_cycles: int = 0  # then this many cycles of one pass per subject, all alive at once (interleave.py)
    interleave_batch_sizes: list[int] = field(default_factory=list)  # their batch sizes (default: the headline)
    warmup: int = 1
    latency_rounds: int = 1
    timeout_s: int = 900
    models_dir: str = "models"
    texts: str = "stsb/test.tsv.gz"
    num_texts: int = 800
    num_texts_batch1: int = (
        0  # throughput at batch size 1 over only the first N texts (0: all); latency has its own queries
    )
    queries: str = "ir/scifact/queries.jsonl.gz"
    num_queries: int = 100
    idle_gap_ms: int = 50  # then the queries again, each after this long idle (0: off)
    accuracy: str = "stsb/test.tsv.gz"
    accuracy_pairs: int = 0
    calibration: str = "builtin"  # int8 calibration texts (`stedge export --calibration`); builtin: the built-in ones
    calibration_texts: int = 300  # as `stedge export --calibration-size`
    passages: str = "ir/scifact/corpus.jsonl.gz"  # passage-length texts (abstracts, truncated at max_seq_length)
    num_passages: int = 128  # per timed pass; 0 turns passage throughput off
    passage_batch_sizes: list[int] = field(default_factory=list)  # default: the headline batch size
    tune: bool = True  # `stedge tune` the artifact here first when its profile is missing or stale
    tune_budget_s: float = 0.0  # 0: stedge tune's default (4 s per variant)
    tune_quick: bool = False  # stedge tune --quick (set by --quick; a full run re-tunes after it)
    peer_python: str | None = None  # run the sentence-transformers peers there (stedge.bench.peer)

    def quick(self) -> "Suite":
        """A shortened copy for a fast look: one repetition, fewer texts and batch sizes."""
        import copy

        s = copy.deepcopy(self)
        s.repetitions = 1
        s.rounds = 1
        s.max_rounds = 1
        s.interleave_cycles = min(self.interleave_cycles, 3)
        s.batch_sizes = sorted({self.batch_sizes[0], self.headline_batch_size})
        s.interleave_batch_sizes = [b for b in self.interleave_batch_sizes if b in s.batch_sizes]
        s.num_texts = min(self.num_texts, 128)
        s.num_texts_batch1 = min(self.num_texts_batch1 or 32, 32)
        s.num_queries = min(self.num_queries, 20)
        s.accuracy_pairs = min(self.accuracy_pairs or 200, 200)
        s.num_passages = min(self.num_passages, 32)
        s.tune_quick = True
        return s


_SUITE_KEYS = {k for k in Suite.__dataclass_fields__} - {"name", "file", "models"}
_MODEL_KEYS = set(ModelEntry.__dataclass_fields__)


_TYPE_CHECKS = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "str | None": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "list[int]": ("a list of integers", lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def _check_types(data: dict, cls: type, where: str) -> None:
    """Each known key of a suite table has the type its dataclass field declares (StedgeError naming the key)."""
    for key, value in data.items():
        f = cls.__dataclass_fields__.get(key)
        check = _TYPE_CHECKS.get(str(f.type)) if f is not None else None
        if check is not None and not check[1](value):
            raise StedgeError(f"{where}{key} must be {check[0]}, got {value!r}")
        if check is not None and check[0] == "an integer" and value < 0:
            raise StedgeError(f"{where}{key} must be >= 0, got {value!r}")


def find_suite(name_or_path: str | os.PathLike) -> Path:
    """A suite file from a path, or a name in stedge/bench/suites/ (benchmarks/suites/) (``cpu`` -> suites/cpu.toml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    cand = SUITES_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if cand.is_file():
        return cand
    known = ", ".join(sorted(f.stem for f in SUITES_DIR.glob("*.toml")))
    raise StedgeError(f"suite {str(name_or_path)!r} not found: pass a .toml file or one of: {known}")


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """Read and check a suite TOML file (unknown keys and wrong types are errors naming the key)."""
    file = find_suite(name_or_path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise StedgeError(f"{file}: not valid TOML ({e})") from None
    models_raw = data.pop("models", None)
    name = str(data.pop("name", file.stem))
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise StedgeError(
            f"{file}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_SUITE_KEYS))}"
        )
    if not isinstance(models_raw, list) or not models_raw:
        raise StedgeError(f"{file}: needs at least one [[models]] table with a 'ref'")
    _check_types(data, Suite, f"{file}: ")
    models = []
    for i, m in enumerate(models_raw):
        if not isinstance(m, dict):
            raise StedgeError(f"{file}: models[{i}] must be a [[models]] table")
        _check_types(m, ModelEntry, f"{file}: models[{i}].")
        bad = set(m) - _MODEL_KEYS
        if bad:
            raise StedgeError(
                f"{file}: models[{i}]: unknown key(s) {', '.join(sorted(bad))}; allowed: "
                f"{', '.join(sorted(_MODEL_KEYS))}"
            )
        if not m.get("ref"):
            raise StedgeError(f"{file}: models[{i}] needs 'ref' (a model reference or an artifact folder)")
        m.setdefault("name", Path(str(m["ref"]).rstrip("/")).name)
        for key in ("torch", "variants", "peers", "auto"):
            if key in m and not (isinstance(m[key], list) and all(isinstance(x, str) for x in m[key])):
                raise StedgeError(f"{file}: models[{i}].{key} must be a list of strings")
        for spec in m.get("auto", []):
            try:
                parse_auto(spec)
            except ValueError as e:
                raise StedgeError(f"{file}: models[{i}].auto: {e}") from None
        if m.get("task") not in (None, *TASKS):
            raise StedgeError(
                f"{file}: models[{i}].task must be one of {', '.join(TASKS)} (or left out: detected from the model), "
                f"got {m['task']!r}"
            )
        models.append(ModelEntry(**m))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise StedgeError(f"{file}: model names must be unique (got {names}); set 'name' on each [[models]]")
    suite = Suite(name=name, file=str(file), models=models, **data)
    for key in ("batch_sizes",):
        vals = getattr(suite, key)
        if not vals or not all(isinstance(b, int) and b >= 1 for b in vals):
            raise StedgeError(f"{file}: {key} must be a non-empty list of integers >= 1, got {vals!r}")
    if suite.repetitions < 1:
        raise StedgeError(f"{file}: repetitions must be >= 1, got {suite.repetitions}")
    if suite.rounds < 1:
        raise StedgeError(f"{file}: rounds must be >= 1, got {suite.rounds}")
    if suite.max_rounds and suite.max_rounds < suite.rounds:
        raise StedgeError(f"{file}: max_rounds must be 0 or >= rounds ({suite.rounds}), got {suite.max_rounds}")
    if suite.headline_batch_size not in suite.batch_sizes:
        raise StedgeError(
            f"{file}: headline_batch_size {suite.headline_batch_size} must be one of batch_sizes {suite.batch_sizes}"
        )
    if suite.interleave_cycles < 0:
        raise StedgeError(
            f"{file}: interleave_cycles must be >= 0 (0: no interleaved phase), got {suite.interleave_cycles}"
        )
    extra = sorted(set(suite.interleave_batch_sizes) - set(suite.batch_sizes))
    if extra:
        raise StedgeError(
            f"{file}: interleave_batch_sizes {suite.interleave_batch_sizes} has {extra}, which batch_sizes "
            f"{suite.batch_sizes} lacks: the interleaved phase only runs batch sizes the rounds measured; add them "
            "to batch_sizes or drop them here"
        )
    for m in models:
        if m.baseline_model is not None and m.baseline_model not in names:
            raise StedgeError(
                f"{file}: models '{m.name}': baseline_model {m.baseline_model!r} is not a model of this suite "
                f"({', '.join(names)})"
            )
    return suite


def resolve_threads(threads: int) -> int:
    """0 means all physical cores this process may use, or what a container's CPU quota allows
    (``stedge_runtime.machine.usable_cores``)."""
    if threads and threads > 0:
        return int(threads)
    from stedge_runtime.machine import usable_cores

    return usable_cores()


def thread_env(threads: int) -> dict[str, str]:
    """Environment for every worker: the thread budget for each library, and quiet logs."""
    env = dict(os.environ)
    for k in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "RAYON_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    ):
        env[k] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "true"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


# --------------------------------------------------------------------------- data
@dataclass
class BenchData:
    """The texts every subject of a run sees (a reranker's pairs: add_pairs)."""

    texts: list[str]
    queries: list[str]
    sts_texts: list[str]
    sts_i1: list[int]
    sts_i2: list[int]
    sts_scores: list[float]
    sources: dict[str, Any]
    passages: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # a reranker's throughput pairs (STS-B)
    query_pairs: list[tuple[str, str]] = field(default_factory=list)  # its batch-1 latency pairs (short)
    passage_pairs: list[tuple[str, str]] = field(default_factory=list)  # a query and an abstract each

    @property
    def sts_pairs(self) -> list[tuple[str, str]]:
        """The STS pairs in the order of ``sts_scores``: what a reranker scores for its accuracy."""
        return [(self.sts_texts[i], self.sts_texts[j]) for i, j in zip(self.sts_i1, self.sts_i2)]

    def inputs(self, task: str) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """(throughput items, batch-1 latency items, accuracy items, passage items) of a model of ``task``: texts
        for an embedding model, (query, passage) pairs for a reranker (after add_pairs)."""
        if task == "reranking":
            return self.pairs, self.query_pairs, self.sts_pairs, self.passage_pairs
        return self.texts, self.queries, self.sts_texts, self.passages


def _read_sts_any(source: str, limit: int | None):
    from stedge.data import read_sts, resolve_data_path

    if resolve_data_path(source).exists():
        return read_sts(source, limit=limit), source
    hub = "sentence-transformers/stsb@test"
    try:
        return read_sts(hub, limit=limit), hub
    except StedgeError as e:
        raise StedgeError(
            f"STS data {source!r} not found locally and the Hub fallback failed ({e}); set 'accuracy' in the suite"
        ) from None


def load_data(suite: Suite) -> BenchData:
    """Throughput texts, short latency queries and STS pairs, as the suite names them."""
    from stedge.data import read_texts, resolve_data_path

    pairs, acc_src = _read_sts_any(suite.accuracy, suite.accuracy_pairs or None)
    uniq: dict[str, int] = {}
    for t in pairs.sentences1 + pairs.sentences2:
        uniq.setdefault(t, len(uniq))
    sts_texts = list(uniq)
    if resolve_data_path(suite.texts).exists():
        texts = read_texts(suite.texts, limit=suite.num_texts)
    else:
        texts = sts_texts[: suite.num_texts]
    if resolve_data_path(suite.queries).exists():
        queries = read_texts(
            suite.queries, column="text" if "jsonl" in suite.queries else None, limit=suite.num_queries
        )
    else:  # the shortest STS sentences stand in for queries
        queries = sorted(sts_texts, key=len)[: suite.num_queries]
    passages: list[str] = []
    if suite.num_passages and resolve_data_path(suite.passages).exists():
        passages = read_texts(
            suite.passages, column="text" if "jsonl" in suite.passages else None, limit=suite.num_passages
        )
    if len(texts) < 1 or len(queries) < 1:
        raise StedgeError(
            f"suite {suite.name}: no throughput texts or queries were read (texts={suite.texts!r}, "
            f"queries={suite.queries!r})"
        )
    return BenchData(
        texts=texts,
        queries=queries,
        sts_texts=sts_texts,
        sts_i1=[uniq[t] for t in pairs.sentences1],
        sts_i2=[uniq[t] for t in pairs.sentences2],
        sts_scores=list(pairs.scores),
        sources={
            "texts": suite.texts,
            "num_texts": len(texts),
            "queries": suite.queries,
            "num_queries": len(queries),
            "accuracy": acc_src,
            "accuracy_pairs": len(pairs),
            "accuracy_texts": len(sts_texts),
            "passages": suite.passages if passages else None,
            "num_passages": len(passages),
        },
        passages=passages,
    )


def add_pairs(data: BenchData, suite: Suite) -> None:
    """A reranker's inputs, added once per run: ``num_texts`` STS pairs from the suite's ``texts`` (its ``accuracy``
    pairs when ``texts`` is no table of sentence pairs) for throughput, the first ``num_queries`` of them for batch-1
    latency (short pairs), and each passage after a query, in turn, for passage-length pairs."""
    from stedge.data import read_sts, resolve_data_path

    if data.pairs:
        return
    src, limit = suite.texts, max(suite.num_texts, suite.num_queries)
    try:
        sts = read_sts(src, limit=limit) if resolve_data_path(src).exists() else None
    except StedgeError:  # a plain text file: no pairs in it
        sts = None
    if sts is None:
        src, pairs = data.sources["accuracy"], data.sts_pairs[:limit]
    else:
        pairs = list(zip(sts.sentences1, sts.sentences2))
    data.pairs, data.query_pairs = pairs[: suite.num_texts], pairs[: suite.num_queries]
    data.passage_pairs = [(data.queries[i % len(data.queries)], p) for i, p in enumerate(data.passages)]
    data.sources["reranking"] = {
        "pairs": src,
        "num_pairs": len(data.pairs),
        "num_query_pairs": len(data.query_pairs),
        "passage_pairs": f"{suite.queries} + {suite.passages}" if data.passage_pairs else None,
        "num_passage_pairs": len(data.passage_pairs),
    }


def token_counts(model_path: Path, texts: list[Any]) -> list[int]:
    """Tokens per text or (query, passage) pair (special tokens included, truncated at the model's max_seq_length)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    max_len = 512
    from stedge_runtime.artifact import Manifest, is_artifact

    if is_artifact(model_path):
        max_len = Manifest.read(model_path).max_seq_length
    elif (model_path / "sentence_bert_config.json").exists():
        val = json.loads((model_path / "sentence_bert_config.json").read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(val, int):
            max_len = val
    tok.no_padding()
    tok.enable_truncation(max_len)
    return [len(e.ids) for e in tok.encode_batch([t if isinstance(t, str) else tuple(t) for t in texts])]


# --------------------------------------------------------------------------- building


def ensure_artifact(
    entry: ModelEntry, model_path: Path, suite: Suite, data: BenchData, log: Callable[[str], None]
) -> Path | None:
    """The artifact folder with every variant the entry asks for; missing ones are built via export_model."""
    if not entry.variants and not entry.candidates:
        return None
    from stedge_runtime.artifact import is_artifact

    if is_artifact(model_path) and entry.artifact is None:
        return model_path  # the ref is an artifact already: measure what it holds
    art = Path(entry.artifact) if entry.artifact else work_root() / suite.models_dir / f"{entry.name}-bench"
    from .build import build_variants

    variants = list(dict.fromkeys(entry.variants + entry.candidates))
    if "fastembed" in entry.peers and "onnx-fp32" not in variants:
        variants.append("onnx-fp32")  # the graph fastembed runs
    variants = _runnable_here(variants, suite.device, log)
    if not variants:
        return art  # nothing to build: each variant's subject is recorded as skipped, with the engine's reason
    build_variants(
        model_path,
        art,
        variants,
        calibration=(suite.calibration, suite.calibration_texts),
        device=suite.device,
        log=log,
        eval_data=_local_eval(data, suite),
    )
    return art


def _runnable_here(variants: list[str], device: str, log: Callable[[str], None]) -> list[str]:
    """The suite's variants some engine installed here can run on its device (``tensorrt:`` prefixed ones on
    TensorRT); the others are not exported, since their subjects would be skipped after minutes of exporting."""
    from .subjects import engine_problem

    keep = []
    for v in variants:
        name, dev = (v.split(":", 1)[1], "tensorrt") if v.startswith("tensorrt:") else (v, device)
        why = engine_problem(name, dev)
        if why is None:
            keep.append(v)
        else:
            log(f"not exporting {name} for {dev}: {why}")
    return keep


def _local_eval(data: BenchData, suite: Suite) -> tuple[str, int | None] | None:
    """The suite's STS pairs as export's eval set (tiers by Spearman and min cos on their texts) when they are
    a local file; the Hub fallback is not passed on (export would download it again)."""
    from stedge.data import resolve_data_path

    src = data.sources.get("accuracy")
    path = resolve_data_path(src) if src else None
    if path is None or not path.is_file():
        return None
    return str(path), suite.accuracy_pairs or None


# `stedge tune` in the harness: on the 2-core Zen 4 guest all-MiniLM-L6-v2's 7 variants took 3 min to the timings,
# and the memory probe after them (a fresh process per configuration) ran past the 600 s the harness then allowed.
TUNE_TIMEOUT_S = 2400


def crash_excerpt(stderr: str, limit: int = 800) -> str:
    """What a failed child process said, in at most ``limit`` characters: for a native crash the "Fatal Python
    error" line and the innermost frames of the thread that crashed (faulthandler marks it "Current thread"; the
    other threads' stacks would push it out of the text's end), else the end of ``stderr``."""
    lines = [x.strip() for x in stderr.strip().splitlines()]
    fatal = next((i for i, x in enumerate(lines) if x.startswith("Fatal Python error")), None)
    if fatal is None:
        return stderr.strip()[-limit:]
    start = next((i for i in range(fatal, len(lines)) if lines[i].startswith("Current thread")), fatal)
    frames = []
    for x in lines[start + 1 :]:
        if not x.startswith("File "):
            break
        frames.append(x)
    return " | ".join([lines[fatal], *frames[:6]])[:limit]


def ensure_profile(
    artifact: Path,
    suite: Suite,
    threads: int,
    env: dict[str, str],
    log: Callable[[str], None],
    budgets: bool = False,
    queries: list[str] | None = None,
) -> None:
    """Run `stedge tune` on the artifact (in a clean process, at the thread budget) unless this machine's
    profile already covers every variant the CPU can run, each with the hash it has now and with every engine
    setting the tuner tries today (a profile from an older settings grid is re-tuned). ``budgets``: an auto
    subject has a memory budget, so a profile without the figures of each configuration is re-tuned too.
    ``queries``: the suite's batch-1 queries, which the tune's batch-1 calls then run on (`stedge tune --queries`),
    so that its batch-1 choices fit the queries the harness times; a profile tuned on others is re-tuned."""
    from stedge_runtime.errors import RuntimeStedgeError
    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import read_profile
    from stedge_runtime.tune import DUEL_KEYS, settings_grid, texts_sha256, tunable_variants

    def tried(entry: dict) -> set:
        # where a duel chose other than the default (a finer static padding, another run-time int8 group), the
        # runs carry its choice; the grid never does, so DUEL_KEYS are left out of the comparison (re-decided only
        # when the variant is re-tuned)
        runs = entry.get("runs") or []
        return {tuple(sorted((k, v) for k, v in r["settings"].items() if k not in DUEL_KEYS)) for r in runs}

    todo, _ = tunable_variants(artifact)
    try:
        prof = read_profile(artifact, machine_key()) or {}
    except RuntimeStedgeError:
        prof = {}
    have = prof.get("variants") or {}
    stale = [n for n, v in todo.items() if n not in have or have[n].get("sha256") != v.get("sha256")]
    stale += [
        n
        for n, v in todo.items()
        if n not in stale
        and have[n].get("status") == "ok"
        and tried(have[n])
        != tried({"runs": [{"settings": s} for s in settings_grid(v["backend"], threads or None, suite.tune_quick)]})
    ]
    if (prof.get("quick") or "batch_tokens" not in prof or "paired" not in prof) and prof and not suite.tune_quick:
        stale = list(todo)  # a quick profile, or one from before the token budget or the paired final, is re-tuned
    mem = prof.get("memory") or {}
    if budgets and prof and ("configs" not in mem or mem.get("partial")):
        stale = list(todo)  # a memory budget is checked against figures this profile does not have (all of)
    # one query a line, as `stedge tune --queries` reads them back
    lines = [q for q in (" ".join(q.splitlines()) for q in queries or ()) if q.strip()]
    tuned_on = ((prof.get("workloads") or {}).get("batch1") or {}).get("sha256")
    if lines and prof and tuned_on != texts_sha256(lines):
        stale = list(todo)  # batch-1 choices made on other queries than the ones timed here
    if not stale:
        log(f"{artifact.name}: this machine's tuning profile covers every variant; not re-tuning")
        return
    cmd = [sys.executable, "-m", "stedge.cli", "tune", str(artifact), "--threads", str(threads), "--json"]
    if suite.tune_budget_s:
        cmd += ["--budget", str(suite.tune_budget_s)]
    if suite.tune_quick:
        cmd.append("--quick")
    log(f"tuning {artifact.name} on this machine ({len(todo)} variants; stale or new: {', '.join(stale)})")
    with tempfile.TemporaryDirectory(prefix="stedge-tune-") as tmp:
        if lines:
            (Path(tmp) / "queries.txt").write_text("".join(q + "\n" for q in lines), encoding="utf-8")
            cmd += ["--queries", str(Path(tmp) / "queries.txt")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work_root(), timeout=TUNE_TIMEOUT_S)
            failed = crash_excerpt(proc.stderr) if proc.returncode != 0 else None
        except subprocess.TimeoutExpired:
            failed = f"timed out after {TUNE_TIMEOUT_S} s"
    if failed:
        log(f"warning: stedge tune {artifact} failed ({failed}); {_tune_left(artifact, todo, prof)}")


def _tune_left(artifact: Path, todo: dict, before: dict) -> str:
    """What a failed tune left for the auto subjects: `stedge tune` writes its timings before it probes memory,
    and the profile again after each probe, so a tune stopped in the memory probes leaves a profile they use, with
    the memory figures it had kept and measured (marked partial; the next tune keeps them)."""
    from stedge_runtime.errors import RuntimeStedgeError
    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import read_profile

    try:
        prof = read_profile(artifact, machine_key()) or {}
    except RuntimeStedgeError:
        prof = {}
    have = prof.get("variants") or {}
    fresh = prof.get("created") != before.get("created")
    if fresh and all(n in have and have[n].get("sha256") == v.get("sha256") for n, v in todo.items()):
        mem = prof.get("memory") or {}
        got = sum(1 for c in mem.get("configs") or [] if "peak_rss_mb" in c)
        if mem.get("partial"):
            left = f"it stopped in its memory probes with {got} configuration figures, which the next tune keeps"
        else:
            left = "memory budgets have no figures"
        return f"its timings were written first, so the auto subjects use them; {left}"
    return "auto subjects fall back to the selection rule"


def prepare_peer(
    model_path: Path,
    backend: str,
    cache_root: Path,
    name: str,
    log: Callable[[str], None],
    python: str | None = None,
    task: str = "embedding",
) -> Path:
    """A folder sentence-transformers loads with ``backend`` without exporting on load (``task`` reranking: its
    ``CrossEncoder`` loads and exports it).

    torch reads the model folder as is; onnx/openvino use sentence-transformers' own export
    (through optimum), saved once under ``<models_dir>/.bench-cache/`` and reused while the
    source weights' hash is unchanged. With ``python`` (the peer interpreter) the export runs there
    (``python -m stedge.bench.peer_export``), into the temporary folder ``atomic_dir`` gives, and the
    cache is kept apart per interpreter and sentence-transformers version.
    """
    if backend == "torch":
        return model_path
    from stedge.io import atomic_dir, sha256_file

    from .peer import export_st_peer, probe

    weights = next(
        (model_path / f for f in ("model.safetensors", "pytorch_model.bin") if (model_path / f).exists()), None
    )
    digest = sha256_file(weights) if weights else "none"
    if python is not None:  # another stack exports another graph: its versions are part of the key
        versions = probe(python, backend).get("versions") or {}
        digest += "\n" + python + "\n" + json.dumps(versions, sort_keys=True)
    out = cache_root / f"{name}-st-{backend}"
    stamp = out / ".bench-source-sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and (out / STPeer.FILES[backend]).exists():
        return out
    log(f"exporting the sentence-transformers {backend} peer of {name}" + (f" in {python}" if python else ""))
    with atomic_dir(out, overwrite=True) as tmp:
        if python is None:
            export_st_peer(model_path, backend, tmp, task)
        else:
            _export_in(python, model_path, backend, tmp, task)
        if not (tmp / STPeer.FILES[backend]).exists():
            raise StedgeError(
                f"sentence-transformers saved no {STPeer.FILES[backend]} for the {backend} peer of {model_path}"
            )
        (tmp / ".bench-source-sha256").write_text(digest)
    return out


def _export_in(python: str, model_path: Path, backend: str, tmp: Path, task: str = "embedding") -> None:
    """``python -m stedge.bench.peer_export`` in the peer interpreter; its failure is a StedgeError with the tail."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    try:
        proc = subprocess.run(
            [python, "-m", "stedge.bench.peer_export", str(model_path), backend, str(tmp)]
            + ([task] if task != "embedding" else []),
            capture_output=True,
            text=True,
            env=env,
            cwd=work_root(),
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        raise StedgeError(f"the sentence-transformers {backend} export of {model_path} in {python} timed out") from None
    if proc.returncode != 0:
        raise StedgeError(
            f"the sentence-transformers {backend} export of {model_path} in {python} failed "
            f"(exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        )


def make_subjects(
    entry: ModelEntry,
    model_path: Path,
    artifact: Path | None,
    peer_paths: dict[str, Path],
    device: str,
    peer_python: str | None = None,
) -> list[Subject]:
    """Subjects of one model entry, reference (stedge torch fp32) first; sentence-transformers peers run in
    ``peer_python`` when given. Each subject is of the entry's task (a reranker's scores (query, passage) pairs)."""
    task = entry.task or "embedding"
    subs: list[Subject] = [StedgeTorch(entry.name, str(model_path), device, p, task) for p in entry.torch]
    if artifact is not None:
        from .machine import int8_isa

        for v in entry.variants:
            v = v.replace("{isa}", int8_isa())
            dev = device
            if v.startswith("tensorrt:"):
                v, dev = v.split(":", 1)[1], "tensorrt"
            subs.append(RuntimeVariant(entry.name, str(artifact), dev, v, task))
        for tier in entry.auto:
            subs.append(RuntimeVariant(entry.name, str(artifact), device, f"auto:{tier}", task))
    for p in entry.peers:
        backend, _, prec = p.partition(":")
        if backend == "fastembed":
            subs.append(FastEmbedPeer(entry.name, str(artifact or model_path), device, task))
            continue
        path = str(peer_paths.get(backend, model_path))
        subs.append(STPeer(entry.name, path, device, backend, prec or "fp32", peer_python, task))
    subs.sort(key=lambda s: not s.is_reference)
    return subs


# --------------------------------------------------------------------------- measuring
def reference_embeddings(model_path: Path, texts: list[Any], threads: int, task: str = "embedding") -> Any:
    """PyTorch fp32 embeddings on the CPU: what every subject's cosine is measured against (a reranker: stedge
    CrossEncoder's scores of the (query, passage) pairs ``texts``, what its score agreement is measured against)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    if task == "reranking":
        from stedge.models import CrossEncoder

        scores = CrossEncoder(str(model_path), device="cpu").predict([(a, b) for a, b in texts], batch_size=32)
        return np.asarray(scores, dtype=np.float32)
    from stedge import SentenceEncoder

    enc = SentenceEncoder(str(model_path), device="cpu")
    return np.asarray(enc.encode(texts, batch_size=32, show_progress_bar=False), dtype=np.float32)


def measure_gemm(threads: int, device: str, env: dict[str, str]) -> dict[str, Any]:
    """GEMM peak in a clean process with the workers' thread environment."""
    dev = "cuda" if device.startswith(("cuda", "tensorrt")) else "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "stedge.bench.gemm", str(threads), dev],
        capture_output=True,
        text=True,
        env=env,
        cwd=work_root(),
        timeout=300,
    )
    if proc.returncode != 0:
        raise StedgeError(f"the GEMM peak measurement failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gemm_shares(rows: list[dict[str, Any]], first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The run's GEMM peaks and memory read bandwidth, the higher of the measurements before the first subject and
    after the last (gemm.best_peaks); each row's ``gemm_share``: its GFLOP/s at the headline batch size over the peak
    of its precision (gemm.peak_for), and ``weights_read_ms``: its batch-1 weights (``weights_mb``) read once at that
    bandwidth."""
    from . import gemm as gemm_mod

    gemm = gemm_mod.best_peaks([first, last])
    bandwidth = gemm.get("memory_read_gbs")
    for r in rows:
        if r.get("status") == "ok":
            peak = gemm_mod.peak_for(gemm, r.get("precision"))
            r["gemm_share"] = r["gflops"] / peak if peak else None
            mb = r.get("weights_mb")
            r["weights_read_ms"] = mb / bandwidth if mb and bandwidth else None  # MB / (GB/s) = ms
    return gemm


def run_worker(
    subject: Subject,
    job: dict[str, Any],
    work: Path,
    env: dict[str, str],
    timeout: float,
    on_stage: Callable[[str], None],
) -> dict[str, Any]:
    """Start the worker, time its cold start from process start to the first vector, collect result.json."""
    job_file = work / "job.json"
    job_file.write_text(json.dumps({**job, "subject": subject.spec(), "work_dir": str(work)}), encoding="utf-8")
    err = open(work / "stderr.log", "w", encoding="utf-8")
    t0 = time.perf_counter()
    exe = subject.python or sys.executable  # a peer interpreter (--peer-python) gets the same environment
    proc = subprocess.Popen(
        [exe, "-m", "stedge.bench.worker", str(job_file)],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=env,
        cwd=work_root(),
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    cold = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("FIRST_VECTOR") and cold is None:
                cold = time.perf_counter() - t0
                on_stage("measuring")
            elif line.startswith("STAGE "):
                on_stage(line[6:].strip())
        proc.wait()
    finally:
        timer.cancel()
        err.close()
    res_file = work / "result.json"
    if killed.is_set():
        return {"status": "error", "error": f"timed out after {timeout:.0f} s (suite timeout_s)"}
    if not res_file.exists():
        tail = (work / "stderr.log").read_text(encoding="utf-8", errors="replace")[-1500:]
        return {"status": "error", "error": f"worker exited with code {proc.returncode} and no result: {tail.strip()}"}
    res = json.loads(res_file.read_text(encoding="utf-8"))
    res["cold_start_s"] = cold
    return res


def _accuracy(emb: Any, ref: Any, data: BenchData, task: str = "embedding") -> dict[str, Any]:
    """STS Spearman x100 and the agreement with the reference (``ref``; None: none): cosine of each STS text's
    embedding; for a reranker, the Spearman of its scores of the STS pairs, and score agreement with the reference
    scores under the same keys, as export's verification records it, with ``agreement: "score"`` and the max
    abs difference of the scores."""
    import numpy as np

    from stedge.data import pairwise_cosine, spearman

    emb = np.asarray(emb, dtype=np.float64)
    if task == "reranking":
        from stedge_runtime.similarity import agreement

        col = emb[:, -1] if emb.ndim == 2 else emb  # several labels: the last, as export's verification takes it
        out = {"spearman": round(100 * spearman(col, data.sts_scores), 3), "pairs": len(data.sts_scores)}
        out["agreement"] = "score"
        if ref is not None:
            a = agreement("reranking", emb, ref)
            diff = float(np.abs(emb - np.asarray(ref, dtype=np.float64)).max())
            out.update(mean_cosine=float(a.mean()), min_cosine=float(a.min()), max_abs_diff=diff)
        return out
    cos = pairwise_cosine(emb[data.sts_i1], emb[data.sts_i2])
    out: dict[str, Any] = {"spearman": round(100 * spearman(cos, data.sts_scores), 3), "pairs": len(data.sts_scores)}
    if ref is not None:
        c = pairwise_cosine(emb, ref)
        out.update(mean_cosine=float(c.mean()), min_cosine=float(c.min()))
    return out


def _summarize_throughput(raw: dict[str, Any], work_of: dict[str, tuple[int, int, float]]) -> dict[str, Any]:
    """Median / min / max rates per batch size; ``work_of[bs]`` = (texts, tokens, FLOPs) of one pass."""
    import numpy as np

    out = {}
    for bs, r in raw.items():
        n_texts, n_tokens, flops = work_of[bs]
        secs = np.asarray(r["seconds"], dtype=np.float64)
        rates = n_texts / secs
        med = float(np.median(secs))
        out[bs] = {
            "sentences_per_s": float(n_texts / med),
            "sentences_per_s_min": float(rates.min()),
            "sentences_per_s_max": float(rates.max()),
            "spread_pct": float(100 * (rates.max() - rates.min()) / (n_texts / med)),
            "tokens_per_s": float(n_tokens / med),
            "gflops": float(flops / med / 1e9),
            "seconds": [float(s) for s in secs],
            "texts": n_texts,
        }
    return out


def run_suite(
    suite: Suite,
    out_dir: Path | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    peer_python: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run every subject of the suite and return the results dict (see report.RESULTS_SCHEMA).

    ``out_dir`` receives results.json, results.md and the PNG plots (report.write_all). ``peer_python``
    (else ``$STEDGE_BENCH_PEER_PYTHON``, else the suite's ``peer_python``) runs the sentence-transformers
    peers in that interpreter (stedge.bench.peer).
    """
    import copy

    from .machine import cuda_available, load_average
    from .peer import resolve_peer_python

    suite = copy.copy(suite)
    suite.peer_python = resolve_peer_python(peer_python, suite.peer_python)

    log = log or (lambda msg: print(msg, file=sys.stderr))
    n_threads = resolve_threads(suite.threads if threads is None else threads)
    dev_family = suite.device.split(":", 1)[0].lower()
    if dev_family in ("cuda", "tensorrt") and not cuda_available():
        raise StedgeError(
            f"suite {suite.name} runs on {suite.device!r} but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False); run it on a GPU machine or pick the cpu suite"
        )
    started = datetime.now(timezone.utc)
    load_before = load_average()
    env = thread_env(n_threads)
    data = load_data(suite)
    plans, skipped_models = _prepare_models(suite, data, env, n_threads, log)
    log(f"measuring the GEMM peak ({n_threads} threads; again after the last subject)")
    gemm = measure_gemm(n_threads, suite.device, env)
    rows: list[dict[str, Any]] = []
    tmp_root = Path(tempfile.mkdtemp(prefix="stedge-bench-"))
    try:
        job_common = _job_common(suite, data, tmp_root, n_threads)
        order = [(k, j) for k, plan in enumerate(plans) for j in range(len(plan[3]))]
        with _progress(progress) as bar:
            total = [len(order) * suite.rounds]
            task = bar.add_task("benchmark", total=total[0]) if bar else None

            def measure(r: int, kj: tuple[int, int]) -> dict[str, Any]:
                k, j = kj
                sub = plans[k][3][j]
                plans[k] = plan = _maybe_reference(plans[k], sub, data, n_threads, log)
                work = tmp_root / f"{k:02d}-{j:02d}-r{r}"
                row, emb = _measure(sub, plan, suite, data, job_common, env, work, bar, task, log)
                if emb is not None and plan[4] is None and sub.is_reference and sub.device == "cpu":
                    plans[k] = (*plan[:4], emb, *plan[5:])  # stedge torch fp32 on the CPU *is* the reference
                if bar:
                    bar.advance(task)
                return row

            def more(n: int) -> None:
                log(f"{n} subject(s) whose two best rounds differ by more than {ROUNDS_AGREE:.0%} run again")
                total[0] += n
                if bar:
                    bar.update(task, total=total[0])

            done = measure_rounds(order, suite.rounds, suite.max_rounds, suite.headline_batch_size, measure, more)
            rows = [best_round(done[kj], suite.headline_batch_size) for kj in order]
            if suite.interleave_cycles > 0:
                _interleave(rows, [plans[k][3][j] for k, j in order], suite, job_common, env, tmp_root, bar, log)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    gemm = _gemm_shares(rows, gemm, measure_gemm(n_threads, suite.device, env))
    _add_relative(rows, suite.models, suite.headline_batch_size)
    results = _results(suite, plans, rows, skipped_models, gemm, env, n_threads, data, started, load_before)
    if out_dir is not None:
        from .report import write_all

        write_all(results, Path(out_dir))
    return results


def _interleave(
    rows: list[dict[str, Any]],
    subs: list[Subject],
    suite: Suite,
    job_common: dict[str, Any],
    env: dict[str, str],
    tmp_root: Path,
    bar,
    log: Callable[[str], None],
) -> None:
    """The interleaved phase (interleave.py) over every subject measured ok; each row gets ``interleaved``:
    ``cycles`` and per batch size the rates over the cycles (``throughput``; ``passages`` at the passage
    batch sizes when the suite measures passages), or the ``error``."""
    from .interleave import run_interleaved, summarize

    todo = [(i, sub) for i, (row, sub) in enumerate(zip(rows, subs)) if row.get("status") == "ok"]
    if not todo:
        return
    sizes = [str(b) for b in suite.interleave_batch_sizes or [suite.headline_batch_size]]
    psizes = [str(b) for b in job_common.get("passage_batch_sizes") or []]  # set when passages are measured
    log(
        f"interleaved phase: {len(todo)} subjects loaded at once, {suite.interleave_cycles} cycles of one pass "
        f"each at batch size {', '.join(sizes)}" + (f", then passages at {', '.join(psizes)}" if psizes else "")
    )
    task = bar.add_task("interleaved cycles", total=suite.interleave_cycles) if bar else None
    job = {**job_common, "serve_batch_sizes": sizes + [f"p{b}" for b in psizes]}
    got = run_interleaved(
        todo,
        job,
        tmp_root / "interleaved",
        env,
        suite.interleave_cycles,
        suite.timeout_s,
        on_cycle=(lambda c: bar.update(task, completed=c)) if bar else None,
    )
    for i, res in got.items():
        if "error" in res:
            log(f"interleaved phase: {rows[i]['id']}: {res['error']}")
            rows[i]["interleaved"] = {"error": res["error"]}
            continue
        thr, pthr = rows[i]["throughput"], rows[i].get("passages") or {}
        secs = res["seconds"]
        rows[i]["interleaved"] = {
            "cycles": suite.interleave_cycles,
            "throughput": {b: summarize(secs[b], thr[b]["texts"]) for b in sizes},
        }
        if psizes and all(b in pthr for b in psizes):
            rows[i]["interleaved"]["passages"] = {b: summarize(secs[f"p{b}"], pthr[b]["texts"]) for b in psizes}


def _prepare_models(
    suite: Suite, data: BenchData, env: dict[str, str], n_threads: int, log: Callable[[str], None]
) -> tuple[list[tuple], list[dict[str, str]]]:
    """Resolve every model entry and plan it (artifact, peers, subjects, FLOPs); optional ones may be skipped."""
    from stedge.hub import resolve_model

    cache_root = work_root() / suite.models_dir / ".bench-cache"
    plans, skipped = [], []
    for entry in suite.models:
        try:
            in_project = work_root() / entry.ref
            model_path = resolve_model(entry.ref if Path(entry.ref).is_dir() or not in_project.is_dir() else in_project)
        except StedgeError as e:
            if not entry.optional:
                raise
            skipped.append({"name": entry.name, "ref": entry.ref, "reason": str(e).splitlines()[0]})
            log(f"skipped optional model {entry.name}: {str(e).splitlines()[0]}")
            continue
        plans.append(_plan_model(entry, model_path, suite, data, env, n_threads, cache_root, log))
    return plans, skipped


def _job_common(suite: Suite, data: BenchData, tmp_root: Path, n_threads: int) -> dict[str, Any]:
    """The settings and text files every worker of the run reads; a reranker's pairs under ``by_task`` (the worker
    reads those for a subject of task reranking: worker.task_job)."""
    job: dict[str, Any] = {
        "threads": n_threads,
        "batch_sizes": suite.batch_sizes,
        "repetitions": suite.repetitions,
        "warmup": suite.warmup,
        "latency_rounds": suite.latency_rounds,
        "idle_gap_ms": suite.idle_gap_ms,
        "num_texts_batch1": suite.num_texts_batch1,
    }
    job.update(_input_files(data, "embedding", tmp_root))
    if data.passages:
        job["passage_batch_sizes"] = suite.passage_batch_sizes or [suite.headline_batch_size]
    if data.pairs:
        rerank = {**_input_files(data, "reranking", tmp_root), "first_text": ["hello world", "hello there"]}
        job["by_task"] = {"reranking": rerank}
    return job


def _input_files(data: BenchData, task: str, tmp_root: Path) -> dict[str, str]:
    """A task's inputs (BenchData.inputs) written as JSON files into ``tmp_root``: the job keys naming them."""
    out = {}
    for key, payload in zip(("texts", "queries", "accuracy_texts", "passages"), data.inputs(task)):
        if key == "passages" and not payload:
            continue
        file = tmp_root / (f"{key}.json" if task == "embedding" else f"{task}-{key}.json")
        file.write_text(json.dumps(payload), encoding="utf-8")
        out[key] = str(file)
    return out


# A subject's two best headline rounds within this share of each other agree; else it runs again (max_rounds).
ROUNDS_AGREE = 0.10


def headline_rate(row: dict[str, Any], headline: int) -> float:
    """A measured row's sentences/s at the headline batch size (0 when it has none)."""
    return float((row.get("throughput") or {}).get(str(headline), {}).get("sentences_per_s") or 0.0)


def rounds_agree(rates: Sequence[float], within: float = ROUNDS_AGREE) -> bool:
    """Whether the two best of a subject's round rates lie within ``within`` of each other (True with fewer
    than two: nothing to compare). Load from elsewhere only slows a pass down, so two rounds near the top
    say the best one is the machine's speed and not a lucky or unlucky minute."""
    top = sorted(rates, reverse=True)[:2]
    return len(top) < 2 or top[1] >= (1.0 - within) * top[0]


def measure_rounds(
    order: Sequence[Any],
    rounds: int,
    max_rounds: int,
    headline: int,
    measure: Callable[[int, Any], dict[str, Any]],
    more: Callable[[int], None] | None = None,
) -> dict[Any, list[dict[str, Any]]]:
    """Every subject of ``order`` measured ``rounds`` times in alternating order (``measure(round, subject)``
    returns its row), then once more per extra round, up to ``max_rounds``, for the subjects whose two best
    rounds still disagree (rounds_agree); ``more(n)`` hears how many run again. Failed rows do not count."""
    from stedge_runtime.tune import alternating_rounds

    done: dict[Any, list[dict[str, Any]]] = {}
    for r, key in alternating_rounds(order, rounds):
        done.setdefault(key, []).append(measure(r, key))
    for r in range(rounds, max_rounds):
        again = [
            key
            for key in order
            if not rounds_agree([headline_rate(x, headline) for x in done[key] if x.get("status") == "ok"])
        ]
        if not again:
            break
        if more:
            more(len(again))
        for key in again if r % 2 == 0 else again[::-1]:
            done[key].append(measure(r, key))
    return done


def best_round(rows: list[dict[str, Any]], headline: int) -> dict[str, Any]:
    """One row from a subject's rounds: the round with the highest headline throughput gives the
    throughput figures (load from elsewhere only ever slows a pass down), the round with the lowest
    p50 the latency (and likewise the latency after idle and the tokenizing), the lowest cold start and the
    highest peak RSS;
    ``rounds`` says how many ran and ``rounds_agree`` whether the two best agree (rounds_agree)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return rows[0]
    best = dict(max(ok, key=lambda r: headline_rate(r, headline)))
    for key in ("latency_ms", "latency_after_idle_ms", "tokenize_ms"):
        fast = min(ok, key=lambda r: (r.get(key) or {}).get("p50", float("inf")))
        if fast.get(key) is not None:
            best[key] = fast[key]
    colds = [r["cold_start_s"] for r in ok if isinstance(r.get("cold_start_s"), (int, float))]
    best["cold_start_s"] = min(colds) if colds else None
    for key in ("peak_rss_mb", "rss_after_first_vector_mb"):
        vals = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        if vals:
            best[key] = max(vals)
    rates = [headline_rate(r, headline) for r in ok]
    best["rounds"] = len(ok)
    best["rounds_headline_sentences_per_s"] = [round(x, 1) for x in rates]
    best["rounds_agree"] = rounds_agree(rates)
    return best


def _maybe_reference(plan: tuple, sub: Subject, data: BenchData, n_threads: int, log: Callable[[str], None]) -> tuple:
    """The plan with its PyTorch fp32 reference computed in the parent when no CPU reference subject gives it."""
    entry, model_path, *_ = plan
    if plan[4] is not None or (sub.is_reference and sub.device == "cpu"):
        return plan
    task = entry.task or "embedding"
    items = data.inputs(task)[2]
    log(f"{entry.name}: computing the PyTorch fp32 reference on {len(items)} STS {_items(task)}")
    return (*plan[:4], reference_embeddings(model_path, items, n_threads, task), *plan[5:])


def _items(task: str) -> str:
    """What a model of ``task`` is given: texts, or (query, passage) pairs."""
    return "pairs" if task == "reranking" else "texts"


def _measure(
    sub: Subject,
    plan: tuple,
    suite: Suite,
    data: BenchData,
    job_common: dict,
    env: dict[str, str],
    work: Path,
    bar,
    task,
    log: Callable[[str], None],
) -> tuple[dict, Any]:
    """One subject's row (and its embeddings when it ran), measured in its own worker process."""
    import numpy as np

    from . import gemm as gemm_mod

    entry, _model_path, _artifact, _subs, ref, dims, counts, pcounts = plan
    row: dict[str, Any] = {
        "id": sub.id,
        "model": entry.name,
        "label": sub.label,
        "kind": sub.kind,
        "device": sub.device,
        "peer": sub.is_peer,
        "reference": sub.is_reference,
        "task": sub.task,  # reranking: the figures count (query, passage) pairs where they say sentences
        **sub.facts(),
    }
    why = sub.unavailable()
    if why is None:
        try:
            row["size_mb"] = sub.size_bytes() / 2**20
        except OSError as e:
            why = f"cannot read its files ({e})"
    if why is not None:
        log(f"skipped {sub.id}: {why}")
        return {**row, "status": "skipped", "reason": why}, None

    def on_stage(stage: str) -> None:
        if bar:
            bar.update(task, description=f"{sub.label} [{sub.model}]: {stage}")

    on_stage("loading")
    work.mkdir()
    res = run_worker(sub, job_common, work, env, suite.timeout_s, on_stage)
    if res.get("status") != "ok":
        log(f"error in {sub.id}: {res.get('error')}")
        return {**row, "status": "error", "reason": res.get("error")}, None
    emb = np.load(work / "embeddings.npy")
    n1 = min(suite.num_texts_batch1 or len(counts), len(counts))
    per_bs = {str(b): (n1 if b == 1 else len(counts)) for b in suite.batch_sizes}
    work_of = {bs: (n, sum(counts[:n]), gemm_mod.total_flops(counts[:n], dims)) for bs, n in per_bs.items()}
    thr = _summarize_throughput(res.pop("throughput_raw"), work_of)
    praw = res.pop("passage_throughput_raw", None)
    if praw:
        pwork = (len(pcounts), sum(pcounts), gemm_mod.total_flops(pcounts, dims))
        row["passages"] = _summarize_throughput(praw, {b: pwork for b in praw})
    row.update(status="ok", **{key: val for key, val in res.items() if key != "status"})
    row["throughput"] = thr
    row["accuracy"] = _accuracy(emb, ref if ref is not None else emb, data, sub.task)
    head = thr[str(suite.headline_batch_size)]
    row["headline_sentences_per_s"] = head["sentences_per_s"]
    row["gflops"] = head["gflops"]
    row["weights_mb"] = gemm_mod.weights_mb(dims, row.get("batch1_precision") or row.get("precision"))
    if str(suite.headline_batch_size) in row.get("passages", {}):
        row["headline_passages_per_s"] = row["passages"][str(suite.headline_batch_size)]["sentences_per_s"]
    return row, emb


def _results(
    suite: Suite,
    plans: list[tuple],
    rows: list[dict],
    skipped_models: list[dict],
    gemm: dict,
    env: dict[str, str],
    n_threads: int,
    data: BenchData,
    started: datetime,
    load_before: Any,
) -> dict:
    """The results dict of a run (report.RESULTS_SCHEMA)."""
    from .machine import cuda_available, load_average, machine_facts

    dev_family = suite.device.split(":", 1)[0].lower()
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": {k: v for k, v in suite.__dict__.items() if k != "models"}
        | {"models": [m.__dict__ for m in suite.models]},
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(with_gpu=dev_family != "cpu" or cuda_available()),
        "load_average": {"before": load_before, "after": load_average()},
        "threads": {
            "budget": n_threads,
            "torch": "torch.set_num_threads",
            "onnxruntime": "intra_op_num_threads",
            "openvino": "INFERENCE_NUM_THREADS",
            "env": {k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")},
        },
        "gemm_peak": gemm,
        "flops_formula": "L * (2*n*(4*h^2 + 2*h*i) + 4*n^2*h) per text of n tokens (stedge/bench/gemm.py)",
        "data": data.sources,
        "models": [
            {
                "name": e.name,
                "ref": e.ref,
                "task": e.task or "embedding",
                "path": str(mp),
                "artifact": str(a) if a else None,
                **dims,
                "tokens": int(sum(c)),
                "mean_tokens_per_text": float(sum(c) / len(c)),
                "mean_tokens_per_passage": float(sum(_p) / len(_p)) if _p else None,
                "padding": _padding(suite, data.inputs(e.task or "embedding"), c, _p),
                "reference_spearman": _accuracy(r, None, data, e.task or "embedding")["spearman"]
                if r is not None
                else None,
            }
            for e, mp, a, _s, r, dims, c, _p in plans
        ],
        "skipped_models": skipped_models,
        "rows": rows,
    }


def _padding(suite: Suite, inputs: tuple, counts: list[int], pcounts: list[int]) -> dict[str, Any]:
    """The share of real tokens the engine runs at the headline batch size, for the texts and the passages (or the
    passages' largest batch size when they were not timed at it), per way of ordering a call's items
    (gemm.real_token_share): what padding costs each kind of subject."""
    from . import gemm as gemm_mod

    texts, passages = inputs[0], inputs[3]
    bs = suite.headline_batch_size
    out: dict[str, Any] = {"texts": {"batch_size": bs, **gemm_mod.real_token_share(counts, texts, bs)}}
    if pcounts:  # the passages' batch size of the table's passages/s column where they were timed at it
        sizes = suite.passage_batch_sizes or [bs]
        pbs = bs if bs in sizes else max(sizes)
        out["passages"] = {"batch_size": pbs, **gemm_mod.real_token_share(pcounts, passages, pbs)}
    return out


def _plan_model(
    entry: ModelEntry,
    model_path: Path,
    suite: Suite,
    data: BenchData,
    env: dict[str, str],
    n_threads: int,
    cache_root: Path,
    log: Callable[[str], None],
) -> tuple:
    """Artifact (built and tuned here), peers, subjects, reference, dims and token counts of one model entry (the
    entry returned with its task; a reranker's inputs are added to ``data``, add_pairs)."""
    from . import gemm as gemm_mod

    entry = with_task(entry, model_path, suite.file)
    task = entry.task or "embedding"
    if task == "reranking":
        add_pairs(data, suite)
    artifact = ensure_artifact(entry, model_path, suite, data, log)
    if artifact is not None and entry.auto and suite.tune and suite.device.split(":", 1)[0] == "cpu":
        budgets = any("@" in a for a in entry.auto)
        # a reranker's batch-1 calls are timed on short pairs: the tune pairs their first sentences with short texts
        queries = [a for a, _ in data.query_pairs] if task == "reranking" else data.queries
        ensure_profile(artifact, suite, n_threads, env, log, budgets=budgets, queries=queries or None)
    peers = {}
    for p in entry.peers:
        backend = p.partition(":")[0]
        if backend == "fastembed":
            continue
        probe = STPeer(entry.name, str(model_path), suite.device, backend, python=suite.peer_python)
        if probe.unavailable() is None:
            peers[backend] = prepare_peer(model_path, backend, cache_root, entry.name, log, suite.peer_python, task)
    subs = make_subjects(entry, model_path, artifact, peers, suite.device, suite.peer_python)
    texts, _, acc_items, passages = data.inputs(task)
    ref = None
    if not (subs and subs[0].is_reference and subs[0].device == "cpu" and subs[0].unavailable() is None):
        log(f"{entry.name}: computing the PyTorch fp32 reference on {len(acc_items)} STS {_items(task)}")
        ref = reference_embeddings(model_path, acc_items, n_threads, task)
    dims = gemm_mod.model_dims(model_path)
    # a reranker's pairs are counted as its artifact truncates them (a cross-encoder folder names no max_seq_length)
    counted = artifact if task == "reranking" and artifact is not None and artifact.is_dir() else model_path
    counts = token_counts(counted, texts)
    pcounts = token_counts(counted, passages) if passages else []
    return entry, model_path, artifact, subs, ref, dims, counts, pcounts


def with_task(entry: ModelEntry, model_path: Path, where: str) -> ModelEntry:
    """``entry`` with its task: what the model at ``model_path`` is (an artifact's manifest says it, else
    stedge.hub.detect_task; a LoRA adapter folder is measured as the sentence encoder it merges into, as before),
    checked against the entry's own ``task`` when the suite sets one (a StedgeError naming the field)."""
    import dataclasses

    from stedge_runtime.artifact import Manifest, is_artifact

    from stedge.hub import detect_task

    artifact = is_artifact(model_path)
    found = Manifest.read(model_path).task if artifact else detect_task(model_path)
    found = "embedding" if found == "adapter" else found
    if entry.task is not None and entry.task != found:
        how = {
            "reranking": "a *ForSequenceClassification model without modules.json",
            "embedding": "a sentence-transformers model (modules.json) or a plain encoder",
        }[found]
        how = "its stedge.json says so" if artifact else how
        raise StedgeError(
            f"{where}: models '{entry.name}': task = {entry.task!r}, but {model_path} is a {found} model ({how}); "
            "fix 'task' or 'ref' (or leave 'task' out: the harness detects it)"
        )
    return dataclasses.replace(entry, task=found)


def _progress(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from stedge.progress import make_progress

    return make_progress()


def _add_relative(rows: list[dict[str, Any]], models: list[ModelEntry], headline: int | None = None) -> None:
    """Speedup vs stedge torch fp32, vs the best sentence-transformers peer and vs fastembed at every batch
    size (same model, same device); Spearman deltas; with ``headline`` (the suite's headline batch size),
    the interleaved phase's ratios too."""
    ok = [r for r in rows if r.get("status") == "ok"]
    by_model: dict[str, list[dict]] = {}
    for r in ok:
        by_model.setdefault(r["model"], []).append(r)
    baseline_of = {m.name: m.baseline_model for m in models}
    for model, rs in by_model.items():
        ref = next((r for r in rs if r["reference"] and r["device"] == rs[0]["device"]), None)
        ref = ref or next((r for r in rs if r["reference"]), None)
        base = baseline_of.get(model)
        peers = _peers(rs) or _peers(by_model.get(base, []) if base else [])  # a student is compared with its teacher's
        best_peer = max(peers, key=lambda r: r["headline_sentences_per_s"], default=None)
        fastembed = next((r for r in rs if r.get("kind") == "fastembed"), None)
        for r in rs:
            v = r["headline_sentences_per_s"]
            r["speedup_vs_torch"] = v / ref["headline_sentences_per_s"] if ref else None
            r["speedup_vs_best_peer"] = v / best_peer["headline_sentences_per_s"] if best_peer else None
            r["best_peer"] = _peer_label(best_peer, model) if best_peer else None
            if fastembed is not None and r is not fastembed:
                r["speedup_vs_fastembed"] = {
                    bs: t["sentences_per_s"] / fastembed["throughput"][bs]["sentences_per_s"]
                    for bs, t in r["throughput"].items()
                    if bs in fastembed["throughput"]
                }
            if ref is not None:
                r["accuracy"]["spearman_delta"] = r["accuracy"]["spearman"] - ref["accuracy"]["spearman"]
            if base:
                twin = next((b for b in by_model.get(base, []) if _twin_key(b) == _twin_key(r)), None)
                r["speedup_vs_baseline_model"] = v / twin["headline_sentences_per_s"] if twin else None
                r["baseline_model"] = base
        if headline is not None:
            _add_interleaved_relative(rs, peers, fastembed, model, str(headline))


def _add_interleaved_relative(
    rs: list[dict[str, Any]], peers: list[dict[str, Any]], fastembed: dict[str, Any] | None, model: str, head: str
) -> None:
    """The interleaved phase's ratios, medians of per-cycle ratios (stedge_runtime.tune.paired_speedup): to the best
    peer at the headline batch size (the peer with the highest interleaved median there), the same on
    passages at the headline batch size (``passage_speedup_vs_best_peer``: the best peer on passages), and to
    fastembed at every interleaved batch size; each with its ``_ci``, the 95 % confidence interval of that
    median (``[low, high]``, interleave.ratio_interval; None below 6 cycles)."""
    from stedge_runtime.tune import paired_speedup

    from .interleave import ratio_interval

    def secs(r: dict[str, Any] | None, bs: str, what: str = "throughput") -> list[float]:
        return (((r or {}).get("interleaved") or {}).get(what) or {}).get(bs, {}).get("seconds") or []

    def best_of(what: str) -> dict[str, Any] | None:
        ok = [p for p in peers if secs(p, head, what)]
        return max(ok, key=lambda p: p["interleaved"][what][head]["sentences_per_s"], default=None)

    best, pbest = best_of("throughput"), best_of("passages")
    for r in rs:
        inter = r.get("interleaved") or {}
        if "throughput" not in inter:
            continue
        if best is not None and secs(r, head):
            inter["speedup_vs_best_peer"] = paired_speedup(secs(r, head), secs(best, head))
            inter["speedup_vs_best_peer_ci"] = ratio_interval(secs(r, head), secs(best, head))
            inter["best_peer"] = _peer_label(best, model)
        if pbest is not None and secs(r, head, "passages"):
            mine, theirs = secs(r, head, "passages"), secs(pbest, head, "passages")
            inter["passage_speedup_vs_best_peer"] = paired_speedup(mine, theirs)
            inter["passage_speedup_vs_best_peer_ci"] = ratio_interval(mine, theirs)
            inter["passage_best_peer"] = _peer_label(pbest, model)
        if fastembed is not None and r is not fastembed:
            sizes = [bs for bs in inter["throughput"] if secs(fastembed, bs)]
            inter["speedup_vs_fastembed"] = {bs: paired_speedup(secs(r, bs), secs(fastembed, bs)) for bs in sizes}
            inter["speedup_vs_fastembed_ci"] = {bs: ratio_interval(secs(r, bs), secs(fastembed, bs)) for bs in sizes}


def _peer_label(peer: dict[str, Any], model: str) -> str:
    """A peer row's label as the rows of ``model`` name it (with its own model when that is another)."""
    return peer["label"] + ("" if peer["model"] == model else f" [{peer['model']}]")


def _peers(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """sentence-transformers peers of a model's rows (any peer when there is none of those)."""
    return [r for r in rs if r["peer"] and r.get("kind") == "st"] or [r for r in rs if r["peer"]]


def _twin_key(r: dict[str, Any]) -> tuple:
    """What a subject is across models: the auto tier for auto subjects (their variant may differ), else the label."""
    return (r.get("auto_tier") or r["label"], r["device"])
