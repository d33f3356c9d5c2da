"""Measure every verified variant of an artifact on this machine and write its tuning profile.

``tune(path)`` loads each variant the installed engines can run on the CPU, with each engine setting
worth trying (threads; ONNX Runtime intra-op spinning on/off; OpenVINO PERFORMANCE_HINT LATENCY /
THROUGHPUT and streams), and times batch-1 calls on short texts and bulk batches on short and
passage-length texts; then, on the fastest variant, how many padded tokens one engine call should
take (``max_batch_tokens``: small batches stay in the CPU's caches). It also checks, on this machine,
that a text's vector alone matches its vector inside a mixed batch, and how far the variants' vectors
agree with each other (for routing batch-1 calls). Last comes the **paired final**: the variants within
``PAIRED_WITHIN`` of the best of some tier in those rounds, each with the settings the rounds gave it, its
engine's default settings and its best other settings (so a setting that won or lost by the rounds' noise is
judged again), are loaded side by side and timed in turn, pass
after pass, for ``PAIRED_CYCLES`` cycles; a contender's speed is the median of its per-cycle ratios to one
reference (a slow spell of the machine falls on every contender's pass alike, so it cannot pick the
winner, as it can between rounds measured seconds apart). ``write_profile`` stores the result as
``tuning/<machine key>.json`` (stedge_runtime.profile), which ``Encoder.load`` reads (stedge_runtime.select).
``tier_memory`` then measures each tier's choice in a fresh process for its peak RSS, and ``config_memory``
each configuration a memory budget may fall back to (``memory_configs``).
``tune_artifact`` runs it all and writes the profile: the `stedge tune` and `stedge-runtime tune` commands
(stedge_runtime.cli) wrap it with a table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import machine
from .artifact import MANIFEST, Manifest, has_manifest, known_device_family
from .engines import installed_backends
from .errors import ArtifactError, InputError, RuntimeStedgeError
from .profile import PROFILE_FORMAT, read_profile, write_profile
from .samples import SHORT, passages, varied
from .select import (
    LEAN_STATIC_BATCH1,
    STATIC_BATCH1,
    STATIC_PAD_GAIN,
    STATIC_PADS,
    TIERS,
    batch1_destination,
    budget_only,
    bulk_score,
    default_batch_tokens,
    fits,
    geomean,
    memory_config_key,
    paired_scores,
    plain_runs,
    plain_settings,
    runs_for_tier,
    select_variant,
    settings_key,
    settled_batch_tokens,
    settled_run,
    static_twin_of,
    twin_bulk_score,
    variant_tier,
)
from .similarity import agreement

Progress = Callable[[str, int, int], None]  # (what, done, total)
ROUNDS = 2  # every case is measured this many times, in alternating order; the best round counts
# Token budgets per engine call tried on the fastest variant (Encoder.load's max_batch_tokens).
BATCH_TOKEN_GRID = (512, 1024, 2048, 4096, 16384)
PAIRED_CYCLES = 7  # cycles of the paired final (tune's ``paired_cycles``; 0 skips it)
PAIRED_CI_LEVEL = 0.95  # confidence of the intervals the paired final gives its medians (``median_interval``)
PAIRED_WITHIN = 0.85  # rounds' bulk score, as a share of its tier's best, that takes a variant to the final
PAIRED_GAP_S = 0.1  # idle before each pass of the final: the previous engine's spinning threads fall asleep
SNIPPETS_ABOVE = 64  # tokens per row up to which OpenVINO's snippets_above setting runs without the snippets
# OpenVINO's per-shape caches for a memory budget (engine option shape_cache): 50 shapes (oneDNN 64 primitives).
# bf16 MiniLM, LATENCY, on the AMX guest: 285 MB in the tune's probe against 332 MB with the default 200, 328
# against 391 MB after 2,000 more varied texts, and about 11 % slower on 2,048 STS-B texts at batch 32
# (runtimes/python/README.md). Timed and measured for budgets only.
LEAN_SHAPES = 50
PAIRED_PASSAGES = 8  # passages per passage pass of the final (the short and batch-1 passes take the rounds' texts)
MEMORY_TIMEOUT_S = 300.0  # per child process of tier_memory
# Texts of many lengths (1-240 words) the memory probe runs after the tune's workloads, in two halves that each
# cover every length: at batch 32, a half of them at batch 8 and a quarter one at a time, twice (so the static
# batch-1 compilations are made). OpenVINO's RSS grows with the input shapes it has run (its runtime cache: bf16
# MiniLM on the AMX guest, about 0.7 MB per new one-row length), and the second half shows whether it has leveled
# off. With 192 texts in one pass (before), one-compilation configurations there grew another 2-7 % over 4,000
# more varied texts, and the near tier's choice (several compilations) 53 %; with 768, LATENCY added 6 MB in its
# second half and ended within 2 MB of where 4,000 more texts took it (runtimes/python/README.md#memory).
MEMORY_VARIED = 768
# The memory probe's method (its workloads and what it reads): raise it when they change, so that a re-tune measures
# again instead of keeping figures an older probe measured (``memory_basis``, ``reusable_memory``).
MEMORY_PROBE = 1


def settings_grid(backend: str, threads: int | None = None, quick: bool = False) -> list[dict[str, Any]]:
    """Engine settings tried for one backend, the engine's default first.

    ONNX Runtime: spinning on / off at ``threads`` (by default all physical cores, or what a container's CPU quota
    allows: ``machine.usable_cores``); OpenVINO:
    PERFORMANCE_HINT LATENCY / THROUGHPUT (the runtime then runs bulk batches on parallel infer
    requests), and without ``quick`` both hints without the fused "snippets" kernels on batches of at most
    SNIPPETS_ABOVE tokens (``snippets_above``) and the LATENCY settings with static-shape compilations for
    batch-1 calls (``static_batch1``: STATIC_BATCH1 lengths), and two that only a memory budget may choose
    (``select.budget_only``): LATENCY with smaller per-shape caches (``shape_cache``), and LATENCY with
    LEAN_STATIC_BATCH1 static compilations. Without ``quick`` and with >= 4 cores, half the cores and
    two explicit streams are tried too; unless ``threads`` is given, on a CPU with fast and slow cores
    (``machine.performance_cores``) the fast cores alone, and under a CPU quota that allows fewer threads than
    the cores, the cores too (each the engine's default setting on that many threads: a short one-row call can
    finish on more threads before the quota bites, where bulk work only waits for it).
    """
    cores = machine.usable_cores()
    t = int(threads) if threads else cores
    extra: list[int] = []  # other thread counts
    if not quick and not threads:
        fast, physical = machine.performance_cores(), machine.physical_cores()
        extra += [fast] if 0 < fast < cores else []  # a hybrid CPU: its fast cores alone
        extra += [physical] if physical > cores else []  # a CPU quota: every core
    if backend == "onnx":
        grid = [{"threads": t, "allow_spinning": True}, {"threads": t, "allow_spinning": False}]
        if not quick and not threads and cores >= 4:
            grid.append({"threads": cores // 2, "allow_spinning": True})
        grid += [{"threads": n, "allow_spinning": True} for n in extra if n != cores // 2 or cores < 4]
    else:
        grid = [{"threads": t, "performance_hint": "LATENCY"}, {"threads": t, "performance_hint": "THROUGHPUT"}]
        if not quick and t >= 4:
            grid.append({"threads": t, "performance_hint": "THROUGHPUT", "num_streams": 2})
        if not quick:  # both hints without the fused attention kernels on short batches (OpenVINOEngine._compiled_for);
            # and static compilations for one-row calls (_static_for, judged on batch 1 alone) on the LATENCY ones
            grid += [{**g, "snippets_above": SNIPPETS_ABOVE} for g in grid[:2]]
            grid += [{**g, "static_batch1": STATIC_BATCH1} for g in grid if g["performance_hint"] == "LATENCY"]
            # for memory budgets alone: smaller per-shape caches, and fewer static compilations on the default
            grid.append({"threads": t, "performance_hint": "LATENCY", "shape_cache": LEAN_SHAPES})
            grid.append({**grid[0], "static_batch1": LEAN_STATIC_BATCH1})
        grid += [{"threads": n, "performance_hint": "LATENCY"} for n in extra]
    return grid[:1] if quick else grid


class _Workloads:
    """The texts every variant sees: short ones, passage-length ones, and a mixed batch for invariance; the
    batch-1 calls run on ``queries`` where given (an app's own), else on the short texts."""

    def __init__(
        self, task: str, texts: Sequence[str] | None, quick: bool, queries: Sequence[str] | None = None
    ) -> None:
        short = [t for t in (texts or SHORT) if t.strip()]
        if not short:
            raise InputError("tune needs at least one non-empty text")
        asked = [q for q in queries or () if q.strip()]
        if queries is not None and not asked:
            raise InputError("tune's queries (the batch-1 texts) need at least one non-empty text")
        self.batch1_source = "queries" if asked else "texts" if texts else "built-in"
        self.queries_sha256 = texts_sha256(asked) if asked else None
        # 256 short texts make 8 batches of 32: an OpenVINO throughput hint runs batches side by side, and
        # 3 batches (96 texts, before) left one stream idle for a third of the pass.
        n_short, n_pass, n_lat = (32, 8, 12) if quick else (256, 16, 32)
        self.short = [short[i % len(short)] for i in range(n_short)]
        self.passage = passages(short, count=n_pass)
        if asked:  # spread over all of them, in case they come sorted (n_lat of them; all, cycled, if fewer)
            step = max(1, len(asked) // n_lat)
            self.latency = [asked[(i * step) % len(asked)] for i in range(n_lat)]
        else:
            self.latency = self.short[:n_lat]
        # Longer queries (two of them joined, about twice the tokens): batch-1 routing must pay at both lengths.
        half = n_lat // 2
        self.latency_long = [f"{self.latency[i]} {self.latency[i + half]}" for i in range(half)]
        self.probe = self.short[:16]
        self.mixed = self.probe + self.passage[: 32 - len(self.probe)]  # padded to passage length in one batch
        # For the memory probe: inputs of many lengths (OpenVINO keeps state per input shape it has run).
        self.varied = varied(short, count=MEMORY_VARIED)
        # For the token budget: one large batch of short texts and one of passages (several budgets' worth).
        self.big_short = [short[i % len(short)] for i in range(192)]
        self.big_passage = passages(short, count=24)
        self.task = task
        if task == "reranking":
            q = self.short
            self.short = [(q[i], q[(i + 1) % len(q)]) for i in range(len(q))]
            self.passage = [(q[i], p) for i, p in enumerate(self.passage)]
            self.latency = [(a, q[(i + 1) % len(q)]) for i, a in enumerate(self.latency)]  # a query, a short text
            pairs = zip(self.latency[: len(self.latency) // 2], self.latency[1:])
            self.latency_long = [(a, f"{b} {c}") for (a, b), (_, c) in pairs]
            # each text with the next and with itself, as export verifies (verify.reranker_pairs): scores of both
            # kinds, so their spread, which score agreement measures differences against, is a reranker's range
            # (16 pairs of unrelated texts scored 0.06-0.13 on a 0-1 scale: every difference looked large)
            self.probe = self.short[:8] + [(a, a) for a, _ in self.short[:8]]
            self.mixed = self.probe + self.passage[: 32 - len(self.probe)]
            self.varied = [(q[i % len(q)], t) for i, t in enumerate(self.varied)]
            self.big_short = [(q[i % len(q)], q[(i + 3) % len(q)]) for i in range(len(self.big_short))]
            self.big_passage = [(q[i % len(q)], p) for i, p in enumerate(self.big_passage)]

    def summary(self, count: Callable[[list], float]) -> dict[str, Any]:
        return {
            "short": {"texts": len(self.short), "mean_tokens": count(self.short)},
            "passage": {"texts": len(self.passage), "mean_tokens": count(self.passage)},
            "batch1": {
                "texts": len(self.latency),
                "mean_tokens": count(self.latency),
                "source": self.batch1_source,
                **({"sha256": self.queries_sha256} if self.queries_sha256 else {}),
            },
            "batch1_long": {"texts": len(self.latency_long), "mean_tokens": count(self.latency_long)},
        }


def texts_sha256(texts: Sequence[str]) -> str:
    """A short fingerprint of a list of texts (a profile's batch-1 queries), to tell whether it was tuned on them."""
    import hashlib

    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]


def _call(model: Any, task: str) -> Callable[[Any, int], np.ndarray]:
    if task == "reranking":
        return lambda items, bs: np.asarray(model.predict(items if isinstance(items, list) else [items], batch_size=bs))
    return lambda items, bs: np.asarray(model.encode(items, batch_size=bs))


def _timed(fn: Callable[[], Any], min_reps: int, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while len(out) < min_reps or (time.perf_counter() < end and len(out) < 50):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(model: Any, work: _Workloads, batch_sizes: Sequence[int], seconds: float) -> dict[str, Any]:
    """One (variant, settings) case: batch-1 p50/p90 on short texts and p50 on longer ones, bulk sentences/s on
    short texts and passages."""
    run = _call(model, work.task)
    run(work.short[:8], 8)  # warm-up: sessions allocate on first use
    for item in (work.latency + work.latency_long) * 2:  # and static_batch1 compiles a length the second time
        run([item], 1)

    def batch1(items: list, share: float) -> list[float]:
        out = []
        end = time.perf_counter() + share * seconds
        for i, item in enumerate(items * 4):
            if i >= len(items) and time.perf_counter() > end:
                break
            t = time.perf_counter()
            run([item], 1)
            out.append((time.perf_counter() - t) * 1000.0)
        return sorted(out)

    lat = batch1(work.latency, 0.2)
    lat_long = batch1(work.latency_long, 0.1)
    bulk: dict[str, dict[str, float]] = {"short": {}, "passage": {}}
    share = 0.7 * seconds / (2 * len(batch_sizes))
    for kind, items in (("short", work.short), ("passage", work.passage)):
        for bs in batch_sizes:
            secs = _timed(lambda items=items, bs=bs: run(items, bs), 1, share)
            bulk[kind][str(bs)] = round(len(items) / statistics.median(secs), 2)
    return {
        "batch1_ms_p50": round(statistics.median(lat), 4),
        "batch1_ms_p90": round(lat[int(0.9 * (len(lat) - 1))], 4),
        "batch1_ms_p50_long": round(statistics.median(lat_long), 4),
        "bulk": bulk,
    }


STATIC_PAD_PASSES = 10  # passes of the static-padding duel over the tune's short and longer queries


def static_pad_duel(
    cls: Any,
    root: Path,
    name: str,
    settings: dict[str, Any],
    work: _Workloads,
    passes: int = STATIC_PAD_PASSES,
    incumbent: Any = None,
) -> dict[str, Any]:
    """Batch-1 p50 of variant ``name`` with ``settings`` (static_batch1) at each padding of STATIC_PADS.

    One engine per padding, loaded side by side; each pass runs every engine over all the tune's short and longer
    queries in turn, as an app's one engine runs them (its static compilations switching with the lengths), the
    engines' order reversed every pass. Returns ``{"p50_ms": {pad: ms}, "pass_ms": {pad: [each pass's total]},
    "chosen": pad}``: the fastest padding where it beat the incumbent (``incumbent``: this machine's previous
    tune's choice, else the engine's default, STATIC_PADS[0]) by STATIC_PAD_GAIN and with confidence over the
    passes (``duel_winner``), else the incumbent.
    """
    runs = {pad: _call(cls.load(root, variant=name, **settings, static_pad=pad), work.task) for pad in STATIC_PADS}
    items = work.latency + work.latency_long
    for run in runs.values():
        for item in items * 2:  # static_batch1 compiles a length the second time
            run([item], 1)
    ms: dict[int, list[float]] = {pad: [] for pad in runs}
    for _, pad in alternating_rounds(list(runs), passes):
        for item in items:
            t = time.perf_counter()
            runs[pad]([item], 1)
            ms[pad].append((time.perf_counter() - t) * 1000.0)
    p50 = {pad: statistics.median(v) for pad, v in ms.items()}
    per_pass = {pad: [sum(v[i : i + len(items)]) for i in range(0, len(v), len(items))] for pad, v in ms.items()}
    out = {
        "p50_ms": {str(pad): round(v, 4) for pad, v in p50.items()},
        "pass_ms": {str(pad): [round(t, 3) for t in v] for pad, v in per_pass.items()},
        "chosen": chosen_static_pad(p50, incumbent, per_pass),
    }
    return {**out, "incumbent": incumbent} if incumbent in p50 and incumbent != STATIC_PADS[0] else out


def chosen_static_pad(
    p50: Mapping[int, float], incumbent: Any = None, per_pass: Mapping[int, Sequence[float]] | None = None
) -> int:
    """The padding of STATIC_PADS to use from the duel's batch-1 p50s (and, where given, each pass's time per
    padding): ``duel_winner`` over the incumbent (the previous tune's choice where it was timed, else the
    engine's default) with STATIC_PAD_GAIN."""
    return duel_winner(p50, incumbent if incumbent in p50 else STATIC_PADS[0], STATIC_PAD_GAIN, per_pass)


def duel_winner(
    cost: Mapping[Any, float], held: Any, gain: float, per_pass: Mapping[Any, Sequence[float]] | None = None
) -> Any:
    """A duel's choice (``cost``: lower is faster): the cheapest where the incumbent ``held`` costs at least
    ``gain`` times as much and, where ``per_pass`` costs are given, its per-pass speedup over ``held`` has a
    ``PAIRED_CI_LEVEL`` interval above 1 (one lucky pass, or a few, does not move a setting); else ``held``."""
    best = min(cost, key=lambda k: cost[k])
    if cost[held] < gain * cost[best]:
        return held
    if per_pass is not None:
        ci = _rounded_interval(paired_ratios(per_pass[best], per_pass[held]))
        if ci is None or ci[0] <= 1:
            return held
    return best


DQ_KEY = "dynamic_quantization_group_size"  # the OpenVINO engine option the int8-group duel sets
# Run-time int8 groups for the MatMuls an OpenVINO int8/int4 graph holds with int8 weights and no static
# activation range (openvino-int8-static's FFN down-projections; every MatMul of the weight-only variants): the
# plugin's default first (None: 32 on the CPU), then float compute (0) and two coarser groups. Coarser groups mean
# fewer scales per token, and a little more rounding. Measured on the 2-core Zen 4 guest (2026-12-06, bench
# artifacts, openvino-int8-static, THROUGHPUT, 2,048 STS-B texts at batch 32, 6 alternating passes): the 3-layer
# student 2,704 sent/s at 32, 3,040 at 128, 3,071 at 256, 2,036 at 0; all-MiniLM-L6-v2 1,547 / 1,700 / 1,719; its
# batch-1 p50 (LATENCY, static_batch1=8, 100 SciFact queries) 2.12 ms at 32, 1.94 at 128; min cos to onnx-fp32
# over the 2,758 STS-B test texts 0.9926 / 0.9924 / 0.9927 (runtimes/python/README.md, "Tuning").
DQ_GROUPS: tuple[int | None, ...] = (None, 0, 128, 256)
DQ_GAIN = 1.05  # a group other than the default is taken where its duel score beat the default's by this much
DQ_PASSES = 8
DUEL_KEYS = ("static_pad", DQ_KEY)  # settings the duels add to the grid's (stedge bench compares without them)


def dq_group_duel(
    cls: Any,
    root: Path,
    name: str,
    settings: dict[str, Any],
    work: _Workloads,
    passes: int = DQ_PASSES,
    incumbent: Any = None,
) -> dict[str, Any]:
    """Variant ``name`` with ``settings`` at each run-time int8 group of DQ_GROUPS, loaded side by side.

    First the mixed batch through each: where every group gives the default's output bit for bit, the graph has
    no MatMul the setting reaches, and the default stays (``"effect": False``). Else each pass runs every engine
    over the short texts at batch 32 and the batch-1 queries one at a time, the order reversed every pass; a
    group's score is the geometric mean of its median bulk pass time and its batch-1 p50, and the best group is
    taken where it beat the incumbent's score by at least DQ_GAIN and with confidence over the passes (each pass
    scored alike, ``duel_winner``; ``incumbent``: this machine's previous tune's choice, else the engine's
    default), else the incumbent. Returns the figures (``pass_score``: each pass's score per group) and
    ``"chosen"`` (None: the engine's default). Accuracy is not judged here: every setting the rounds then time
    carries the chosen group, and each is held to its tier again (``_accuracy_here``)."""
    models = {g: cls.load(root, variant=name, **settings, **({} if g is None else {DQ_KEY: g})) for g in DQ_GROUPS}
    runs = {g: _call(m, work.task) for g, m in models.items()}
    first = {g: run(work.mixed, 32) for g, run in runs.items()}
    if all(np.array_equal(first[None], out) for out in first.values()):
        return {"effect": False, "chosen": None}
    bulk: dict[int | None, list[float]] = {g: [] for g in runs}
    one: dict[int | None, list[float]] = {g: [] for g in runs}
    for _, g in alternating_rounds(list(runs), passes):
        t = time.perf_counter()
        runs[g](work.short, 32)
        bulk[g].append(time.perf_counter() - t)
        for item in work.latency:
            t = time.perf_counter()
            runs[g]([item], 1)
            one[g].append((time.perf_counter() - t) * 1000.0)
    score = {g: (statistics.median(bulk[g]) * statistics.median(one[g])) ** 0.5 for g in runs}
    n = len(work.latency)  # each pass's score: its bulk pass time and its batch-1 median, as the duel's
    per_pass = {
        g: [(b * statistics.median(one[g][i * n : (i + 1) * n])) ** 0.5 for i, b in enumerate(bulk[g])] for g in runs
    }
    label = {g: "default" if g is None else str(g) for g in runs}
    return {
        "effect": True,
        "bulk_sent_s": {label[g]: round(len(work.short) / statistics.median(v), 1) for g, v in bulk.items()},
        "batch1_ms_p50": {label[g]: round(statistics.median(v), 4) for g, v in one.items()},
        "pass_score": {label[g]: [round(v, 5) for v in vs] for g, vs in per_pass.items()},
        **({"incumbent": incumbent} if incumbent is not None and incumbent in score else {}),
        "chosen": chosen_dq_group(score, incumbent, per_pass),
    }


def chosen_dq_group(
    score: Mapping[Any, float], incumbent: Any = None, per_pass: Mapping[Any, Sequence[float]] | None = None
) -> Any:
    """The run-time int8 group to use from the duel's scores (lower is faster; None: the engine's default) and,
    where given, each pass's score per group: ``duel_winner`` over the incumbent (the previous tune's choice where
    it was timed, else the default) with DQ_GAIN."""
    return duel_winner(score, incumbent if incumbent in score else None, DQ_GAIN, per_pass)


def _duels(
    cls: Any,
    root: Path,
    todo: dict[str, Any],
    work: _Workloads,
    threads: int | None,
    progress: Progress | None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """The duels a full tune runs before its rounds, by the profile key each variant's figures go under: the
    static-padding duel (``static_pad_duel``) of each OpenVINO variant on its LATENCY settings with STATIC_BATCH1
    static compilations, and the int8-group duel (``dq_group_duel``) of each OpenVINO int8/int4 variant on its
    default settings. Each takes as incumbent what the same duel chose in ``previous`` (this machine's profile
    before the tune) where the variant's files are unchanged: a re-tune moves it only on a clear gain. An engine
    that fails records its error and keeps the default (the rounds then record the engine's failure on these
    settings)."""
    out: dict[str, dict[str, dict[str, Any]]] = {"static_pad": {}, "dq_group": {}}
    grid = settings_grid("openvino", threads)
    static = next((s for s in grid if s.get("static_batch1") == STATIC_BATCH1), None)
    pads = f"static padding {' vs '.join(map(str, STATIC_PADS))}"
    for name, v in todo.items():
        if v["backend"] != "openvino":
            continue
        duels = [("static_pad", pads, static_pad_duel, static, STATIC_PADS[0])] if static else []
        if v.get("precision") in ("int8", "int4"):
            duels.append(("dq_group", "run-time int8 groups", dq_group_duel, grid[0], None))
        was = ((previous or {}).get("variants") or {}).get(name) or {}
        same = same_files(previous, {"variants": todo}, name)
        for key, what, duel, settings, default in duels:
            if progress:
                progress(f"{name} {what}", 0, 1)
            held = (was.get(key) or {}).get("chosen") if same and "error" not in (was.get(key) or {}) else None
            try:
                out[key][name] = duel(cls, root, name, settings, work, incumbent=held)
            except Exception as e:
                out[key][name] = {"error": _failure(e), "chosen": default}
    return out


def _duelled(settings: dict[str, Any], name: str, duels: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Variant ``name``'s ``settings`` with the padding duel's choice where they have static compilations and it
    chose other than the default, and with the int8-group duel's choice where it chose other than the engine's
    default (``duels``: what ``_duels`` returned; empty with ``quick``)."""
    out = dict(settings)
    pad = duels.get("static_pad", {}).get(name, {}).get("chosen", STATIC_PADS[0])
    if settings.get("static_batch1") and pad != STATIC_PADS[0]:
        out["static_pad"] = pad
    group = duels.get("dq_group", {}).get(name, {}).get("chosen")
    if group is not None:
        out[DQ_KEY] = group
    return out


def _failure(e: Exception) -> str:
    """An engine's exception as the profile records it: its type and the first line of its message."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"


def _probe(model: Any, work: _Workloads) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of the probe texts alone (batch 1) and inside the mixed batch of 32."""
    run = _call(model, work.task)
    alone = np.stack([np.atleast_1d(run([t], 1)).reshape(-1) for t in work.probe])
    batch = (
        np.atleast_2d(run(work.mixed, 32))[: len(work.probe)]
        if work.task == "embedding"
        else run(work.mixed, 32)[: len(work.probe)].reshape(len(work.probe), -1)
    )
    return alone, batch


def tunable_variants(path: str | Path, task: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(variants to time, {variant: why skipped}) for the CPU with the installed engines."""
    root = Path(path)
    m = Manifest.read(root, task)
    installed = installed_backends()
    todo, skipped = {}, {}
    for name, rec in m.variants.items():
        v = rec.to_dict()
        if not fits(v, "cpu"):
            skipped[name] = "does not run on the CPU"
        elif v["backend"] not in installed:
            skipped[name] = f"engine for {v['backend']} not installed"
        elif variant_tier(v) is None:
            skipped[name] = "verification failed or reached no tier"
        else:
            todo[name] = v
    return todo, skipped


def _task_of(root: Path) -> str:
    return Manifest.read(root).task


def tune(
    path: str | Path,
    variants: Sequence[str] | None = None,
    threads: int | None = None,
    quick: bool = False,
    budget_s: float | None = None,
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    progress: Progress | None = None,
    paired_cycles: int = PAIRED_CYCLES,
    queries: Sequence[str] | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Time the artifact's CPU variants on this machine; returns the profile (write it with profile.write_profile).

    ``variants`` limits the set (default: every verified variant the installed engines run on the CPU);
    ``budget_s`` is the target total time of the rounds (default 4 s per variant, 1.5 s with ``quick``); the
    token-budget sweep (about 10-15 s on 2 cores for a MiniLM), the paired final and, per OpenVINO variant, the
    static-padding duel (``static_pad_duel``) and for int8/int4 ones the int8-group duel (``dq_group_duel``), a few
    seconds each, come on top; ``quick`` skips them and tries only the engines' default settings. ``texts`` replaces
    the built-in samples; ``queries`` (an app's own) replace them for the batch-1 calls alone (their timings, the
    duels and the batch-1 routing decide on them), the bulk workloads unchanged; ``paired_cycles`` is the number of
    cycles of the paired final (0 skips it; see ``paired_final``). ``previous``: this machine's profile of the
    artifact before this tune (None: choose afresh): its token budget stays unless another is faster in every
    round of the sweep (``_tune_batch_tokens``), its tier choices, which join the paired final, where it
    cannot tell the new ones from them (``kept_choices``), and where their batch-1 calls went where a route duel
    cannot tell the new destination faster (``kept_routes``): a re-tune does not move an app between
    configurations within noise.
    """
    from .encoder import Encoder, Reranker

    root = Path(path)
    task = _task_of(root)
    todo, skipped = tunable_variants(root, task)
    if variants:
        unknown = [v for v in variants if v not in todo and v not in skipped]
        if unknown:
            raise InputError(
                f"{root}: no variant(s) {', '.join(unknown)}; this artifact has: {', '.join([*todo, *skipped])}"
            )
        todo = {n: v for n, v in todo.items() if n in variants}
    if not todo:
        raise RuntimeStedgeError(
            f"{root}: no variant to tune on this CPU: " + "; ".join(f"{n}: {why}" for n, why in skipped.items())
        )
    if isinstance(paired_cycles, bool) or not isinstance(paired_cycles, int) or paired_cycles < 0:
        raise InputError(f"paired_cycles must be an integer >= 0 (0 skips the paired final), got {paired_cycles!r}")
    bad = [b for b in batch_sizes if not isinstance(b, int) or b < 2]
    if bad:
        raise InputError(
            f"bulk batch sizes must be integers >= 2 (batch 1 is always measured), got {list(batch_sizes)}"
        )
    work = _Workloads(task, texts, quick, queries)
    per_variant = (budget_s / len(todo)) if budget_s else (1.5 if quick else 4.0)
    cls = Reranker if task == "reranking" else Encoder
    duels = {} if quick else _duels(cls, root, todo, work, threads, progress, previous)
    cases = [(n, _duelled(s, n, duels)) for n, v in todo.items() for s in settings_grid(v["backend"], threads, quick)]
    facts = machine.machine_facts()
    prof: dict[str, Any] = {
        "format_version": PROFILE_FORMAT,
        "machine": {**facts, "key": machine.machine_key(facts)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runtime": _runtime_version(),
        "task": task,
        "budget_s": round(per_variant * len(todo), 2),
        "quick": bool(quick),
        "batch_sizes": [1, *batch_sizes],
        "variants": {},
        "skipped": skipped,
    }
    probes: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}  # variant -> setting -> probe (first: default)
    tok_count: Callable[[list], float] | None = None
    rounds = 1 if quick else ROUNDS
    measured: dict[tuple[str, str], list[dict]] = {}
    for i, (_, (name, settings)) in enumerate(alternating_rounds(cases, rounds)):
        if progress:
            progress(f"{name} {_fmt(settings)}", i, rounds * len(cases))
        entry = prof["variants"].setdefault(name, {"status": "ok", "sha256": todo[name].get("sha256"), "runs": []})
        if entry["status"] != "ok":
            continue
        share = per_variant / (rounds * sum(1 for c in cases if c[0] == name))
        try:
            model = cls.load(root, variant=name, **settings)
            tok_count = tok_count or _token_counter(model)
            if _fmt(settings) not in probes.get(name, {}):  # every setting: it may change the arithmetic
                probes.setdefault(name, {})[_fmt(settings)] = _probe(model, work)
            res = measure(model, work, batch_sizes, share)
            del model  # one engine at a time
        except Exception as e:  # an engine that cannot run a graph here is a result, not a crash
            entry.update(status="error", error=_failure(e), runs=[])
            continue
        measured.setdefault((name, _fmt(settings)), []).append(res)
    for name, settings in cases:
        entry = prof["variants"][name]
        if entry["status"] == "ok" and (name, _fmt(settings)) in measured:
            entry["runs"].append({"settings": settings, **best_of(measured[(name, _fmt(settings))])})
    for key, name in [(k, n) for k, by_variant in duels.items() for n in by_variant if n in prof["variants"]]:
        prof["variants"][name][key] = duels[key][name]  # each duel's figures and choice
    if not quick:
        prof["batch_tokens"] = _tune_batch_tokens(cls, root, prof["variants"], work, rounds, progress, previous)
    prof["workloads"] = work.summary(tok_count or (lambda items: 0.0))
    default = {n: next(iter(p.values())) for n, p in probes.items() if p}  # each variant's default settings
    prof["agreement"] = _agreement(default, task)
    _accuracy_here(prof["variants"], probes, todo, task)
    if not quick:  # after the accuracy here: a variant that left its tier on this machine is no contender there
        _final_and_kept(cls, root, prof, work, batch_sizes, paired_cycles, progress, previous)
    if progress:
        progress("done", len(cases), len(cases))
    return prof


def tune_artifact(
    path: str | Path,
    variants: Sequence[str] | None = None,
    threads: int | None = None,
    quick: bool = False,
    budget_s: float | None = None,
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    progress: Progress | None = None,
    write: bool = True,
    paired_cycles: int | None = None,
    memory: bool = True,
    queries: Sequence[str] | None = None,
    reuse_memory: bool = True,
    keep_choices: bool = True,
) -> tuple[dict[str, Any], Path | None]:
    """Tune the artifact at ``path`` and write its profile for this machine: what `stedge tune` and `stedge-runtime
    tune` run. Returns (profile, file written or None with ``write`` false).

    ``tune``'s arguments as there (``paired_cycles`` None: PAIRED_CYCLES); ``progress`` gets ``("tuning <what>",
    done, total)``, then ``("measuring the memory of <what>", ...)``. With ``memory`` (not with ``quick``), once
    the profile is written, each tier's choice and each configuration a memory budget may fall back to runs in a
    fresh process for its peak RSS (``measure_memory``), the profile written again after each probe, so a tune
    stopped then keeps what they measured; with ``reuse_memory`` the figures this machine's previous profile measured
    on the same variant files and workloads are kept, not probed again. With ``keep_choices`` that profile's token
    budget and tier choices stay where this tune cannot tell the new ones from them (``tune``'s ``previous``)."""
    root = Path(path)
    if not has_manifest(root):
        raise ArtifactError(f"{root}: not an artifact folder (no {MANIFEST}); pass a folder written by `stedge export`")
    previous = None
    if reuse_memory or keep_choices:  # this machine's profile before the tune replaces it
        try:
            previous = read_profile(root, machine.machine_key())
        except ArtifactError:  # one this runtime cannot read: the tune overwrites it
            pass

    def phase(label: str) -> Progress | None:
        return None if progress is None else lambda what, done, total: progress(f"{label} {what}", done, total)

    quiet = logging.getLogger("stedge_runtime")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # passages are longer than max_seq_length on purpose
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # each variant is named on purpose
            cycles = PAIRED_CYCLES if paired_cycles is None else paired_cycles
            held = previous if keep_choices else None
            prof = tune(
                root, variants, threads, quick, budget_s, texts, batch_sizes, phase("tuning"), cycles, queries, held
            )
    finally:
        quiet.setLevel(level)
    if not write:
        return prof, None
    if not memory or quick:
        return prof, write_profile(root, prof)
    written: list[Path] = []

    def save(mem: dict[str, Any]) -> None:  # before the first probe (the probes load it), then after each one
        written.append(write_profile(root, {**prof, "memory": mem}))

    kept = previous if reuse_memory else None
    prof["memory"] = measure_memory(
        root, prof, kept, texts, batch_sizes, phase("measuring the memory of"), queries, save
    )
    return prof, written[-1]


def _final_and_kept(
    cls: Any,
    root: Path,
    prof: dict[str, Any],
    work: _Workloads,
    batch_sizes: Sequence[int],
    cycles: int,
    progress: Progress | None,
    previous: Mapping[str, Any] | None,
) -> None:
    """Add the paired final to ``prof``, with what ``Encoder.load`` chose from ``previous`` (this machine's profile
    before the tune; None: nothing) among its contenders, and the choices the tune keeps from it: bulk choices
    (``kept_choices``), then batch-1 destinations (``kept_routes``)."""
    before = best_choices(root, profile=dict(previous)) if previous else {}  # what an app ran until now
    was = [c for c in before.values() if "variant" in c]
    prof["paired"] = paired_final(cls, root, prof, work, batch_sizes, cycles, progress, was)
    duels: list[dict] = []
    duel = duel_cache(cls, root, work, progress, duels)
    if kept := kept_choices(before, best_choices(root, profile=prof), previous, prof, duel):
        prof["kept"] = kept
    if routes := kept_routes(before, best_choices(root, profile=prof), previous, prof, duel):
        prof["kept_routes"] = routes
    if duels:  # those that moved a choice too
        prof["route_duels"] = duels


def eligible_runs(root: str | Path, prof: dict[str, Any]) -> dict[str, dict[str, list[dict]]]:
    """``{tier: {variant: its runs that met the tier}}``: per tier, each variant ``Encoder.load`` could choose
    there from ``prof`` (tuned here, not excluded by the selection; tiers with nothing eligible are left out)."""
    root = Path(root)
    m = Manifest.read(root)
    out: dict[str, dict[str, list[dict]]] = {}
    for tier in TIERS:
        try:
            sel = select_variant(m.variants, "cpu", None, installed_backends(), root, tier=tier, profile=prof)
        except RuntimeStedgeError:
            continue  # nothing eligible at this tier
        for name, e in (prof.get("variants") or {}).items():
            if e.get("status") == "ok" and name in m.variants and name not in sel.excluded:
                runs = runs_for_tier(e, tier)[0]
                if runs:
                    out.setdefault(tier, {})[name] = runs
    return out


def contenders(
    root: str | Path, prof: dict[str, Any], also: Sequence[Mapping[str, Any]] = ()
) -> dict[str, dict[str, Any]]:
    """``{id: {"variant": name, "settings": settings}}`` for the paired final: per tier, every variant
    ``Encoder.load`` could choose there from ``prof`` (the same eligibility: tier, batch invariance and accuracy on
    this machine) whose bulk score in the rounds, with the settings it would run with at that tier, is at least
    ``PAIRED_WITHIN`` of the tier's best (a static twin scored by its plain run, ``twin_bulk_score``). Each joins
    with those settings (``static_batch1`` left out: it changes batch-1 calls only, which the rounds judge), its
    engine's default settings and its fastest other settings in the rounds, where these met the tier and came within
    ``PAIRED_WITHIN`` of its own score: the final then decides between them (``select.settled_run``). All tiers
    together; a variant's first settings take its name as id, others ``name (k=v ...)``. ``also``: choices
    (``{"variant", "settings"}``: the previous tune's, ``kept_choices``) that join too, where their settings met a
    tier in this tune's rounds."""
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, settings: dict[str, Any] | None) -> None:
        plain = plain_settings(settings)
        if any(c["variant"] == name and settings_key(c["settings"]) == settings_key(plain) for c in out.values()):
            return
        cid = name if name not in out else f"{name} ({_fmt(plain)})"
        out[cid] = {"variant": name, "settings": plain}

    tiers = eligible_runs(root, prof)
    for eligible in tiers.values():
        here = {}  # each variant: its score and run at the settings this tier would give it, and its plain runs
        for name, runs in eligible.items():
            run = settled_run(runs)
            here[name] = (twin_bulk_score(run, runs) or 0.0, run, plain_runs(runs))
        top = max((h[0] for h in here.values()), default=0.0)
        for name, (score, run, plain) in sorted(here.items(), key=lambda kv: -kv[1][0]):
            if top <= 0 or score < PAIRED_WITHIN * top:
                continue
            add(name, run["settings"])
            others = [r for r in plain if settings_key(r["settings"]) != settings_key(run["settings"])]
            close = [r for r in others if (bulk_score(r) or 0.0) >= PAIRED_WITHIN * score]
            if plain and plain[0] in close:
                add(name, plain[0]["settings"])  # the default: did the other setting earn its place?
            if close:
                add(name, max(close, key=lambda r: bulk_score(r) or 0.0)["settings"])
    for c in also:
        want = settings_key(plain_settings(c.get("settings")))
        runs = [r for eligible in tiers.values() for r in eligible.get(str(c.get("variant")), [])]
        if any(settings_key(plain_settings(r["settings"])) == want for r in runs):
            add(str(c["variant"]), c.get("settings"))
    return out


def paired_final(
    cls: Any,
    root: Path,
    prof: dict[str, Any],
    work: _Workloads,
    batch_sizes: Sequence[int],
    cycles: int = PAIRED_CYCLES,
    progress: Progress | None = None,
    also: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The paired final: load every contender (``contenders``, with ``also``) at once, with its settings and the
    tuned token budget, and run ``cycles`` cycles; per workload (batch 1 on the short texts, then each bulk batch
    size on short texts and on passages), each contender runs one timed pass in turn, ``PAIRED_GAP_S`` apart, the
    order reversed every other pass. Returns the profile's ``paired`` record: per contender its pass times
    and its ``speedup`` over the ``reference`` (the contender with the best bulk score in the rounds) as the
    median of per-cycle ratios, per workload, with ``bulk_speedup`` the median of each cycle's geometric mean
    over the bulk workloads (``bulk_cycle_ratios``) and ``batch1_speedup`` (what stedge_runtime.select ranks
    by); ``speedup_ci``, ``bulk_speedup_ci`` and ``batch1_speedup_ci`` give each median's ``PAIRED_CI_LEVEL``
    interval (``median_interval``; None below 6 cycles): one that spans 1 means the cycles did not tell that
    contender from the reference. A contender that fails to load or
    run gets an ``error`` and the others go on. With fewer than two contenders (or ``cycles`` 0) nothing is
    timed and ``cycles`` is 0."""
    picks = contenders(root, prof, also)
    out: dict[str, Any] = {
        "cycles": 0,
        "within": PAIRED_WITHIN,
        "gap_s": PAIRED_GAP_S,
        "ci_level": PAIRED_CI_LEVEL,
        "reference": None,
        "contenders": {cid: dict(c) for cid, c in picks.items()},
    }
    if len(picks) < 2 or cycles < 1:
        return out
    budget = (prof.get("batch_tokens") or {}).get("best")
    load_kw = {"max_batch_tokens": budget} if isinstance(budget, int) and budget >= 1 else {}
    passes: list[tuple[str, str | None, list, int]] = [("batch1", None, work.latency, 1)]
    passes += [("short", str(b), work.short, b) for b in batch_sizes]
    passes += [("passage", str(b), work.passage[:PAIRED_PASSAGES], b) for b in batch_sizes]
    runs: dict[str, Callable[[Any, int], np.ndarray]] = {}
    for name, pick in picks.items():
        try:
            run = _call(cls.load(root, variant=pick["variant"], **pick["settings"], **load_kw), work.task)
            run(work.short[:8], 8)  # warm-up: sessions allocate on first use
            for item in work.latency * 2:  # and static_batch1 compiles a length the second time
                run([item], 1)
        except Exception as e:  # as in the rounds: a contender that cannot run is a result
            out["contenders"][name]["error"] = _failure(e)
            continue
        runs[name] = run
    seconds: dict[str, dict[str, list[float]]] = {n: {} for n in runs}
    for c in range(cycles):
        if progress:
            progress(f"paired final: {', '.join(runs)}", c, cycles)
        for k, (kind, bs, items, size) in enumerate(passes):
            key = kind if bs is None else f"{kind} bs={bs}"
            names = list(runs)
            for name in names[::-1] if (c + k) % 2 else names:
                time.sleep(PAIRED_GAP_S)
                try:
                    t = time.perf_counter()
                    if size == 1:
                        for item in items:
                            runs[name]([item], 1)
                    else:
                        runs[name](items, size)
                    seconds[name].setdefault(key, []).append(time.perf_counter() - t)
                except Exception as e:
                    out["contenders"][name]["error"] = _failure(e)
                    del runs[name]
                    seconds.pop(name)
    runs.clear()  # the engines go before the next thing runs
    if len(seconds) < 2:
        return out
    ran = {  # each contender's run in the rounds at the settings the final ran
        n: next((r for r in prof["variants"][picks[n]["variant"]]["runs"] if r["settings"] == picks[n]["settings"]), {})
        for n in seconds
    }
    scores = {n: bulk_score(r) or 0.0 for n, r in ran.items()}
    ref = max(seconds, key=lambda n: (scores[n], n))
    out.update(cycles=cycles, reference=ref)
    for name, times in seconds.items():
        ratios = {key: paired_ratios(ts, seconds[ref][key]) for key, ts in times.items()}
        bulk = bulk_cycle_ratios({key: r for key, r in ratios.items() if key != "batch1"})
        intervals = {key: _rounded_interval(r) for key, r in ratios.items()}
        out["contenders"][name].update(
            seconds={key: [float(f"{t:.6g}") for t in ts] for key, ts in times.items()},  # 6 digits: a 1 ms pass too
            speedup={key: round(statistics.median(r), 4) for key, r in ratios.items()},  # pass times are > 0
            speedup_ci={key: iv for key, iv in intervals.items() if iv},
            bulk_speedup=round(statistics.median(bulk), 4) if bulk else 0.0,
            bulk_speedup_ci=_rounded_interval(bulk),
            batch1_speedup=round(statistics.median(ratios["batch1"]), 4),
            batch1_speedup_ci=intervals["batch1"],
        )
    return out


Duel = Callable[[Mapping[str, Any], Mapping[str, Any]], "list[float] | None"]  # (new, old) -> per-pass speedups


def same_files(old: Mapping[str, Any] | None, new: Mapping[str, Any], name: Any) -> bool:
    """Whether variant ``name`` has the same files (manifest ``sha256``) in the profile ``old`` as in ``new`` (a
    profile, or ``{"variants": manifest records}``): what a re-tune may keep from ``old`` for it."""
    was = (((old or {}).get("variants") or {}).get(name) or {}).get("sha256")
    return bool(was) and was == ((new.get("variants") or {}).get(name) or {}).get("sha256")


def kept_choices(
    before: Mapping[str, Any],
    now: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    prof: Mapping[str, Any],
    duel: Duel | None = None,
) -> dict[str, Any]:
    """The profile's ``kept``: per tier, the choice of this machine's previous profile (``previous``, its
    ``best_choices`` ``before``) that a re-tune keeps where its own choice (``now``) differs only within noise:
    both ran in the paired final at those settings (``static_batch1`` aside: it runs the same bulk calls; two
    choices that differ in it alone are left to the rounds' rule for it), the previous choice's variant files are
    unchanged, and the new choice is faster with confidence (a ``PAIRED_CI_LEVEL`` interval above 1) neither in
    bulk (the median of per-cycle ratios, ``bulk_cycle_ratios``) nor at batch 1. Batch 1 is judged where each
    choice runs its batch-1 calls (``select.batch1_destination``): by the final's batch-1 passes where both run
    them on their bulk settings, else by ``duel`` (``route_duel``; None: such a pair is not kept), since a route
    or static batch-1 compilations are not what the final times; not at all where both run them on the same
    engine and settings. So a re-tune does not move an app between settings or variants the cycles cannot tell
    apart (their vectors may differ within the tier). Selection keeps it only while it is eligible and the
    profile's choice is still the one it was compared with. Returns ``{tier:
    {"variant", "settings", "over": {"variant", "settings"}, "since": previous created, "bulk_speedup",
    "bulk_speedup_ci", "batch1_speedup", "batch1_speedup_ci", "batch1_by": "final" | "route duel" | "same
    destination" (no batch-1 figures then)}}`` (ratios of the new choice over the kept one)."""
    final = prof.get("paired") or {}
    cont = final.get("contenders") or {}
    if not previous or not final.get("cycles"):
        return {}

    def timed(choice: Mapping[str, Any]) -> dict[str, list[float]] | None:
        return next(
            (
                c["seconds"]
                for c in cont.values()
                if (c.get("variant") or "") == choice.get("variant")
                and c.get("settings") == plain_settings(choice.get("settings"))  # the final times bulk calls
                and isinstance(c.get("seconds"), Mapping)
                and "error" not in c
            ),
            None,
        )

    def on_bulk_settings(choice: Mapping[str, Any]) -> bool:  # its batch-1 calls are the ones the final timed
        return batch1_destination(choice) == {
            "variant": choice["variant"],
            "settings": plain_settings(choice.get("settings")),
        }

    out: dict[str, Any] = {}
    for tier, was in before.items():
        new = now.get(tier) or {}
        if "variant" not in was or "variant" not in new:
            continue
        pick = {"variant": was["variant"], "settings": was.get("settings") or {}}
        over = {"variant": new["variant"], "settings": new.get("settings") or {}}
        same_bulk = pick["variant"] == over["variant"] and plain_settings(pick["settings"]) == plain_settings(
            over["settings"]
        )  # they differ in static_batch1 alone, which the final does not time: the rounds' rule for it decides
        if same_bulk or not same_files(previous, prof, pick["variant"]):
            continue
        a, b = timed(over), timed(pick)
        if a is None or b is None:
            continue
        ratios = {k: paired_ratios(a[k], b[k]) for k in a if k in b}
        bulk = bulk_cycle_ratios({k: r for k, r in ratios.items() if k != "batch1"})
        one: list[float] | None = None
        if batch1_destination(new) == batch1_destination(was):
            by = "same destination"  # both run their batch-1 calls on one engine: bulk alone decides
        elif on_bulk_settings(new) and on_bulk_settings(was):
            one, by = ratios.get("batch1"), "final"
        else:
            one, by = (duel(batch1_destination(new), batch1_destination(was)) if duel else None), "route duel"
        bulk_ci, one_ci = (_rounded_interval(bulk) if bulk else None), (_rounded_interval(one) if one else None)
        if bulk_ci is None or bulk_ci[0] > 1 or (by != "same destination" and (one_ci is None or one_ci[0] > 1)):
            continue  # too few cycles or passes to tell, or the new choice is faster with confidence
        out[tier] = {
            **pick,
            "over": over,
            "since": previous.get("created"),
            "bulk_speedup": round(statistics.median(bulk), 4),
            "bulk_speedup_ci": bulk_ci,
            **({"batch1_speedup": round(statistics.median(one), 4), "batch1_speedup_ci": one_ci} if one else {}),
            "batch1_by": by,
        }
    return out


ROUTE_PASSES = 10  # passes of the route duel (kept_routes), each over the tune's short and longer queries


def route_duel(
    cls: Any,
    root: Path,
    new: Mapping[str, Any],
    old: Mapping[str, Any],
    work: _Workloads,
    passes: int = ROUTE_PASSES,
) -> list[float]:
    """Two batch-1 destinations (``{"variant", "settings"}``, static batch-1 compilations included) loaded side by
    side and timed in turn over the tune's short and longer queries, one call per query, the order reversed every
    pass (as ``static_pad_duel``). Returns per pass ``new``'s speedup over ``old``: the geometric mean of its
    ratios on the short and on the longer queries, so each length counts once."""
    engines = {
        k: _call(cls.load(root, variant=c["variant"], **c["settings"]), work.task)
        for k, c in (("new", new), ("old", old))
    }
    for run in engines.values():
        for item in (work.latency + work.latency_long) * 2:  # static_batch1 compiles a length the second time
            run([item], 1)
    secs: dict[str, dict[str, list[float]]] = {k: {"short": [], "long": []} for k in engines}
    for _, k in alternating_rounds(list(engines), passes):
        for kind, items in (("short", work.latency), ("long", work.latency_long)):
            t = time.perf_counter()
            for item in items:
                engines[k]([item], 1)
            secs[k][kind].append(time.perf_counter() - t)
    by_kind = [paired_ratios(secs["new"][kind], secs["old"][kind]) for kind in ("short", "long")]
    return [geomean(list(r)) or 0.0 for r in zip(*by_kind)]


def duel_cache(
    cls: Any, root: Path, work: _Workloads, progress: Progress | None = None, record: list[dict] | None = None
) -> Duel:
    """``route_duel`` on ``root`` as a ``Duel`` for ``kept_choices`` and ``kept_routes``: each pair of destinations
    duels once per tune (tiers share them); a destination that fails to load or run gives None. Each duel is
    added to ``record`` (the profile's ``route_duels``): ``{"new", "old", "passes", "speedup", "speedup_ci"}``
    (the median per-pass speedup of new over old, and its interval), or ``{"new", "old", "error"}``."""
    done: dict[str, list[float] | None] = {}

    def duel(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[float] | None:
        key = json.dumps([new, old], sort_keys=True)
        if key not in done:
            if progress:
                progress(f"route duel: {new['variant']} vs {old['variant']}", 0, 1)
            row: dict[str, Any] = {"new": dict(new), "old": dict(old)}
            try:
                done[key] = ratios = route_duel(cls, root, new, old, work)
                speedup = round(statistics.median(ratios), 4) if ratios else None
                row.update(passes=len(ratios), speedup=speedup, speedup_ci=_rounded_interval(ratios))
            except Exception as e:  # a destination that cannot run here is not kept
                done[key] = None
                row["error"] = _failure(e)
            if record is not None:
                record.append(row)
        return done[key]

    return duel


def kept_routes(
    before: Mapping[str, Any],
    now: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    prof: Mapping[str, Any],
    duel: Duel,
) -> dict[str, Any]:
    """The profile's ``kept_routes``: per tier whose bulk choice (variant and settings) is the previous tune's
    (``before``, ``best_choices`` of ``previous``; kept or chosen again) while its batch-1 destination
    (``select.batch1_destination``: its route, else the bulk choice itself) moved, the previous destination,
    unless ``duel`` (``route_duel``) shows the new one faster with confidence (the ``PAIRED_CI_LEVEL`` interval of
    its per-pass speedup above 1; None from the duel: not kept). The previous destination must run unchanged
    files and have been timed in this tune's rounds at its settings. So a re-tune does not move batch-1 calls,
    and with them the vectors of queries, within noise. Selection keeps it only while it still qualifies
    (``select._kept_route``). Returns ``{tier: {"variant", "settings", "over": {"variant", "settings"}, "bulk":
    {"variant", "settings"}, "since": previous created, "passes", "batch1_speedup", "batch1_speedup_ci"}}``
    (speedup of "over" over the kept destination)."""
    if not previous:
        return {}
    variants = prof.get("variants") or {}
    out: dict[str, Any] = {}
    for tier, was in before.items():
        new = now.get(tier) or {}
        if "variant" not in was or "variant" not in new:
            continue
        bulk = {"variant": new["variant"], "settings": new.get("settings") or {}}
        old_dest, new_dest = batch1_destination(was), batch1_destination(new)
        if bulk != {"variant": was["variant"], "settings": was.get("settings") or {}} or old_dest == new_dest:
            continue
        entry = variants.get(old_dest["variant"]) or {}
        if entry.get("status") != "ok" or not same_files(previous, prof, old_dest["variant"]):
            continue  # re-exported since, or not tuned here
        if not any(r.get("settings") == old_dest["settings"] for r in entry.get("runs") or []):
            continue
        ratios = duel(new_dest, old_dest)
        ci = _rounded_interval(ratios) if ratios else None
        if not ratios or ci is None or ci[0] > 1:
            continue  # could not run, too few passes, or the new destination is faster with confidence
        out[tier] = {
            **old_dest,
            "over": new_dest,
            "bulk": bulk,
            "since": previous.get("created"),
            "passes": len(ratios),
            "batch1_speedup": round(statistics.median(ratios), 4),
            "batch1_speedup_ci": ci,
        }
    return out


def bulk_cycle_ratios(ratios: Mapping[str, Sequence[float]]) -> list[float]:
    """Per cycle of the paired final, the geometric mean of a contender's ratios over the bulk workloads
    (``ratios``: per workload, its per-cycle ratios to the reference, from ``paired_ratios``): the bulk speedup is
    their median and its interval theirs, so one cycle's slow spell counts once, whichever workload it hit."""
    rows = list(zip(*ratios.values()))  # cycles every workload has (all of them: a failing contender is dropped)
    return [geomean(list(r)) or 0.0 for r in rows]


def _rounded_interval(values: Sequence[float]) -> list[float] | None:
    iv = median_interval(values, PAIRED_CI_LEVEL)
    return [round(iv[0], 4), round(iv[1], 4)] if iv else None


def paired_ratios(seconds: Sequence[float], base_seconds: Sequence[float]) -> list[float]:
    """One subject's rate over another's in each cycle both ran (same texts, so the rate ratio is the inverse
    ratio of pass times)."""
    return [b / a for a, b in zip(seconds, base_seconds) if a > 0 and b > 0]


def paired_speedup(seconds: Sequence[float], base_seconds: Sequence[float]) -> float | None:
    """Median over cycles of ``paired_ratios``; None when they share no cycle. The harness's interleaved phase
    (stedge bench) ranks by it, and the paired final here takes the same medians."""
    ratios = paired_ratios(seconds, base_seconds)
    return statistics.median(ratios) if ratios else None


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``values``: the k-th smallest and the k-th
    largest value, k the largest for which the interval covers the median with probability >= ``level``
    whatever the values' distribution (the count of values below the median is Binomial(n, 1/2)). None when
    there are too few values for that level (6 for 95 %: then the interval is the smallest to the largest)."""
    if not 0 < level < 1:
        raise InputError(f"level must lie between 0 and 1, got {level!r}")
    x, n = sorted(values), len(values)
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k - 1), the chance the median lies under x[k - 1]
    while k < n // 2:
        nxt = below + math.comb(n, k) / 2**n
        if 1 - 2 * nxt < level:
            break
        k, below = k + 1, nxt
    return (x[k - 1], x[n - k]) if k else None


def interval_min_values(level: float = 0.95) -> int:
    """The fewest values ``median_interval`` gives an interval for at ``level`` (6 at 95 %)."""
    return next(n for n in range(1, 1000) if median_interval(range(n), level))


def _tune_batch_tokens(
    cls: Any,
    root: Path,
    entries: dict[str, Any],
    work: _Workloads,
    rounds: int,
    progress: Progress | None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Time the fastest variant (its settled settings) with each token budget in ``BATCH_TOKEN_GRID`` on a
    large batch of short texts and one of passages, ``rounds`` times in alternating order. The budget is about the
    CPU's caches and the model's width, not the graph's precision, so one variant stands for all. The CPU default,
    or the incumbent (the budget ``previous``, this machine's profile before the tune, settled on, where it is in
    the grid), stays unless
    another budget is ``SETTINGS_GAIN`` faster in every round (select.settled_batch_tokens). None when no variant
    ran."""
    ranked = [
        (twin_bulk_score(run, e["runs"]) or 0.0, name, run["settings"])
        for name, e in entries.items()
        if e["status"] == "ok" and e["runs"]
        for run in [settled_run(e["runs"])]
    ]
    if not ranked:
        return None
    _, name, settings = max(ranked, key=lambda r: r[0])
    model = cls.load(root, variant=name, **settings)
    run = _call(model, work.task)
    run(work.big_short[:8], 8)
    per_round: dict[str, dict[str, list[float]]] = {}
    loads = (("short", work.big_short), ("passage", work.big_passage))
    for i, (_, budget) in enumerate(alternating_rounds(BATCH_TOKEN_GRID, rounds)):
        if progress:
            progress(f"{name}: at most {budget} tokens per call", i, rounds * len(BATCH_TOKEN_GRID))
        model.max_batch_tokens = budget
        for kind, items in loads:
            t = time.perf_counter()
            run(items, len(items))
            rate = len(items) / (time.perf_counter() - t)
            per_round.setdefault(str(budget), {}).setdefault(kind, []).append(round(rate, 2))
    rates = {b: {kind: max(r) for kind, r in by_kind.items()} for b, by_kind in per_round.items()}  # best rounds
    default = default_batch_tokens("cpu")
    was = ((previous or {}).get("batch_tokens") or {}).get("best")
    held = was if was in BATCH_TOKEN_GRID and not isinstance(was, bool) else None
    return {
        "variant": name,
        "settings": settings,
        "batch_sizes": {"short": len(work.big_short), "passage": len(work.big_passage)},
        "rates": rates,
        "rounds": per_round,
        "default": default,
        **({"incumbent": held} if held is not None else {}),
        "best": settled_batch_tokens(rates, default if held is None else held, per_round),
    }


def alternating_rounds(items: Sequence[Any], rounds: int) -> Iterator[tuple[int, Any]]:
    """``(round, item)`` for every item, ``rounds`` times, every other round in reverse order: an item
    measured while the machine was busy gets a second chance at a quieter moment, and a slow drift
    (thermal, a neighbour's job) does not favour the items measured first. The harness runs its
    subjects the same way (``stedge bench``, suite key ``rounds``)."""
    for r in range(rounds):
        for item in items if r % 2 == 0 else items[::-1]:
            yield r, item


def best_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One run from several rounds of the same case: the lowest batch-1 times, the highest bulk rates
    (load from elsewhere only ever slows a measurement down), and how many rounds were taken."""
    out = {
        "batch1_ms_p50": min(r["batch1_ms_p50"] for r in results),
        "batch1_ms_p90": min(r["batch1_ms_p90"] for r in results),
        "bulk": {},
        "rounds": len(results),
    }
    if all("batch1_ms_p50_long" in r for r in results):
        out["batch1_ms_p50_long"] = min(r["batch1_ms_p50_long"] for r in results)
    for r in results:
        for kind, rates in r["bulk"].items():
            for bs, val in rates.items():
                cur = out["bulk"].setdefault(kind, {}).get(bs)
                out["bulk"][kind][bs] = val if cur is None else max(cur, val)
    return out


def _accuracy_here(
    entries: dict[str, Any],
    probes: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    todo: dict,
    task: str = "embedding",
) -> None:
    """What this machine computes, per engine setting (each run's ``batch_invariance_min_cos`` and
    ``min_cos_to_exact``) and per variant (the worst over its settings, for the table): the min cosine of
    the probe texts alone vs inside the mixed batch, and to an exact-tier fp32 variant run here (its first
    setting), over the probe texts alone and in the batch. Export verified the tier on the exporting
    machine's CPU; int8 kernels differ by ISA (an AVX2 CPU without VNNI rounds differently from an AVX-512
    VNNI one), and engine settings can pick other kernels, so the selection holds each setting to its
    tier's bar again with what this machine computes (select.runs_for_tier). A reranker's scores are compared by
    ``similarity.agreement`` (score agreement), on the same scale."""

    def record(name: str, key: str, values: dict[str, float]) -> None:
        entries[name][key] = round(min(values.values()), 6)
        for run in entries[name].get("runs") or []:
            if _fmt(run["settings"]) in values:
                run[key] = round(values[_fmt(run["settings"])], 6)

    for name, by_setting in probes.items():
        if by_setting:
            inv = {k: float(agreement(task, a, b).min()) for k, (a, b) in by_setting.items()}
            record(name, "batch_invariance_min_cos", inv)
    exact = [n for n in probes if probes[n] and variant_tier(todo[n]) == "exact" and todo[n].get("precision") == "fp32"]
    if not exact:
        return
    ref = sorted(exact, key=lambda n: (todo[n].get("backend") != "onnx", n))[0]
    first, (r1, rb) = next(iter(probes[ref].items()))
    for name, by_setting in probes.items():
        cos = {
            k: 1.0
            if (name, k) == (ref, first)
            else min(float(agreement(task, a1, r1).min()), float(agreement(task, ab, rb).min()))
            for k, (a1, ab) in by_setting.items()
            if a1.shape == r1.shape and ab.shape == rb.shape
        }
        if len(cos) > (1 if name == ref else 0):  # the reference against itself alone says nothing
            record(name, "min_cos_to_exact", cos)
            entries[name]["exact_reference"] = ref


def _agreement(probes: dict[str, tuple[np.ndarray, np.ndarray]], task: str = "embedding") -> dict[str, float]:
    """Min cosine (a reranker's: score agreement), over the probe texts, of one variant's output alone vs another's
    in a batch (both ways)."""
    out = {}
    names = sorted(probes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a1, ab), (b1, bb) = probes[a], probes[b]
            if a1.shape != b1.shape:
                continue
            out[f"{a}|{b}"] = round(float(min(agreement(task, a1, bb).min(), agreement(task, b1, ab).min())), 6)
    return out


def _token_counter(model: Any) -> Callable[[list], float]:
    tok = model._tok

    def count(items: list) -> float:
        return round(float(tok.tokens(items).lengths.mean()), 1) if items else 0.0

    return count


def _fmt(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def _runtime_version() -> str:
    from . import __version__

    return __version__


def best_choices(
    root: str | Path,
    tiers: Sequence[str] = ("exact", "near", "compressed"),
    profile: dict[str, Any] | None = None,
    max_memory_mb: float | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """What Encoder.load would choose on this machine for each tier ({tier: Selection dict or error});
    ``profile`` replaces the profile on disk (a measured one not written yet); ``max_memory_mb`` and ``device``
    as in Encoder.load (a device other than the CPU is chosen for by its rule: profiles are the CPU's)."""
    root = Path(root)
    m = Manifest.read(root)
    family = known_device_family(device)
    out: dict[str, Any] = {}
    for tier in tiers:
        try:
            out[tier] = select_variant(
                m.variants,
                family,
                None,
                installed_backends(),
                root,
                tier=tier,
                where=str(root / MANIFEST),
                profile=profile,
                max_memory_mb=max_memory_mb,
            ).to_dict()
        except RuntimeStedgeError as e:
            out[tier] = {"error": str(e)}
    return out


def tier_memory(
    root: str | Path,
    choices: dict[str, Any],
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    progress: Progress | None = None,
    queries: Sequence[str] | None = None,
    reuse: Mapping[str, dict[str, Any]] | None = None,
    probe: bool = True,
    checkpoint: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """What each tier's choice costs in memory here: the peak RSS (MB) of a fresh Python process that runs
    ``Encoder.load(root, tier=...)`` (or Reranker) and the tune's workloads (bulk short texts and passages at
    ``batch_sizes``, then the batch-1 texts (``queries`` where given) twice, one call each, then ``MEMORY_VARIED``
    texts of many lengths at batch 32, 8 and 1). Call it after the profile is on disk: the
    child loads what ``Encoder.load`` would. With a batch-1 route, ``route_off_mb`` is the same with
    ``route=False``. ``growth_mb`` (``route_off_growth_mb``): what the second half of the varied texts added to
    the peak (``_memory_child``). ``choices`` is ``best_choices``'s output; tiers with the same choice share one
    measurement. Returns ``{tier: {"peak_rss_mb", "growth_mb", "route_off_mb", "route_off_growth_mb", "choice"}
    or {"error": ...}}`` (``choice``: the variant, settings and batch-1 route measured, which selection matches
    against). A choice found in ``reuse`` (``reusable_memory``) keeps that entry, with its ``measured`` time, and
    runs no probe; without ``probe``, only those are returned. ``checkpoint(tiers so far)`` after each probe."""
    root = Path(root)
    out: dict[str, Any] = {}
    done: dict[str, dict[str, Any]] = {}
    keys = ("variant", "settings", "latency_variant", "latency_settings", "max_batch_tokens")
    todo = [(t, c) for t, c in choices.items() if "variant" in c]
    for i, (tier, c) in enumerate(todo):
        key = json.dumps({k: c.get(k) for k in keys}, sort_keys=True)
        kept = (reuse or {}).get(_tier_reuse_key(c))
        if key not in done and kept is not None:
            done[key] = dict(kept)
        if key not in done and not probe:
            continue
        probed = key not in done
        if probed:
            if progress:
                progress(f"tier {tier}", i, len(todo))
            got: dict[str, Any] = {"choice": {k: c.get(k) for k in keys[:4]}}
            fields = ((None, "peak_rss_mb", "growth_mb"), (False, "route_off_mb", "route_off_growth_mb"))
            for route, field, grew in fields:
                if route is False and not c.get("latency_variant"):
                    continue
                spec = {"root": str(root), "tier": tier, "route": route, "texts": texts, "queries": queries}
                spec["batch_sizes"] = [*batch_sizes]
                try:
                    got[field], got[grew] = _memory_in_child(spec)
                except RuntimeStedgeError as e:
                    got = {"error": str(e)}
                    break
            done[key] = got
        out[tier] = dict(done[key])
        if probed and checkpoint:
            checkpoint(dict(out))
    return out


def memory_configs(root: str | Path, prof: dict[str, Any]) -> list[dict[str, Any]]:
    """What a memory budget may fall back to (select's ``max_memory_mb``): per tier, each variant ``Encoder.load``
    could choose there from ``prof`` (``eligible_runs``) at the settings that tier would give it, at
    the first settings measured that met the tier (its engine's default), at settings measured for budgets
    alone (``select.budget_only``), and each of those with the static batch-1 compilations where they were timed
    (``static_batch1``: the same bulk calls, faster one-row calls, one engine), without a batch-1 route. Returns
    ``[{"variant", "settings"}]``, each configuration once."""
    paired = paired_scores(prof)
    out: dict[str, dict[str, Any]] = {}
    for eligible in eligible_runs(root, prof).values():
        for name, runs in eligible.items():
            lean = [r for r in runs if budget_only(r["settings"])]
            base = [settled_run(runs, paired.get(name)), (plain_runs(runs) or runs)[0], *lean]
            static = [r for r in runs if any(static_twin_of(r["settings"], b["settings"]) for b in base)]
            for r in (*base, *static):
                out.setdefault(memory_config_key(name, r["settings"]), {"variant": name, "settings": r["settings"]})
    return list(out.values())


def config_memory(
    root: str | Path,
    prof: dict[str, Any],
    tiers: dict[str, Any],
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    progress: Progress | None = None,
    queries: Sequence[str] | None = None,
    reuse: Mapping[str, dict[str, Any]] | None = None,
    probe: bool = True,
    checkpoint: Callable[[list[dict[str, Any]]], Any] | None = None,
) -> list[dict[str, Any]]:
    """The peak RSS (MB) of each of ``memory_configs`` in a fresh process, as ``tier_memory`` measures a tier
    (the variant named, with its settings and the profile's token budget). A tier measurement (``tiers``, from
    ``tier_memory``) of the same configuration is reused: its figure without a route; so is a figure in ``reuse``
    (``reusable_memory``: an earlier tune's, kept with its ``measured`` time); without ``probe``, only those are
    returned. ``checkpoint(configurations so far)`` after each probe. Returns
    ``[{"variant", "settings", "peak_rss_mb", "growth_mb", "measured"?} or {"variant", "settings", "error"}]``."""
    known: dict[str, dict[str, Any]] = {}  # key -> {"peak_rss_mb", "growth_mb", "measured"?}
    for t in tiers.values():
        c = t.get("choice") or {}
        routed = bool(c.get("latency_variant"))
        mb = t.get("route_off_mb") if routed else t.get("peak_rss_mb")
        grew = t.get("route_off_growth_mb") if routed else t.get("growth_mb")
        if isinstance(mb, (int, float)) and c.get("variant"):
            when = {"measured": t["measured"]} if t.get("measured") else {}
            figures = {"peak_rss_mb": float(mb), "growth_mb": grew, **when}
            known[memory_config_key(c["variant"], c.get("settings"))] = figures
    budget = (prof.get("batch_tokens") or {}).get("best")
    todo = memory_configs(root, prof)
    out = []
    for i, c in enumerate(todo):
        key = memory_config_key(c["variant"], c["settings"])
        kept = (reuse or {}).get(key)
        if key not in known and kept is not None:
            known[key] = {k: kept[k] for k in ("peak_rss_mb", "growth_mb", "measured") if k in kept}
        if key not in known and not probe:
            continue
        if key not in known:
            if progress:
                progress(f"{c['variant']} {_fmt(c['settings'])}", i, len(todo))
            spec = {
                "root": str(root),
                "variant": c["variant"],
                "settings": c["settings"],
                "texts": texts,
                "queries": queries,
            }
            spec.update(batch_sizes=[*batch_sizes], max_batch_tokens=budget if isinstance(budget, int) else None)
            try:
                mb, grew = _memory_in_child(spec)
                known[key] = {"peak_rss_mb": mb, "growth_mb": grew}
            except RuntimeStedgeError as e:
                out.append({**c, "error": str(e)})
            else:
                out.append({**c, **known[key]})
            if checkpoint:
                checkpoint(list(out))
            continue
        out.append({**c, **known[key]})
    return out


def memory_basis(
    prof: Mapping[str, Any],
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    queries: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What every memory figure of a tune depends on besides its configuration and its variant's files: the probe's
    method (``MEMORY_PROBE``), the runtime's version, the workloads' texts and queries (fingerprints; None: the
    built-in ones), the bulk batch sizes and the token budget per engine call the probes load with (the profile's
    ``batch_tokens.best``). Kept in the profile's ``memory.basis``; ``reusable_memory`` compares it."""
    budget = (prof.get("batch_tokens") or {}).get("best")
    return {
        "probe": MEMORY_PROBE,
        "runtime": prof.get("runtime"),
        "texts": texts_sha256(list(texts)) if texts else None,
        "queries": texts_sha256(list(queries)) if queries else None,
        "batch_sizes": [int(b) for b in batch_sizes],
        "max_batch_tokens": budget if isinstance(budget, int) else None,
    }


def reusable_memory(
    old: Mapping[str, Any] | None, prof: Mapping[str, Any], basis: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The memory figures of ``old``, this machine's previous profile of the artifact (None: there is none), that
    the tune which made ``prof`` may keep instead of probing again: figures measured on the same ``basis``
    (``memory_basis``; the machine key already covers the CPU, core count and engine versions) whose variants'
    files are the same in both profiles (their sha256). So a re-tune after ``stedge export --add``, or one to
    refresh the timings, probes only configurations it has not measured on these files. Figures that failed or
    lack a peak are not kept. Returns ``{key: entry}``: configurations under ``memory_config_key``, tier choices
    under ``_tier_reuse_key``; each entry with ``measured``, when its probe ran (kept through later re-tunes)."""
    mem = (old or {}).get("memory") or {}
    if not mem or mem.get("basis") != dict(basis):
        return {}

    when = mem.get("created")
    out: dict[str, dict[str, Any]] = {}
    for c in mem.get("configs") or []:
        if (
            "error" not in c
            and isinstance(c.get("peak_rss_mb"), (int, float))
            and same_files(old, prof, c.get("variant"))
        ):
            out[memory_config_key(c["variant"], c.get("settings"))] = {"measured": when, **c}
    for entry in (mem.get("tiers") or {}).values():
        choice = entry.get("choice") or {}
        files = [choice.get("variant"), *([choice["latency_variant"]] if choice.get("latency_variant") else [])]
        unchanged = all(same_files(old, prof, name) for name in files)
        if "error" not in entry and isinstance(entry.get("peak_rss_mb"), (int, float)) and unchanged:
            out[_tier_reuse_key(choice)] = {"measured": when, **entry}
    return out


def measure_memory(
    root: str | Path,
    prof: dict[str, Any],
    previous: Mapping[str, Any] | None = None,
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    progress: Progress | None = None,
    queries: Sequence[str] | None = None,
    save: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """The profile's ``memory`` section for ``prof``: ``tier_memory`` and ``config_memory``, keeping the figures of
    ``previous`` (this machine's profile before the tune; None: none) that ``reusable_memory`` allows.
    ``save(section)`` writes ``prof`` with it: before the first probe (the probes load the profile from disk,
    None: it is there already) with every kept figure, after each probe with what is known so far, both marked
    ``"partial": true``, then with the whole section. So a tune stopped during its probes (a timeout, Ctrl-C)
    leaves what it kept and measured for the next one to keep."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    basis = memory_basis(prof, texts, batch_sizes, queries)
    kept = reusable_memory(previous, prof, basis)
    choices = best_choices(root, profile=prof)

    def section(tiers: dict[str, Any], configs: list[dict[str, Any]], partial: bool) -> dict[str, Any]:
        out = {"created": created, "basis": basis, "tiers": tiers, "configs": configs}
        return {**out, "partial": True} if partial else out

    def keep(tiers: dict[str, Any], configs: list[dict[str, Any]]) -> None:
        if save:
            save(section(tiers, configs, True))

    args = (texts, batch_sizes, None, queries, kept)
    tiers0 = tier_memory(root, choices, *args, probe=False)
    configs0 = config_memory(root, prof, tiers0, *args, probe=False)
    keep(tiers0, configs0)
    args = (texts, batch_sizes, progress, queries, kept)
    tiers = tier_memory(root, choices, *args, checkpoint=lambda t: keep({**tiers0, **t}, configs0))

    def with_kept(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen = {memory_config_key(c["variant"], c.get("settings")) for c in configs}
        return [*configs, *(c for c in configs0 if memory_config_key(c["variant"], c.get("settings")) not in seen)]

    configs = config_memory(root, prof, tiers, *args, checkpoint=lambda c: keep(tiers, with_kept(c)))
    done = section(tiers, configs, False)
    if save:
        save(done)
    return done


def _tier_reuse_key(choice: Mapping[str, Any]) -> str:
    """A tier choice as ``reusable_memory`` files it: its variant, settings and batch-1 route (the token budget is in
    the basis)."""
    keys = ("variant", "settings", "latency_variant", "latency_settings")
    return "tier " + json.dumps({k: choice.get(k) or None for k in keys}, sort_keys=True)


def _probed(spec: dict[str, Any]) -> str:
    """What a memory probe loads, for its errors: a tier or a named variant with settings."""
    return f"tier {spec['tier']}" if "tier" in spec else f"{spec['variant']} ({_fmt(spec.get('settings') or {})})"


def _memory_in_child(spec: dict[str, Any]) -> tuple[float, float]:
    """Run ``_memory_child`` in a fresh interpreter (this one's) and return its peak RSS in MB and what the
    second half of its varied texts added to it (MB)."""
    code = "import sys; from stedge_runtime.tune import _memory_child; _memory_child(sys.stdin.read())"
    env = dict(os.environ)  # this stedge_runtime, wherever this process found it
    home = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
    try:
        res = subprocess.run(  # the spec on stdin: --texts may be longer than one argument may be
            [sys.executable, "-c", code],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=MEMORY_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeStedgeError(f"the memory probe of {_probed(spec)} ran past {MEMORY_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise RuntimeStedgeError(f"the memory probe of {_probed(spec)} could not start {sys.executable}: {e}") from None
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        why = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1][:300]
        raise RuntimeStedgeError(f"the memory probe of {_probed(spec)} failed: {why}")
    got = json.loads(lines[-1])
    mb, grew = got.get("peak_rss_mb"), got.get("growth_mb")
    if not isinstance(mb, (int, float)) or mb <= 0:
        raise RuntimeStedgeError(f"the memory probe of {_probed(spec)} could not read the peak RSS on this OS")
    return float(mb), float(grew)


def _memory_child(spec_json: str) -> None:
    """The child of ``tier_memory`` and ``config_memory``: load one tier's choice (``tier``, ``route``) or one
    variant (``variant``, ``settings``, ``max_batch_tokens``), run the tune's workloads, then the varied texts in
    two halves of all lengths, and print the peak RSS and what the second half added to it: a configuration
    whose memory has leveled off adds next to nothing there (select.GROWING_SHARE)."""
    from .encoder import Encoder, Reranker

    spec = json.loads(spec_json)
    root = Path(spec["root"])
    task = _task_of(root)
    cls = Reranker if task == "reranking" else Encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if "tier" in spec:
            model = cls.load(root, tier=spec["tier"], route=spec["route"])
        else:
            model = cls.load(
                root, variant=spec["variant"], max_batch_tokens=spec.get("max_batch_tokens"), **spec["settings"]
            )
    peak, growth = memory_workloads(model, task, spec.get("texts"), spec["batch_sizes"], spec.get("queries"))
    print(json.dumps({"peak_rss_mb": peak, "growth_mb": growth}), flush=True)


def memory_workloads(
    model: Any,
    task: str,
    texts: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (32,),
    queries: Sequence[str] | None = None,
) -> tuple[float, float]:
    """The memory probe's workloads on a loaded Encoder or Reranker: the tune's bulk texts and passages at
    ``batch_sizes``, its batch-1 texts (``queries`` where given) twice, then ``MEMORY_VARIED`` varied texts in two
    halves of the same lengths (``varied_sweep``). Returns this process's peak RSS (MB) and what the second half
    added to it."""
    work = _Workloads(task, texts, quick=False, queries=queries)
    run = _call(model, task)
    for bs in batch_sizes:
        run(work.short, bs)
        run(work.passage, bs)
    for _ in range(2):  # twice: a static batch-1 compilation is made the second time a length comes
        for item in work.latency + work.latency_long:
            run([item], 1)
    half = len(work.varied) // 2
    peaks = []
    for part in (work.varied[:half], work.varied[half:]):
        varied_sweep(model, task, part)
        peaks.append(machine.peak_rss_bytes() / 2**20)
    return round(peaks[-1], 1), round(peaks[-1] - peaks[0], 1)


def varied_sweep(model: Any, task: str, texts: list, one_at_a_time: int = 2) -> None:
    """Inputs of many shapes: ``texts`` at batch 32, half of them at batch 8 and a quarter one at a time,
    ``one_at_a_time`` times (twice, as the batch-1 texts: static batch-1 compilations for these lengths too)."""
    run = _call(model, task)
    run(texts, 32)
    run(texts[: len(texts) // 2], 8)
    for _ in range(one_at_a_time):
        for item in texts[: len(texts) // 4]:
            run([item], 1)
