"""Which variant runs: precision tiers, this machine's tuning profile, else a rule that knows the CPU.

``select_variant`` is the whole rule (``choose_variant`` in the manifest module returns its ``.variant``):

1. A named variant runs as named (an error when it is unknown or does not fit the device); when its
   verification failed or it is not batch-invariant it still runs, with a warning that says so.
2. Otherwise the **eligible** variants are those whose backend serves the device, whose engine is
   installed, whose verification passed, whose precision tier is at least the requested one
   (``exact`` > ``near`` > ``compressed``), whose batch invariance (``verification.batch_invariance_min_cos``)
   meets the tier (0.99999 for exact, 0.999 otherwise), whose ``cpu_flags_any`` (if any) this CPU has,
   and, for dynamic int8, whose kernel ISA this CPU runs. Everything left out is listed with the reason.
3. With a tuning profile for **this** machine (``tuning/<machine key>.json``, written by ``stedge tune``; profiles
   of other machines are ignored), the fastest eligible variant in bulk runs (geometric mean of sentences/s over the
   measured bulk batches, short and passage-length texts), with the engine's default settings unless another setting
   was at least 10 % faster for it in bulk, over both kinds of text or on one while at least 0.95x on the other
   (``settled_run``: tuning noise must not buy a setting). Where the profile has a paired final (``paired``: the
   close contenders timed side by side, pass after pass), a contender's score is the reference's score times its
   median per-cycle speedup over the reference, so variants a few percent apart are ranked by what was measured
   under the same conditions; where the final timed a variant's default settings beside others, those figures settle
   its settings (``PAIRED_SETTINGS_GAIN``, 5 %). Batch-1 calls go to another variant (or the same one with other
   settings) only when the profile shows it at least 20 % faster at batch 1, on short queries and on the longer ones
   (``batch1_ms_p50_long``: two short texts joined; which engine wins at batch 1 can flip with query length), *and*
   its vectors agree with the bulk variant's to the tier's batch-invariance bound, so a query embedded alone still
   matches documents embedded in bulk. A variant whose vectors on this machine agree with an exact-tier fp32 variant
   run here (``min_cos_to_exact`` in the profile) below the tier's min cosine, or whose alone-vs-batch agreement
   measured here is below the tier's bound, is left out: export verified it on the exporting CPU, and int8 kernels
   round differently by ISA. Both are measured per engine setting (a setting can pick other kernels), and only the
   settings that meet the tier are considered for it (``runs_for_tier``), so an exact-tier bf16 graph may run one
   setting for the exact tier and a faster, slightly less invariant one for near. Variants added after the profile
   was measured are not chosen until ``stedge tune`` runs again (the selection says so), so ``stedge export --add``
   never changes the choice silently. The profile's measured token budget per engine call (``batch_tokens``) comes
   with the choice; without it a CPU gets ``BATCH_TOKENS``.
4. Without a profile, the rule ranks kinds of variant by the CPU (``machine.cpu_class``):
   ``amx``: bf16 > int8 static > int8 per row > int8 > fp32; ``avx512_bf16``: int8 per row > int8 >
   int8 static > bf16 > fp32; other CPUs: int8 per row > int8 > int8 static > fp32 (bf16 is never taken
   on a CPU without avx512_bf16/AMX; dynamic int8 is eligible only where export measured it batch-invariant);
   then weight-only int8, int4 and fp16. Ties: OpenVINO first for bf16 and static int8 on AMX, else ONNX first; then the
   highest optimization level; then the name. GPUs keep their own order (fp16 first). The manifest's
   ``default_variant`` (set by the last export) plays no part.
5. A memory budget (``max_memory_mb``) is checked against what ``stedge tune`` measured here: the peak RSS of a
   fresh process running each tier's choice, and each eligible variant at the settings a tier would give it
   and at its engine's defaults, each also with its static batch-1 compilations where those were timed (profile
   ``memory``). Only a figure whose memory had leveled off by the end of the probe counts as within a budget
   (``still_growing``). A choice over the budget loses its batch-1 route first (keeping static batch-1
   compilations of its settings where they fit: all ``STATIC_BATCH1`` of them, else ``LEAN_STATIC_BATCH1``),
   then gives way to the fastest measured configuration within the budget (by the same ranking); when none fits,
   the lightest runs with a warning, and without figures the budget is not checked (a warning too). Settings
   measured for budgets alone (``budget_only``) run only where the fuller ones they trim do not fit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import machine
from .artifact import backends_for, device_family
from .engines import OpenVINOEngine
from .errors import ArtifactError, DeviceError, InputError
from .profile import find_profile, list_profiles, profile_file

TIERS = ("exact", "near", "compressed")
DEFAULT_TIER = "near"
# The bars of each precision tier (their one owner: the exporter's verification reads them from here).
# Min cosine to PyTorch fp32 (at export) or to an exact-tier variant run on this machine (stedge tune):
MIN_COS = {"exact": 0.9999, "near": 0.99, "compressed": None}
MAX_SPEARMAN_DROP = {"exact": None, "near": 0.2, "compressed": None}  # points, with an eval set
# Batch invariance each tier needs: min cos of a text alone vs inside a mixed batch of 32.
INVARIANCE = {"exact": 0.99999, "near": 0.999, "compressed": 0.999}
SETTINGS_GAIN = 1.1  # a non-default engine setting must be this much faster in bulk to be used
SETTINGS_FLOOR = 0.95  # ... or that much faster on one kind of text and at least this fast on the others
# In the paired final (side by side, medians of per-cycle ratios) the noise is smaller: there a non-default setting of
# a variant timed beside its default replaces it when this much faster (overall, or on one kind of text while at
# least SETTINGS_FLOOR on the others).
PAIRED_SETTINGS_GAIN = 1.05
# Padded tokens per engine call (rows x longest row). On a CPU, small batches stay in cache: MiniLM on a
# 2-core Zen 3, onnxruntime and OpenVINO alike, ran 23-31 % faster at 1024 than at 16384 on passages and
# on large batches of short texts; 512 was within a few % of 1024, 2048 5-14 % slower. GPUs want big batches.
# `stedge tune` measures the budget on the machine (profile key ``batch_tokens``).
BATCH_TOKENS = {"cpu": 1024}
GPU_BATCH_TOKENS = 16384
ROUTE_GAIN = 0.8  # route batch-1 calls when their p50 is at most this share of the bulk variant's
BULK_CLOSE = 0.97  # bulk scores within this share of the best count as equal: the better batch-1 p50 wins
# A memory probe whose second half of varied texts (stedge tune's growth_mb) added more than this share of its peak
# RSS had not leveled off, and a budget does not take it. bf16 MiniLM on the AMX guest: one LATENCY compilation
# added 1.6-1.7 % (and rose 2 MB more over 4,000 more varied texts); THROUGHPUT's two streams 4-4.5 % (26 MB more),
# the near tier's several compilations 9-10 % (206 MB more, still rising) (runtimes/python/README.md#memory).
GROWING_SHARE = 0.03
# OpenVINO's static batch-1 compilations (engine option static_batch1) `stedge tune` times: one per padded query
# length, up to STATIC_BATCH1 lengths; and, for memory budgets alone (``budget_only``), LEAN_STATIC_BATCH1 of them.
# Each costs memory of its own (bf16 MiniLM, LATENCY, on the AMX guest: 357 MB without, 418 / 450 / 481 / 615 MB with
# 2 / 3 / 4 / 8), and queries of about 20 tokens fall in two or three padded lengths (runtimes/python/README.md).
STATIC_BATCH1 = 8
LEAN_STATIC_BATCH1 = 3
# What one-row calls are padded to for those compilations (engine option static_pad): the engine's default first
# (OpenVINOEngine.STATIC_PAD, 16), then the finer padding `stedge tune` times against it, side by side in one process
# (tune.static_pad_duel), and takes where it ran at least STATIC_PAD_GAIN faster. Finer padding means fewer padded
# tokens but more compilations to switch between. On a Zen 4 guest 8 gave a 6-14 % lower p50 than 16 on SciFact
# queries (OpenVINO int8 and bf16, all-MiniLM-L6-v2 and its 3-layer student) and came level or behind on the tune's
# shorter built-in texts; an earlier, unrecorded probe on an AMX guest had 16 ahead (runtimes/python/README.md,
# "Tuning").
STATIC_PADS = (OpenVINOEngine.STATIC_PAD, 8)
STATIC_PAD_GAIN = 1.05
STATIC_KEYS = ("static_batch1", "static_pad")  # engine settings that change one-row calls alone
# Best first, per CPU class (machine.cpu_class) and for other device families.
KIND_ORDER = {
    "amx": ("bf16", "int8-static", "int8-rows", "int8", "fp32", "int8-weights", "int4", "fp16"),
    "avx512_bf16": ("int8-rows", "int8", "int8-static", "bf16", "fp32", "int8-weights", "int4", "fp16"),
    "cpu": ("int8-rows", "int8", "int8-static", "fp32", "int8-weights", "int4", "fp16", "bf16"),
    "cuda": ("fp16", "fp32"),
    "tensorrt": ("fp16", "fp32"),
    "ort-openvino": ("int8", "int8-static", "int8-rows", "fp32", "fp16"),
    "gpu": ("fp16", "int8", "int8-static", "int8-weights", "fp32", "int4"),
    "npu": ("int8", "int8-static", "int8-weights", "fp16", "fp32", "int4"),
    "auto": ("int8", "int8-static", "int8-rows", "fp32", "int8-weights", "fp16", "int4"),
}
# Which dynamic-int8 kernel ISAs a CPU of a given int8_isa runs correctly (avx2 needs reduce_range).
ISA_RUNS = {
    "avx512_vnni": ("avx512_vnni", "avx512", "avx2"),
    "avx512": ("avx512", "avx2"),
    "avx2": ("avx2",),
    "arm64": ("arm64",),
}


@dataclass(frozen=True)
class Selection:
    """What was chosen and why (``Encoder.selection``; ``stedge info`` prints it)."""

    variant: str
    source: str  # "named", "profile" or "rule"
    reason: str
    tier: str | None = None  # requested tier (None when the variant was named)
    variant_tier: str | None = None  # the chosen variant's own tier
    settings: dict[str, Any] = field(default_factory=dict)  # engine settings: the profile's, then the caller's
    latency_variant: str | None = None  # batch-1 calls run here when set
    latency_settings: dict[str, Any] = field(default_factory=dict)
    max_batch_tokens: int | None = None  # the tuned token budget per engine call (None: the device default)
    peak_rss_mb: float | None = None  # what a process running this choice peaked at here (stedge tune), if measured
    max_memory_mb: float | None = None  # the caller's memory budget (None: none)
    profile: str | None = None  # the profile file used
    machine_key: str | None = None
    excluded: dict[str, str] = field(default_factory=dict)  # variant -> why it was not eligible
    notes: tuple[str, ...] = ()  # ignored profiles, untuned variants, routing decisions
    warnings: tuple[str, ...] = ()  # things the caller must be told (RuntimeWarning)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = dataclasses.asdict(self)
        d["notes"], d["warnings"] = list(self.notes), list(self.warnings)
        return d


# ------------------------------------------------------------------ reading variant records
def _get(v: Any, key: str) -> Any:
    """A field of a variant record or its verification: dict, dataclass attribute, or the record's ``extra``."""
    if isinstance(v, Mapping):
        return v.get(key)
    if hasattr(v, key):
        return getattr(v, key)
    extra = getattr(v, "extra", None)
    return extra.get(key) if isinstance(extra, Mapping) else None


def _verification(v: Any) -> Any:
    return _get(v, "verification")


def fits(v: Any, family: str) -> bool:
    """True when the variant's backend serves ``family`` and its ``devices`` list allows it."""
    if _get(v, "backend") not in backends_for(family):
        return False
    devices = [str(d).lower() for d in _get(v, "devices") or []]
    return not devices or family in ("auto", "ort-openvino") or family in devices


def variant_tier(v: Any) -> str | None:
    """The precision tier a variant reached at export (``verification.tier``).

    Artifacts exported before tiers existed: derived from the verification (exact: min cos >= 0.9999;
    near: min cos >= 0.99 and Spearman within 0.2 points; else compressed when it passed); an fp32
    variant without a verification record counts as exact, as the exporter never checked it otherwise.
    """
    ver = _verification(v)
    if ver is None or ver == {}:
        return "exact" if _get(v, "precision") == "fp32" else None
    if _get(ver, "tier") is not None or "tier" in (ver if isinstance(ver, Mapping) else (_get(ver, "extra") or {})):
        tier = _get(ver, "tier")
        return tier if tier in TIERS else None
    if not _get(ver, "passed"):
        return None
    mc = _get(ver, "min_cosine")
    sp, ref = _get(ver, "spearman"), _get(ver, "reference_spearman")
    drop = None if sp is None or ref is None else 100.0 * (ref - sp)
    if mc is not None and mc >= MIN_COS["exact"]:
        return "exact"
    if mc is not None and mc >= MIN_COS["near"] and (drop is None or drop <= MAX_SPEARMAN_DROP["near"]):
        return "near"
    return "compressed"


def batch_invariance(v: Any) -> float | None:
    """``verification.batch_invariance_min_cos`` (None: not measured at export)."""
    ver = _verification(v)
    val = None if ver is None else _get(ver, "batch_invariance_min_cos")
    return float(val) if isinstance(val, (int, float)) else None


def cpu_requirements(v: Any) -> tuple[str, ...]:
    """The CPU flags a variant needs one of (its record's ``cpu_flags_any``, e.g. openvino-bf16's avx512_bf16 /
    amx_bf16); empty when it runs on any CPU its engine runs on."""
    return tuple(_get(v, "cpu_flags_any") or ())


def variant_kind(name: str, v: Any) -> str:
    """What the rule ranks: bf16, int8-static, int8-rows (activations per row at run time), int8 (dynamic),
    int8-weights (weight-only), fp32, fp16 or int4."""
    prec = str(_get(v, "precision") or "")
    if prec != "int8":
        return prec
    q = _get(v, "quantization")
    method = str(_get(q, "method") or "") if isinstance(q, Mapping) else ""
    if method == "static" or "static" in name:
        return "int8-static"
    if method == "weights" or "-weights" in name:
        return "int8-weights"
    if method == "rows" or name.endswith("-rows") or "-rows-" in name:
        return "int8-rows"
    return "int8"


def int8_kernel_isa(name: str, v: Any) -> str | None:
    """The ISA a dynamic-int8 variant was quantized for (``quantization.isa`` or the name suffix)."""
    q = _get(v, "quantization")
    isa = _get(q, "isa") if isinstance(q, Mapping) else None
    if isa:
        return str(isa)
    for cand in ISA_RUNS:
        if name.endswith(f"-{cand}") or f"-{cand}-" in name:
            return cand
    return None


def _tier_ok(have: str | None, want: str) -> bool:
    return have is not None and TIERS.index(have) <= TIERS.index(want)


def _why_not(name: str, v: Any, family: str, installed: set[str], tier: str, flags: set[str]) -> str | None:
    """Why variant ``name`` is not eligible for automatic choice (None: eligible)."""
    if not fits(v, family):
        return f"does not run on {family} (backend {_get(v, 'backend')}, devices {_get(v, 'devices')})"
    if _get(v, "backend") not in installed:
        return f"engine for {_get(v, 'backend')} not installed"
    have = variant_tier(v)
    if have is None:
        return "verification failed or reached no tier"
    if not _tier_ok(have, tier):
        return f"tier {have} is below the requested {tier}"
    inv = batch_invariance(v)
    if inv is not None and inv < INVARIANCE[tier]:
        return f"not batch-invariant (alone vs in a batch: min cos {inv:.5f} < {INVARIANCE[tier]})"
    if inv is None and variant_kind(name, v) == "int8":
        return (
            "dynamic int8 scales activations per batch, so a text's vector depends on its batch-mates, "
            "and this export did not measure it (re-export with this stedge)"
        )
    want_flags = cpu_requirements(v)
    if family == "cpu" and want_flags and not set(want_flags) & flags:
        return f"needs a CPU with one of {', '.join(want_flags)}"
    if family == "cpu" and variant_kind(name, v) == "int8":
        isa = int8_kernel_isa(name, v)
        if isa is not None and isa not in ISA_RUNS.get(machine.int8_isa(flags), ()):
            return f"int8 kernels for {isa}, which this CPU ({machine.int8_isa(flags)}) lacks"
    if family == "cpu" and variant_kind(name, v) == "bf16" and not machine.has_bf16(flags):
        return "bf16 without avx512_bf16 or AMX on this CPU"
    return None


# ------------------------------------------------------------------ the rule (no profile)
def rule_rank(name: str, v: Any, family: str, flags: set[str]) -> tuple:
    """Sort key of the rule without a profile (smaller is better); see the module docstring."""
    cls = machine.cpu_class(flags) if family == "cpu" else family
    order = KIND_ORDER.get(cls if family == "cpu" and cls in KIND_ORDER else family, KIND_ORDER["cpu"])
    kind = variant_kind(name, v)
    rank = order.index(kind) if kind in order else len(order)
    backends = list(backends_for(family))
    if family == "cpu" and cls == "amx" and kind in ("bf16", "int8-static"):
        backends = ["openvino", "onnx"]
    backend = _get(v, "backend")
    opt = str(_get(v, "optimization") or "O0").lstrip("Oo")
    return (rank, -(int(opt) if opt.isdigit() else 0), backends.index(backend) if backend in backends else 9, name)


# ------------------------------------------------------------------ the profile
def geomean(values: list[float]) -> float | None:
    """Geometric mean of positive values (None for none)."""
    return math.exp(sum(math.log(x) for x in values) / len(values)) if values else None


def _bulk_rates(run: dict) -> dict[str, list[float]]:
    """The bulk sentences/s a run measured, per kind of text (short, passage), every bulk batch size."""
    return {
        kind: [float(x) for x in texts.values() if isinstance(x, (int, float)) and x > 0]
        for kind, texts in (run.get("bulk") or {}).items()
        if isinstance(texts, Mapping)
    }


def bulk_score(run: dict) -> float | None:
    """Geometric mean of the bulk sentences/s a run measured (short and passage texts, every bulk batch)."""
    return geomean([x for rates in _bulk_rates(run).values() for x in rates])


def twin_bulk_score(run: dict, runs: list[dict]) -> float | None:
    """``run``'s bulk score where runs are ranked in bulk: from its plain twin's figures where that was timed
    (``plain_twin``: the same bulk calls), else its own."""
    return bulk_score(plain_twin(run, runs) or run)


def _earns_place(run: dict, base: dict) -> bool:
    """Whether a non-default setting was worth using over the default's run ``base``: at least SETTINGS_GAIN
    faster in bulk over every kind of text together, or on one kind (short texts, passages) while at least
    SETTINGS_FLOOR as fast on every other: a setting made for one text length (OpenVINO's
    ``snippets_above``) should not need to gain where it changes nothing."""
    score, score0 = bulk_score(run), bulk_score(base)
    if score0 is None:
        return True
    if score is not None and score >= SETTINGS_GAIN * score0:
        return True
    have, was = _bulk_rates(run), _bulk_rates(base)
    ratios = [geomean(have[k]) / geomean(was[k]) for k in was if was[k] and have.get(k) and len(have[k]) == len(was[k])]
    return len(ratios) == len(was) and max(ratios) >= SETTINGS_GAIN and min(ratios) >= SETTINGS_FLOOR


def plain_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Engine settings without ``static_batch1`` and its ``static_pad`` (STATIC_KEYS), which only change one-row
    calls (bulk figures are the same)."""
    return {k: v for k, v in (settings or {}).items() if k not in STATIC_KEYS}


def plain_runs(runs: list[dict]) -> list[dict]:
    """The runs measured without ``static_batch1`` (the engine's default first), and not for memory budgets
    alone (``budget_only``)."""
    return [
        r for r in runs if not (r.get("settings") or {}).get("static_batch1") and not budget_only(r.get("settings"))
    ]


def budget_only(settings: Mapping[str, Any] | None) -> bool:
    """Settings `stedge tune` measures only as a fallback for memory budgets: OpenVINO's smaller per-shape caches
    (``shape_cache``) and fewer static batch-1 compilations than ``STATIC_BATCH1`` (``LEAN_STATIC_BATCH1``). They
    cost speed only with ever-new input lengths (or queries of more lengths), which the tune's timings do not show,
    so they are never chosen, nor routed to, without a budget."""
    s = settings or {}
    return bool(s.get("shape_cache")) or 0 < (s.get("static_batch1") or 0) < STATIC_BATCH1


def fuller_settings(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings a budget-only setting (``budget_only``) trims: without ``shape_cache``, or with
    ``STATIC_BATCH1`` static batch-1 compilations (None for other settings)."""
    if not budget_only(settings):
        return None
    if settings.get("shape_cache"):
        return {k: v for k, v in settings.items() if k != "shape_cache"}
    return {**settings, "static_batch1": STATIC_BATCH1}


def settings_key(settings: Mapping[str, Any] | None) -> str:
    """A run's engine settings as a key for its bulk figures (``plain_settings``: the paired final times those)."""
    return json.dumps(plain_settings(settings), sort_keys=True)


def _earns_place_paired(fig: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    """``_earns_place`` on the paired final's figures: ``PAIRED_SETTINGS_GAIN`` faster over all bulk workloads, or
    on one kind of text while at least ``SETTINGS_FLOOR`` as fast on every other."""
    if fig["score"] >= PAIRED_SETTINGS_GAIN * base["score"]:
        return True
    have, was = fig.get("kinds") or {}, base.get("kinds") or {}
    ratios = [have[k] / was[k] for k in was if was[k] and have.get(k)]
    return (
        bool(ratios)
        and len(ratios) == len(was)
        and max(ratios) >= PAIRED_SETTINGS_GAIN
        and min(ratios) >= SETTINGS_FLOOR
    )


def settled_run(runs: list[dict], paired: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """The run whose settings a variant gets: the engine's default (the first run `stedge tune` measures)
    unless another setting earned its place (``_earns_place``: ``SETTINGS_GAIN`` faster in bulk, overall or
    on one kind of text without losing on the others). A few percent either way is within a tuning run's
    noise, and a non-default setting that only won by noise (an OpenVINO throughput hint halving batch-1
    speed, say) costs more elsewhere than it gained. Where the paired final timed several settings of the
    variant (``paired``: this variant's figures from ``paired_scores``), those figures decide instead, with the
    smaller margin ``PAIRED_SETTINGS_GAIN``: another setting must beat the default by it, or, where the default
    was too slow to be timed, the rounds' choice. OpenVINO's ``static_batch1`` is judged on batch 1
    alone, as an addition to those settings."""
    plain = plain_runs(runs)
    base = plain[0] if plain else runs[0]
    better = [r for r in plain[1:] if _earns_place(r, base)]
    chosen = max(better, key=lambda r: bulk_score(r) or 0.0) if better else base
    figs = paired or {}
    timed = [(r, figs[settings_key(r.get("settings"))]) for r in plain if settings_key(r.get("settings")) in figs]
    # the final decides against the default where it was timed, else against the rounds' choice (the default was
    # too slow in the rounds to be timed)
    anchor = next((rf for rf in timed if rf[0] is base), None) or next((rf for rf in timed if rf[0] is chosen), None)
    if len(timed) > 1 and anchor is not None:
        win = [(r, fig) for r, fig in timed if r is not anchor[0] and _earns_place_paired(fig, anchor[1])]
        chosen = max(win, key=lambda rf: rf[1]["score"])[0] if win else anchor[0]
    # static_batch1 only changes one-row calls: it joins the chosen settings when it made batch 1 at least
    # SETTINGS_GAIN faster at both query lengths (bulk figures would differ by noise alone).
    for r in runs:
        settings = r.get("settings") or {}
        if budget_only(settings):  # fewer static compilations: for memory budgets alone
            continue
        if static_twin_of(settings, chosen.get("settings") or {}):
            keys = ("batch1_ms_p50", "batch1_ms_p50_long")
            if all(chosen.get(k) and r.get(k) and chosen[k] >= SETTINGS_GAIN * r[k] for k in keys):
                return r
    return chosen


def default_batch_tokens(device: str) -> int:
    """Padded tokens per engine call on ``device`` when nothing was tuned (``BATCH_TOKENS``; the
    ONNX Runtime OpenVINO EP on its CPU counts as a CPU)."""
    family = device_family(device)
    if family == "ort-openvino" and device.partition(":")[2].upper() in ("", "CPU"):
        family = "cpu"
    return BATCH_TOKENS.get(family, GPU_BATCH_TOKENS)


def settled_batch_tokens(rates: Mapping[str, Any], default: int, rounds: Mapping[str, Any] | None = None) -> int:
    """The token budget to use from measured ``{budget: {workload: rate}}``: ``default`` (the CPU's, or the one
    this machine's previous tune settled on) unless another budget was at least ``SETTINGS_GAIN`` faster
    (geometric mean over the workloads), as for settings. With ``rounds`` (``{budget: {workload: [rate per
    round]}}``, where ``default`` has them), it must be that much faster than ``default`` in every round, each
    round's rates against each other: one lucky pass does not move the budget."""
    ok = {
        int(b): {k: float(x) for k, x in (r or {}).items() if isinstance(x, (int, float)) and x > 0}
        for b, r in rates.items()
        if str(b).isdigit()
    }
    kinds = sorted(set.intersection(*(set(r) for r in ok.values()))) if ok else []  # compare like with like
    scores = {b: geomean([r[k] for k in kinds]) for b, r in ok.items() if kinds}
    if not scores:
        return default
    base_rounds = _round_rates(rounds, default, kinds)
    if base_rounds:

        def worst(b: int) -> float:  # its smallest per-round gain over the default
            mine = _round_rates(rounds, b, kinds)
            gains = [geomean([m[k] / d[k] for k in kinds]) or 0.0 for m, d in zip(mine, base_rounds)]
            return min(gains) if gains else 0.0

        best = max((b for b in scores if b != default), key=lambda b: (worst(b), -b), default=None)
        return best if best is not None and worst(best) >= SETTINGS_GAIN else default
    best = max(scores, key=lambda b: (scores[b], -b))
    base = scores.get(default)
    return best if base is None or scores[best] >= SETTINGS_GAIN * base else default


def _round_rates(rounds: Mapping[str, Any] | None, budget: int, kinds: list[str]) -> list[dict[str, float]]:
    """``budget``'s rates per round, ``[{workload: rate}]`` over ``kinds`` (``settled_batch_tokens``' ``rounds``);
    empty where any is missing or not a rate."""
    got = (rounds or {}).get(str(budget))
    cols = [got.get(k) if isinstance(got, Mapping) else None for k in kinds]
    if not kinds or not all(isinstance(c, list) and c for c in cols):
        return []
    if not all(isinstance(x, (int, float)) and x > 0 for c in cols for x in c):
        return []
    return [dict(zip(kinds, row)) for row in zip(*cols)]


def _hash_of(v: Any) -> Any:
    return _get(v, "sha256")


def _tuned(name: str, v: Any, prof: dict) -> tuple[dict | None, str | None]:
    """The profile entry of a variant, or why it cannot be used."""
    entry = (prof.get("variants") or {}).get(name)
    if entry is None:
        return None, "not tuned on this machine"
    if entry.get("sha256") is not None and _hash_of(v) is not None and entry["sha256"] != _hash_of(v):
        return None, "re-exported since it was tuned"
    if entry.get("status") != "ok" or not entry.get("runs"):
        return None, f"failed when tuned ({entry.get('error') or 'no runs'})"
    return entry, None


def runs_for_tier(entry: Mapping[str, Any], tier: str) -> tuple[list[dict], str | None]:
    """The runs (one per engine setting) of a tuned variant whose vectors met ``tier`` on this machine, and
    why the others did not (None when none was left out). Batch invariance and min cos to an exact variant are
    read per run, where the profile has them, else from the variant's worst over its settings (profiles
    written before per-setting figures)."""
    ok: list[dict] = []
    why: list[str] = []
    for r in entry.get("runs") or []:
        inv = r.get("batch_invariance_min_cos", entry.get("batch_invariance_min_cos"))
        here, bar = r.get("min_cos_to_exact", entry.get("min_cos_to_exact")), MIN_COS[tier]
        label = "" if r.get("settings") is None else f" with {r['settings']}"
        if isinstance(inv, (int, float)) and inv < INVARIANCE[tier]:
            why.append(f"not batch-invariant on this machine{label} (tune measured min cos {inv:.6f})")
        elif bar is not None and isinstance(here, (int, float)) and here < bar:
            why.append(
                f"on this machine its vectors{label} agree with the exact-tier {entry.get('exact_reference')} only "
                f"to min cos {here:.4f} (tier {tier} needs {bar}; int8 kernels differ by CPU)"
            )
        else:
            ok.append(r)
    return ok, ("; ".join(why) if why else None)


def _from_profile(
    prof: dict,
    file: Path,
    cands: dict[str, Any],
    tier: str,
    route: bool | None,
    excluded: dict[str, str],
    notes: list[str],
    max_memory_mb: float | None = None,
    warned: list[str] | None = None,
) -> Selection | None:
    """Choose among eligible variants from a profile; None when no eligible variant was tuned. With
    ``max_memory_mb``, the choice must have peaked at most that much here (``_within_memory``); what the
    caller must hear goes to ``warned``."""
    warned = [] if warned is None else warned
    bulk: list[tuple[float, float, str, dict]] = []  # (score, batch-1 p50, name, settings)
    every: list[tuple[float, float, str, dict]] = []  # the same for each setting that met the tier (memory budget)
    lat: list[tuple[float, str, dict, float | None]] = []  # (batch-1 p50, name, settings, p50 on longer queries)
    paired = paired_scores(prof)
    for name, v in cands.items():
        entry, why = _tuned(name, v, prof)
        if entry is None:
            notes.append(f"{name}: {why} (run `stedge tune` to consider it)")
            continue
        runs, why = runs_for_tier(entry, tier)
        if not runs:
            excluded[name] = why
            continue
        if why:
            notes.append(f"{name}: some engine settings left out at tier {tier}: {why}")
        mine = paired.get(name) or {}
        run = settled_run(runs, mine)
        if (scored := _scored(run, mine.get(settings_key(run["settings"])), name, runs)) is not None:
            bulk.append(scored)
        for r in runs:
            if (scored := _scored(r, mine.get(settings_key(r["settings"])), name, runs)) is not None:
                every.append(scored)
            if budget_only(r["settings"]):
                continue
            long = r.get("batch1_ms_p50_long")
            long = float(long) if isinstance(long, (int, float)) else None
            fig = mine.get(settings_key(r["settings"]))
            if fig is not None and fig["settings"] == r["settings"]:
                lat.append((fig["p50"], name, r["settings"], long))  # the final's figure, as for bulk
            elif isinstance(r.get("batch1_ms_p50"), (int, float)):
                lat.append((float(r["batch1_ms_p50"]), name, r["settings"], long))
    if not bulk:
        return None
    best = max(b[0] for b in bulk)
    close = [b for b in bulk if b[0] >= BULK_CLOSE * best]  # within 3 %: take the better batch-1 latency
    score, p50, name, settings = min(close, key=lambda b: (b[1], -b[0], b[2]))
    held = _kept(prof, tier, name, settings, every)
    if held is not None:
        score, p50, name, settings = held[0]
    reason = (held[1] + "; " if held is not None else "") + _profile_reason(prof, tier, name, settings, paired)
    others = sorted({b[2] for b in bulk} - {name})
    if others:
        reason += f"; also tuned: {', '.join(others)}"
    sel: dict[str, Any] = {}
    budget = (prof.get("batch_tokens") or {}).get("best")
    if isinstance(budget, int) and budget >= 1:
        sel["max_batch_tokens"] = budget
        notes.append(f"bulk batches of at most {budget} padded tokens (tuned on this machine)")
    mine: list[str] = []  # notes on this choice's route and memory: they go if a memory budget changes it
    sel.update(_batch1_route(prof, tier, route, name, settings, p50, lat, mine))
    section = prof.get("memory") or {}
    mem = (section.get("tiers") or {}).get(tier) or {}
    if (note := _memory_note(mem, route, name, settings, sel, bool(section.get("partial")))) is not None:
        mine.append(note)
    measured = _measured_configs(prof)
    peak, peak_growing = _peak_of(mem, *measured, route, name, settings, sel)
    first, current = (name, settings, sel), (name, settings, sel, peak, reason)
    said: list[str] = []
    if max_memory_mb is not None:
        name, settings, sel, peak, reason = _within_memory(
            prof, tier, max_memory_mb, current, peak_growing, every, measured, paired, said, warned
        )
    notes.extend((mine if (name, settings, sel) == first else []) + said)
    return Selection(
        variant=name,
        source="profile",
        reason=reason,
        tier=tier,
        variant_tier=variant_tier(cands[name]),
        settings=dict(settings),
        profile=str(file),
        peak_rss_mb=peak,
        max_memory_mb=max_memory_mb,
        **sel,
    )


def _kept(
    prof: dict, tier: str, name: str, settings: dict, every: list[tuple[float, float, str, dict]]
) -> tuple[tuple[float, float, str, dict], str] | None:
    """The tier's choice that `stedge tune` kept from this machine's previous tune (the profile's ``kept``,
    ``stedge_runtime.tune.kept_choices``: the paired final could not tell the new choice from it), with the reason
    to quote; None where there is none, the profile's choice is not the one it was compared with, or it is no
    longer eligible here (``every``: each setting that met the tier)."""
    k = (prof.get("kept") or {}).get(tier)
    if not isinstance(k, Mapping) or k.get("over") != {"variant": name, "settings": settings}:
        return None
    entry = next((e for e in every if e[2] == k.get("variant") and e[3] == k.get("settings")), None)
    if entry is None:
        return None
    level = (prof.get("paired") or {}).get("ci_level", 0.95)
    why = (
        f"kept from this machine's tune of {k.get('since')}: the paired final could not tell the new fastest, "
        f"{name} {settings}, from it ({k.get('bulk_speedup', 0):.3f}x it in bulk"
        + interval_text(k.get("bulk_speedup_ci"), level)
        + (
            ", batch-1 calls on the same engine"
            if k.get("batch1_by") == "same destination"
            else f", {k.get('batch1_speedup', 0):.3f}x at batch 1"
            + (" in a route duel" if k.get("batch1_by") == "route duel" else "")
            + interval_text(k.get("batch1_speedup_ci"), level)
        )
        + "; `stedge tune --fresh-choices` chooses afresh)"
    )
    return entry, why


def batch1_destination(choice: Mapping[str, Any]) -> dict[str, Any]:
    """Where a choice (``Selection.to_dict()``) runs its batch-1 calls: ``{"variant", "settings"}``, its batch-1
    route where it has one, else its bulk variant and settings."""
    if choice.get("latency_variant"):
        return {"variant": choice["latency_variant"], "settings": dict(choice.get("latency_settings") or {})}
    return {"variant": choice.get("variant"), "settings": dict(choice.get("settings") or {})}


def _kept_route(
    prof: dict,
    tier: str,
    name: str,
    settings: dict,
    fresh: dict[str, Any],
    lat: list[tuple[float, str, dict, float | None]],
) -> tuple[dict[str, Any], str] | None:
    """The batch-1 destination `stedge tune` kept for the tier from this machine's previous tune (the profile's
    ``kept_routes``, ``stedge_runtime.tune.kept_routes``: its route duel could not tell the fresh destination
    faster), as (route, reason); None where there is none, the bulk choice or the fresh destination is not the one
    it was judged with, or the kept destination no longer qualifies: it must have been timed here at the tier
    (``lat``; the bulk choice itself always is) and its vectors must agree with the bulk variant's."""
    k = (prof.get("kept_routes") or {}).get(tier)
    if not isinstance(k, Mapping) or k.get("bulk") != {"variant": name, "settings": settings}:
        return None
    if k.get("over") != batch1_destination({"variant": name, "settings": settings, **fresh}):
        return None
    dest = {"variant": k.get("variant"), "settings": k.get("settings")}
    level = (prof.get("paired") or {}).get("ci_level", 0.95)
    since = (
        f"kept from this machine's tune of {k.get('since')}: its route duel could not tell "
        f"{k['over']['variant']} {k['over']['settings']} faster ({k.get('batch1_speedup', 0):.3f}x it"
        + interval_text(k.get("batch1_speedup_ci"), level)
        + "; `stedge tune --fresh-choices` chooses afresh)"
    )
    if dest == {"variant": name, "settings": settings}:
        return {}, f"batch-1 calls stay on {name} {settings}: {since}"
    timed = next((x for x in lat if (x[1], x[2]) == (dest["variant"], dest["settings"])), None)
    agree = _agreement(prof, name, str(dest["variant"]))
    if timed is None or (dest["variant"] != name and (agree is None or agree < INVARIANCE[tier])):
        return None
    why = f"batch-1 calls go to {dest['variant']} {dest['settings']} (batch-1 p50 {timed[0]:.2f} ms"
    why += ")" if dest["variant"] == name else f"; min cos to {name}: {agree})"
    return dict(latency_variant=dest["variant"], latency_settings=dict(dest["settings"])), f"{why}: {since}"


def _batch1_route(
    prof: dict,
    tier: str,
    route: bool | None,
    name: str,
    settings: dict,
    p50: float,
    lat: list[tuple[float, str, dict, float | None]],
    notes: list[str],
) -> dict[str, Any]:
    """Where batch-1 calls go when not to the bulk choice ``name``: ``{latency_variant, latency_settings}`` or {}.
    ``lat`` holds (batch-1 p50 on short queries, variant, settings, p50 on the longer queries or None). With
    ``route`` None, a route the profile kept from this machine's previous tune (``_kept_route``) replaces the
    fresh decision, and its note the fresh decision's notes."""
    out: dict[str, Any] = {}
    said: list[str] = []
    # Routing must pay on short queries and on the longer ones (profiles from before those were timed: short only).
    own_long = next((x[3] for x in lat if (x[1], x[2]) == (name, settings)), None)
    faster = [x for x in lat if (x[1], x[2]) != (name, settings) and x[0] <= ROUTE_GAIN * p50]
    both = [x for x in faster if own_long is None or x[3] is None or x[3] <= ROUTE_GAIN * own_long]
    if faster and not both:
        f50, fname, _, flong = min(faster, key=lambda x: (x[0], x[1]))
        said.append(
            f"batch-1 calls would be faster on {fname} for short queries (p50 {f50:.2f} ms vs {p50:.2f} ms) but not "
            f"on longer ones ({flong:.2f} ms vs {own_long:.2f} ms); not routed"
        )

    def agrees(x: tuple) -> bool:
        agree = _agreement(prof, name, x[1])
        return x[1] == name or (agree is not None and agree >= INVARIANCE[tier])

    # The fastest route whose vectors agree with the bulk variant's (route=True: the fastest of all).
    fine = both if route else [x for x in both if agrees(x)]
    top = min(both, key=lambda x: (x[0], x[1])) if both else None
    if top is not None and top not in fine:
        agree = _agreement(prof, name, top[1])
        said.append(
            f"batch-1 calls would be faster on {top[1]} (batch-1 p50 {top[0]:.2f} ms vs {p50:.2f} ms) but its vectors "
            f"differ from {name}'s (min cos {agree}, needs {INVARIANCE[tier]}); not routed there (route=True forces it)"
        )
    if fine:
        lp50, lname, lsettings, _ = min(fine, key=lambda x: (x[0], x[1]))
        gain = f"batch-1 p50 {lp50:.2f} ms vs {p50:.2f} ms"
        agree = _agreement(prof, name, lname)
        if route is False:
            said.append(f"batch-1 calls would be faster on {lname} {lsettings} ({gain}); not routed (route=False)")
        else:
            out = dict(latency_variant=lname, latency_settings=dict(lsettings))
            said.append(
                f"batch-1 calls go to {lname} {lsettings} ({gain}"
                + (")" if lname == name else f"; min cos to {name}: {agree})")
            )
    held = _kept_route(prof, tier, name, settings, out, lat) if route is None else None
    if held is not None:
        out, why = held
        said = [why]
    notes.extend(said)
    return out


# ------------------------------------------------------------------ a memory budget (max_memory_mb)
# Said where a figure is missing from a memory section marked "partial" (stedge_runtime.tune.measure_memory).
PROBES_STOPPED = (
    "stedge tune was stopped during its memory probes; run it again to measure the rest (it keeps the figures it has)"
)


def memory_config_key(variant: str, settings: Mapping[str, Any] | None) -> str:
    """A configuration measured for memory: one variant with its engine settings, no batch-1 route."""
    return f"{variant} {json.dumps(dict(settings or {}), sort_keys=True)}"


def still_growing(peak_mb: Any, growth_mb: Any) -> bool:
    """Whether a memory probe's second half of varied texts added more than GROWING_SHARE of its peak (stedge
    tune's ``growth_mb``): its memory had not leveled off, so the peak says little of a longer run. Figures from
    before the measure (no growth) count as leveled off."""
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (peak_mb, growth_mb))
    return ok and growth_mb > GROWING_SHARE * peak_mb


def _measured_configs(prof: dict) -> tuple[dict[str, float], set[str]]:
    """``{memory_config_key: peak RSS MB}`` from the profile's ``memory.configs`` (stedge tune's children), and
    the keys of those still growing at the end of their probe (``still_growing``)."""
    out: dict[str, float] = {}
    growing: set[str] = set()
    for c in (prof.get("memory") or {}).get("configs") or []:
        if isinstance(c, Mapping) and isinstance(c.get("variant"), str):
            mb = c.get("peak_rss_mb")
            if isinstance(mb, (int, float)) and mb > 0:
                key = memory_config_key(c["variant"], c.get("settings"))
                out[key] = float(mb)
                if still_growing(mb, c.get("growth_mb")):
                    growing.add(key)
    return out, growing


def _scored(
    run: dict, fig: Mapping[str, Any] | None, name: str, runs: list[dict]
) -> tuple[float, float, str, dict] | None:
    """(bulk score, batch-1 p50, name, settings) of one of the variant's ``runs``, from the paired final where it
    timed these settings (its batch-1 figure only where it ran these very settings), else the rounds' bulk score
    (``twin_bulk_score``: a static twin's is its plain run's); None without a bulk score."""
    score = fig["score"] if fig is not None else twin_bulk_score(run, runs)
    p50 = fig["p50"] if fig is not None and fig["settings"] == run["settings"] else run.get("batch1_ms_p50")
    if score is None:
        return None
    return (score, float(p50) if isinstance(p50, (int, float)) else math.inf, name, run["settings"])


def plain_twin(run: dict, runs: list[dict]) -> dict | None:
    """The run of ``run``'s settings without ``static_batch1`` (None when ``run`` has none, or it was not timed).
    Its bulk calls are the same, so its bulk figures score ``run`` wherever runs are ranked in bulk (selection, the
    paired final's contenders, the token budget's variant): the rounds time the same bulk calls once per static
    twin, and the best of several such passes would favour settings by the luck of their repeats."""
    return next((r for r in runs if static_twin_of(run["settings"], r["settings"])), None)


def static_twin_of(settings: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
    """Whether ``settings`` are ``plain`` with static batch-1 compilations added (``static_batch1``, and maybe
    their ``static_pad``): the same bulk calls, faster one-row calls."""
    return bool(settings.get("static_batch1")) and plain_settings(settings) == dict(plain)


def _peak_of(
    entry: Mapping[str, Any],
    configs: Mapping[str, float],
    growing: set[str],
    route: bool | None,
    name: str,
    settings: dict,
    sel: dict,
) -> tuple[float | None, bool]:
    """What a process running this choice peaked at here, and whether it was still growing then: the tier's memory
    ``entry`` where it measured this very choice (batch-1 route included), else the figure of the bulk
    configuration alone (``configs``, ``growing``) when nothing is routed."""
    if _measured_this(entry, route, name, settings, sel) and isinstance(entry.get("peak_rss_mb"), (int, float)):
        return float(entry["peak_rss_mb"]), still_growing(entry["peak_rss_mb"], entry.get("growth_mb"))
    if sel.get("latency_variant") is not None:
        return None, False
    key = memory_config_key(name, settings)
    return configs.get(key), key in growing


def _memory_note(
    mem: Mapping[str, Any], route: bool | None, name: str, settings: dict, sel: dict, partial: bool = False
) -> str | None:
    """The note on a tier's memory (``mem``, the profile's ``memory.tiers[tier]``) for this choice: its peak RSS where
    the tune measured this very choice, else that it has not been measured; without a figure, None, or where the
    tune was stopped during its memory probes (``partial``: the section's mark), that."""
    peak = mem.get("peak_rss_mb")
    if not isinstance(peak, (int, float)):
        return f"peak RSS not measured: {PROBES_STOPPED}" if partial and "error" not in mem else None
    if not _measured_this(mem, route, name, settings, sel):
        was = (mem.get("choice") or {}).get("variant") or "another"
        return (
            f"peak RSS not measured for this choice: stedge tune measured {peak:.0f} MB for this tier's choice then "
            f"({was}); run `stedge tune` to measure it"
        )
    off = mem.get("route_off_mb")
    grew = " and still growing" if still_growing(peak, mem.get("growth_mb")) else ""
    return (
        f"peak RSS of a process running this tier's choice here: {peak:.0f} MB{grew}"
        + (f" ({off:.0f} MB with route=False)" if isinstance(off, (int, float)) else "")
        + " (stedge tune's workloads)"
    )


def _measured_this(entry: Mapping[str, Any], route: bool | None, name: str, settings: dict, sel: dict) -> bool:
    """Whether the tier's memory ``entry`` measured this very choice (variant, settings and batch-1 route): a choice
    changed since (an export with --add, a variant re-exported) keeps the tier's old figure until the next tune."""
    lv, ls = sel.get("latency_variant"), sel.get("latency_settings") or {}
    measured = entry.get("choice")
    if isinstance(measured, Mapping):
        keys = ("variant", "settings", "latency_variant", "latency_settings")
        return [measured.get(k) or None for k in keys] == [name, settings or None, lv, ls or None]
    return route is None  # profiles before the choice was recorded measured Encoder.load(tier=tier), route=None


def _within_memory(
    prof: dict,
    tier: str,
    budget: float,
    current: tuple[str, dict, dict, float | None, str],
    current_growing: bool,
    every: list[tuple[float, float, str, dict]],
    measured: tuple[Mapping[str, float], set[str]],
    paired: Mapping[str, Mapping[str, Any]],
    notes: list[str],
    warned: list[str],
) -> tuple[str, dict, dict, float | None, str]:
    """The choice ``current`` (name, settings, route and token budget, peak MB, reason) under a memory budget:
    kept when it peaked within ``budget`` MB here and had leveled off (not ``current_growing``); else the same
    without its batch-1 route, when that fits (with static batch-1 compilations of its settings, where those were
    measured and fit too); else the fastest configuration of ``every`` (each eligible variant and setting at this
    tier; a static_batch1 setting scored in bulk as its settings without it, ``plain_twin``) that `stedge tune`
    measured within the budget and leveled off, by the same rule as without one; else the lightest measured, with
    a warning. Without memory figures, a warning
    that the budget was not checked. ``measured``: the profile's figures and those still growing
    (``_measured_configs``); ``paired``: its ``paired_scores``."""
    name, settings, sel, peak, reason = current
    configs, growing = measured

    def fits(key: str) -> bool:  # measured here within the budget, and leveled off
        return configs.get(key, math.inf) <= budget and key not in growing

    if peak is not None and peak <= budget and not current_growing:
        notes.append(f"max_memory_mb={budget:g}: this choice peaked at {peak:.0f} MB here, within it")
        return current
    stopped = bool((prof.get("memory") or {}).get("partial"))
    if peak is None and not configs:
        why = PROBES_STOPPED if stopped else "run `stedge tune` without --no-memory or --quick"
        warned.append(
            f"max_memory_mb={budget:g} was not checked: this machine's tuning profile has no memory figures ({why})"
        )
        return current
    was = f"{name} {settings}" + (
        f" (with batch-1 calls on {sel['latency_variant']})" if "latency_variant" in sel else ""
    )
    was += f" peaked at {peak:.0f} MB here" if peak is not None else " has no memory figure here"
    if peak is None and stopped:
        was += f" ({PROBES_STOPPED})"
    if current_growing:
        was += " and was still growing at the end of stedge tune's probe (a budget takes only what leveled off)"
    plain = {k: v for k, v in sel.items() if k not in ("latency_variant", "latency_settings")}
    key = memory_config_key(name, settings)
    alone = configs.get(key)
    if "latency_variant" in sel and fits(key):
        # same bulk calls, one-row calls static: the most static compilations that fit
        twins = [e[3] for e in every if e[2] == name and static_twin_of(e[3], settings)]
        twins = [t for t in twins if fits(memory_config_key(name, t))]
        if twins:
            twin = max(twins, key=lambda t: t["static_batch1"])
            tk = memory_config_key(name, twin)
            notes.append(
                f"max_memory_mb={budget:g}: {was}; without its batch-1 route, with static batch-1 compilations "
                f"{configs[tk]:.0f} MB: route off, {twin}"
            )
            why = f"within max_memory_mb={budget:g}: " + _profile_reason(prof, tier, name, twin, paired)
            return name, dict(twin), plain, configs[tk], why
        notes.append(f"max_memory_mb={budget:g}: {was}; without its batch-1 route {alone:.0f} MB: route off")
        return name, settings, plain, alone, reason
    sized = [(e, configs[k]) for e in every if (k := memory_config_key(e[2], e[3])) in configs]
    fit = [(e, mb) for e, mb in sized if fits(memory_config_key(e[2], e[3])) and not _lean_needless(e[2], e[3], fits)]
    if not sized:
        head = f"max_memory_mb={budget:g} " + ("is exceeded" if peak is not None else "was not checked")
        warned.append(f"{head}: {was}, and no other tier-{tier} configuration was measured (run `stedge tune`)")
        return current
    if fit:
        top = max(e[0] for e, _ in fit)
        (score, _, new, st), mb = min(
            ((e, mb) for e, mb in fit if e[0] >= BULK_CLOSE * top), key=lambda x: (x[0][1], -x[0][0], x[0][2])
        )
        notes.append(
            f"max_memory_mb={budget:g}: {was}; the fastest tier-{tier} configuration within it: {new} {st} "
            f"({mb:.0f} MB)" + _passed_over(sized, growing, budget, score)
        )
    else:
        (score, _, new, st), mb = min(sized, key=lambda x: (x[1], -x[0][0]))
        if (new, st) != (name, settings):
            lightest = f"{new} {st}, which peaked at {mb:.0f} MB"
        else:
            lightest = "it" + (f" without its batch-1 route ({mb:.0f} MB)" if "latency_variant" in sel else "")
        warned.append(
            f"no tier-{tier} configuration measured here fits max_memory_mb={budget:g}: {was}; running the lightest, "
            f"{lightest} (a lower tier, or a smaller variant exported, may fit)"
        )
    return (
        new,
        dict(st),
        plain,
        mb,
        f"within max_memory_mb={budget:g}: " + _profile_reason(prof, tier, new, st, paired),
    )


def _passed_over(
    sized: list[tuple[tuple[float, float, str, dict], float]], growing: set[str], budget: float, score: float
) -> str:
    """The note's tail naming faster configurations within ``budget`` that a budget passed over as still growing."""
    over = [
        f"{e[2]} {e[3]} ({mb:.0f} MB)"
        for e, mb in sorted(sized, key=lambda x: -x[0][0])
        if mb <= budget and e[0] > score and memory_config_key(e[2], e[3]) in growing
    ]
    return f"; faster but still growing at the end of the probe: {', '.join(over)}" if over else ""


def _lean_needless(name: str, settings: Mapping[str, Any], fits: Callable[[str], bool]) -> bool:
    """A budget-only setting (``budget_only``) where the fuller settings it trims (``fuller_settings``) fit the
    budget too (``fits``: measured within it and leveled off): the tune's timings cannot tell the two apart (they
    differ only on inputs of ever-new lengths, or queries of more lengths, where the lean ones are slower), so the
    budget runs the full caches and compilations."""
    full = fuller_settings(settings)
    return full is not None and fits(memory_config_key(name, full))


def _profile_reason(prof: dict, tier: str, name: str, settings: dict, paired: Mapping[str, Mapping[str, Any]]) -> str:
    """Why the profile chose ``name``: its rates and batch-1 p50 in the rounds, and its paired-final figures where
    the final timed these settings (``paired``: ``paired_scores``). A static twin (``static_batch1``) quotes the
    bulk figures of its settings without it, which scored it."""
    runs = prof["variants"][name]["runs"]
    run = next(r for r in runs if r["settings"] == settings)
    twin = plain_twin(run, runs)
    rates = ", ".join(
        f"{kind} bs={bs} {val:.0f}/s" for kind, d in ((twin or run).get("bulk") or {}).items() for bs, val in d.items()
    )
    reason = (
        f"fastest {tier}-tier variant in bulk on this machine per its tuning profile ({rates}"
        + (" without static batch-1 compilations, the same bulk calls" if twin is not None else "")
        + f"; bs=1 p50 {run['batch1_ms_p50']:.2f} ms)"
    )
    if settings_key(settings) in (paired.get(name) or {}):
        final = prof["paired"]
        ref = final["reference"]
        cid, c = next(
            (k, c)
            for k, c in final["contenders"].items()
            if (c.get("variant") or k) == name and settings_key(c.get("settings")) == settings_key(settings)
        )
        level = final.get("ci_level", 0.95)
        reason += (
            f"; paired final ({final['cycles']} cycles): reference {ref}"
            if cid == ref
            else f"; paired final ({final['cycles']} cycles): {c['bulk_speedup']:.3f}x {ref} in bulk"
            + interval_text(c.get("bulk_speedup_ci"), level)
            + (
                ""
                if settings.get("static_batch1")
                else f", {c['batch1_speedup']:.3f}x at batch 1" + interval_text(c.get("batch1_speedup_ci"), level)
            )
        )
    return reason


def interval_text(interval: Any, level: float = 0.95) -> str:
    """A paired-final median's confidence interval as text: `` (95 % CI 0.91-1.04, within noise)`` (within noise:
    it spans 1, so the cycles did not tell the contender from the reference); empty where there is none (fewer
    than 6 cycles, or a profile written before the final kept intervals)."""
    ok = isinstance(interval, (list, tuple)) and len(interval) == 2
    if not ok or not all(isinstance(v, (int, float)) for v in interval):
        return ""
    lo, hi = interval
    return f" ({level * 100:.0f} % CI {lo:.2f}-{hi:.2f}" + (", within noise)" if within_noise(interval) else ")")


def within_noise(interval: Any) -> bool:
    """Whether a paired-final interval spans 1: the cycles did not tell the contender from the reference (False
    without an interval)."""
    return isinstance(interval, (list, tuple)) and len(interval) == 2 and interval[0] <= 1 <= interval[1]


def paired_scores(prof: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {settings_key: {"score", "p50", "settings", "kinds"}}}`` from the profile's paired final, on the
    scale of the rounds: the reference's run times each contender's median per-cycle speedup over it (``score``:
    in bulk; ``p50``: at batch 1, its p50 over the batch-1 speedup; ``kinds``: the speedup per kind of text, short
    and passage). A variant may have been timed at several settings. Empty when the profile has no usable final
    (none, fewer than two contenders timed, or a reference with no run in the rounds at the settings it ran).
    Contenders are keyed by an id (the variant's name for its first settings); profiles written before settings
    were paired key them by variant name and have no ``variant`` field."""
    final = prof.get("paired")
    if not isinstance(final, Mapping) or not final.get("cycles"):
        return {}
    ref, cont = final.get("reference"), final.get("contenders")
    if not isinstance(cont, Mapping) or not isinstance(cont.get(ref), Mapping):
        return {}
    ref_c = cont[ref]
    entry = (prof.get("variants") or {}).get(ref_c.get("variant") or ref)
    if not isinstance(entry, Mapping) or not entry.get("runs"):
        return {}
    base = next((r for r in entry["runs"] if r.get("settings") == ref_c.get("settings")), None)
    if base is None:
        return {}
    score, p50 = bulk_score(base), base.get("batch1_ms_p50")
    if score is None or not isinstance(p50, (int, float)):
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cid, c in cont.items():
        bulk, one = c.get("bulk_speedup"), c.get("batch1_speedup")
        if isinstance(bulk, (int, float)) and isinstance(one, (int, float)) and bulk > 0 and one > 0:
            per_kind: dict[str, list[float]] = {}
            for key, v in (c.get("speedup") or {}).items():
                if key != "batch1" and isinstance(v, (int, float)) and v > 0:
                    per_kind.setdefault(key.split(" ", 1)[0], []).append(float(v))
            out.setdefault(c.get("variant") or cid, {})[settings_key(c.get("settings"))] = {
                "score": score * float(bulk),
                "p50": float(p50) / float(one),
                "settings": c.get("settings"),
                "kinds": {k: geomean(v) for k, v in per_kind.items()},
            }
    return out


def _agreement(prof: dict, a: str, b: str) -> float | None:
    agree = prof.get("agreement") or {}
    val = agree.get(f"{a}|{b}", agree.get(f"{b}|{a}"))
    return float(val) if isinstance(val, (int, float)) else None


# ------------------------------------------------------------------ entry point
def select_variant(
    variants: Mapping[str, Any],
    family: str,
    name: str | None = None,
    installed: set[str] | None = None,
    root: str | os.PathLike | None = None,
    tier: str | None = None,
    flags: set[str] | None = None,
    key: str | None = None,
    use_profile: bool = True,
    route: bool | None = None,
    where: str = "stedge.json",
    profile: dict | None = None,
    max_memory_mb: float | None = None,
) -> Selection:
    """Choose the variant to run (see the module docstring); ``root`` is the artifact folder (for profiles).

    ``flags``/``key`` default to this machine's CPU flags and machine key (tests pass fakes).
    ``route``: None routes batch-1 calls only when the vectors agree, True whenever faster (at both query
    lengths), False never.
    ``profile`` is a profile dict to use instead of the one on disk (``stedge tune --dry-run``).
    ``max_memory_mb``: the choice must have peaked at most that many MB in `stedge tune`'s memory probe here
    (``_within_memory``); without memory figures, or for a named variant, it is not checked (said so).
    """
    tier = tier or DEFAULT_TIER
    if tier not in TIERS:
        raise ArtifactError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if max_memory_mb is not None and (
        isinstance(max_memory_mb, bool) or not isinstance(max_memory_mb, (int, float)) or not max_memory_mb > 0
    ):
        raise InputError(f"max_memory_mb must be a number of MB > 0 (or None), got {max_memory_mb!r}")
    installed = set(installed or ())
    numpy_flags = flags is None and family == "cpu" and machine.flags_source() == "numpy"
    flags = machine.cpu_flags() if flags is None else set(flags)
    if name is not None:
        sel = _named(variants, name, family, tier, flags, installed, where)
        if max_memory_mb is not None:
            sel = dataclasses.replace(
                sel, notes=(f"max_memory_mb={max_memory_mb:g} is not applied to a named variant",)
            )
        return sel
    excluded = {n: why for n, v in variants.items() if (why := _why_not(n, v, family, installed, tier, flags))}
    cands = {n: v for n, v in variants.items() if n not in excluded}
    if not cands:
        raise DeviceError(
            f"{where}: no variant fits device {family!r} at tier {tier!r} with the installed engines "
            f"({', '.join(sorted(installed)) or 'none'}): "
            + "; ".join(f"{n}: {why}" for n, why in excluded.items())
            + ". Pass tier='compressed', name a variant, or export one that fits"
        )
    notes: list[str] = []
    warned: list[str] = []
    sel = None
    if use_profile and root is not None and family == "cpu":
        sel = _profile_choice(Path(root), cands, tier, route, excluded, notes, key, profile, max_memory_mb, warned)
    if sel is None and max_memory_mb is not None:
        warned.append(
            f"max_memory_mb={max_memory_mb:g} was not checked: no tuning profile with memory figures for this "
            f"machine{'' if family == 'cpu' else ' (profiles are for CPUs)'} (run `stedge tune`)"
        )
    if sel is None:
        best = sorted(cands, key=lambda n: rule_rank(n, cands[n], family, flags))[0]
        cls = machine.cpu_class(flags) if family == "cpu" else family
        reason = (
            f"rule for this CPU ({cls} class; no tuning profile for this machine): "
            if family == "cpu"
            else f"rule for device {family}: "
        )
        reason += f"best {tier}-tier kind {variant_kind(best, cands[best])}"
        if numpy_flags:
            notes.append(
                "the CPU's flags come from numpy's run-time detection here (no /proc/cpuinfo or sysctl), which does "
                "not show AMX: an AMX CPU ranks as avx512_bf16 in the rule until `stedge-runtime tune` measures it"
            )
        sel = Selection(variant=best, source="rule", reason=reason, tier=tier, variant_tier=variant_tier(cands[best]))
    if batch_invariance(cands[sel.variant]) is None:
        notes.append(f"{sel.variant}: batch invariance was not measured at export (an older stedge wrote it)")
    limit = machine.memory_limit_mb()
    warned += memory_limit_warnings(sel.peak_rss_mb, max_memory_mb, limit) if limit is not None else []
    return dataclasses.replace(
        sel,
        excluded=excluded,
        notes=tuple(notes),
        warnings=tuple(warned),
        max_memory_mb=max_memory_mb,
        machine_key=sel.machine_key or (key if key else None),
    )


def memory_limit_warnings(peak_mb: float | None, budget_mb: float | None, limit_mb: float) -> list[str]:
    """What to tell a caller whose container has a memory limit of ``limit_mb`` (``machine.memory_limit_mb``):
    a memory budget above it, or, without a budget, a choice that peaked above it in `stedge tune`'s probe here."""
    end = f"this container's memory limit ({limit_mb:.0f} MB), past which the process is killed"
    if budget_mb is not None and budget_mb > limit_mb:
        return [f"max_memory_mb={budget_mb:g} is above {end}"]
    if budget_mb is None and peak_mb is not None and peak_mb > limit_mb:
        return [
            f"this choice peaked at {peak_mb:.0f} MB in `stedge tune`'s memory probe here, above {end}: pass "
            f"max_memory_mb (below {limit_mb:.0f}) to run a lighter configuration"
        ]
    return []


def _profile_choice(
    root: Path,
    cands: dict[str, Any],
    tier: str,
    route: bool | None,
    excluded: dict[str, str],
    notes: list[str],
    key: str | None,
    prof: dict | None = None,
    max_memory_mb: float | None = None,
    warned: list[str] | None = None,
) -> Selection | None:
    key = key or machine.machine_key()
    file = profile_file(root, key)
    if prof is None:
        try:
            prof, file = find_profile(root, key) or (None, file)
        except ArtifactError as e:
            notes.append(f"tuning profile ignored: {e}")
            return None
    others = [p.name for p in list_profiles(root) if p.stem != key]
    if others:
        notes.append(f"profiles of other machines ignored: {', '.join(others)} (this machine: {key})")
    if prof is None:
        return None
    sel = _from_profile(prof, file, cands, tier, route, excluded, notes, max_memory_mb, warned)
    if sel is None:
        notes.append("the profile for this machine has no eligible variant measured; the rule decided")
        return None
    return dataclasses.replace(sel, machine_key=key)


def _named(
    variants: Mapping[str, Any], name: str, family: str, tier: str, flags: set[str], installed: set[str], where: str
) -> Selection:
    if name not in variants:
        raise ArtifactError(f"{where}: unknown variant {name!r}; this artifact has: {', '.join(variants)}")
    v = variants[name]
    if not fits(v, family):
        raise ArtifactError(
            f"{where}: variant {name!r} ({_get(v, 'backend')}, devices {_get(v, 'devices')}) "
            f"does not run on device {family!r}; pick another variant or device"
        )
    warn = []
    why = _why_not(name, v, family, installed | {_get(v, "backend")}, "compressed", flags)
    if why is not None:
        warn.append(f"variant {name!r} would not be chosen automatically: {why}")
    return Selection(
        variant=name, source="named", reason="named by the caller", variant_tier=variant_tier(v), warnings=tuple(warn)
    )
