"""Results out: the JSON (with its schema), a Markdown table, and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from stedge.errors import StedgeError

_NUM = {"type": ["number", "null"]}
_THROUGHPUT = {
    "type": "object",
    "required": [
        "sentences_per_s",
        "sentences_per_s_min",
        "sentences_per_s_max",
        "spread_pct",
        "tokens_per_s",
        "gflops",
        "seconds",
    ],
    "properties": {"seconds": {"type": "array", "items": {"type": "number"}, "minItems": 1}},
}
ROW_OK_REQUIRED = [
    "throughput",
    "headline_sentences_per_s",
    "latency_ms",
    "cold_start_s",
    "peak_rss_mb",
    "size_mb",
    "accuracy",
    "gflops",
    "gemm_share",
    "speedup_vs_torch",
    "speedup_vs_best_peer",
]

# one kind of text's padding (runner._padding): its batch size, the share of real tokens per gemm.PADDING_ORDERS order
_PADDING = {
    "type": "object",
    "required": ["batch_size", "tokens", "chars", "order"],
    "properties": {k: {"type": "number", "exclusiveMinimum": 0, "maximum": 1} for k in ("tokens", "chars", "order")},
}

RESULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "schema_version",
        "suite",
        "started",
        "finished",
        "machine",
        "load_average",
        "threads",
        "gemm_peak",
        "data",
        "models",
        "rows",
    ],
    "properties": {
        "schema_version": {"const": 1},
        "machine": {
            "type": "object",
            "required": ["cpu", "isa_flags", "cores_physical", "cores_logical", "gpu", "libraries"],
        },
        "threads": {
            "type": "object",
            "required": ["budget"],
            "properties": {"budget": {"type": "integer", "minimum": 1}},
        },
        "gemm_peak": {"type": "object", "required": ["gflops", "threads", "device"]},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "tokens", "mean_tokens_per_text"],
                "properties": {
                    "padding": {
                        "type": "object",
                        "required": ["texts"],
                        "additionalProperties": _PADDING,
                    }
                },
            },
        },
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "model", "label", "kind", "device", "backend", "status", "peer", "reference"],
                "properties": {"status": {"enum": ["ok", "skipped", "error"]}},
                "if": {"properties": {"status": {"const": "ok"}}},
                "then": {
                    "required": ROW_OK_REQUIRED,
                    "properties": {
                        "throughput": {"type": "object", "minProperties": 1, "additionalProperties": _THROUGHPUT},
                        "latency_ms": {"type": "object", "required": ["p50", "p95", "p99"]},
                        "latency_after_idle_ms": {"type": "object", "required": ["p50", "p95", "p99", "gap_ms"]},
                        "tokenize_ms": {"type": "object", "required": ["p50", "p95", "p99"]},
                        "accuracy": {
                            "type": "object",
                            "required": ["spearman", "mean_cosine", "min_cosine", "pairs"],
                            "properties": {
                                "spearman": {"type": "number"},
                                "mean_cosine": {"type": "number"},
                                "min_cosine": {"type": "number"},
                            },
                        },
                        "cold_start_s": {"type": "number", "exclusiveMinimum": 0},
                        "peak_rss_mb": {"type": "number", "exclusiveMinimum": 0},
                        "headline_sentences_per_s": {"type": "number", "exclusiveMinimum": 0},
                        "speedup_vs_torch": _NUM,
                        "speedup_vs_best_peer": _NUM,
                        "gemm_share": _NUM,
                        "weights_mb": _NUM,
                        "weights_read_ms": _NUM,
                        "interleaved": {
                            "type": "object",
                            "anyOf": [{"required": ["cycles", "throughput"]}, {"required": ["error"]}],
                        },
                    },
                },
                "else": {"required": ["reason"]},
            },
        },
    },
}


def validate(results: dict[str, Any]) -> None:
    """Check a results dict against RESULTS_SCHEMA (jsonschema); raise StedgeError naming the path at fault."""
    from stedge.errors import require

    jsonschema = require("jsonschema", "dev", "checking benchmark results")
    try:
        jsonschema.validate(results, RESULTS_SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise StedgeError(f"benchmark results do not match the schema at {where}: {e.message}") from None


# --------------------------------------------------------------------------- summary
FP32_ACCURATE_MIN_COSINE = 0.999
SPEARMAN_POINTS = 1.0


def words(task: str | None) -> dict[str, str]:
    """How the figures of a model of ``task`` read: an embedding model's sentences and cosine, a reranker's
    (query, passage) pairs and score agreement (its rows keep the JSON keys ``sentences_per_s``, ``min_cosine``,
    as export's verification record keeps ``min_cosine`` with ``agreement: "score"``)."""
    if task == "reranking":
        return {"rate": "pairs/s", "passages": "passage pairs/s", "min": "min score agr.", "per": "pair"}
    return {"rate": "sent/s", "passages": "passages/s", "min": "min cos", "per": "text"}


def _task(r: dict[str, Any]) -> str:
    """A row's task (rows written before rerankers were measured have none: embedding)."""
    return r.get("task") or "embedding"


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: stedge's fastest fp32-accurate subject (min cosine >= 0.999 to PyTorch fp32) and its
    fastest subject within 1 Spearman point of PyTorch fp32, each against sentence-transformers' best
    backend (throughput at the headline batch size, batch-1 p50, cold start, peak RSS)."""
    out = []
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    head = str(results["suite"]["headline_batch_size"])
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        ours = [r for r in rs if not r["peer"]]
        peers = [r for r in rs if r["peer"] and r.get("kind") == "st"] or [r for r in rs if r["peer"]]
        if not ours:
            continue
        best_peer = max(peers, key=lambda r: r["headline_sentences_per_s"], default=None)
        picks = {
            "fastest_fp32_accurate": [r for r in ours if r["accuracy"]["min_cosine"] >= FP32_ACCURATE_MIN_COSINE],
            "fastest_within_1_spearman_point": [
                r for r in ours if r["accuracy"].get("spearman_delta", 0.0) >= -SPEARMAN_POINTS
            ],
        }
        entry: dict[str, Any] = {
            "model": model,
            "task": _task(rs[0]),
            "best_peer": _brief(best_peer, head) if best_peer else None,
        }
        for key, cands in picks.items():
            best = max(cands, key=lambda r: r["headline_sentences_per_s"], default=None)
            if best is None:
                entry[key] = None
                continue
            e = _brief(best, head)
            if best_peer:
                e["throughput_ratio_vs_best_peer"] = (
                    best["headline_sentences_per_s"] / best_peer["headline_sentences_per_s"]
                )
                e["p50_ratio_vs_best_peer"] = best["latency_ms"]["p50"] / best_peer["latency_ms"]["p50"]
                idle, peer_idle = _idle_p50(best), _idle_p50(best_peer)
                e["p50_after_idle_ratio_vs_best_peer"] = idle / peer_idle if idle and peer_idle else None
                e["cold_start_ratio_vs_best_peer"] = best["cold_start_s"] / best_peer["cold_start_s"]
                e["peak_rss_ratio_vs_best_peer"] = best["peak_rss_mb"] / best_peer["peak_rss_mb"]
            e["interleaved_ratio_vs_best_peer"] = _interleaved(best, "speedup_vs_best_peer")
            e["interleaved_ratio_vs_best_peer_ci"] = _interleaved(best, "speedup_vs_best_peer_ci")
            entry[key] = e
        out.append(entry)
    return out


def _brief(r: dict[str, Any], head: str) -> dict[str, Any]:
    return {
        "interleaved_share_of_best_round": interleaved_share(r, head),
        "label": r["label"],
        "sentences_per_s": r["headline_sentences_per_s"],
        "spearman": r["accuracy"]["spearman"],
        "min_cosine": r["accuracy"]["min_cosine"],
        "p50_ms": r["latency_ms"]["p50"],
        "p50_after_idle_ms": _idle_p50(r),
        "cold_start_s": r["cold_start_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "size_mb": r.get("size_mb"),
        "speedup_vs_baseline_model": r.get("speedup_vs_baseline_model"),
    }


def _idle_p50(r: dict[str, Any]) -> float | None:
    """The row's batch-1 p50 after idle gaps (None when the suite measured none)."""
    return (r.get("latency_after_idle_ms") or {}).get("p50")


def _tokenize_p50(r: dict[str, Any]) -> float | None:
    """The p50 of the row's tokenizing alone on the batch-1 queries (None when the subject did not expose it)."""
    return (r.get("tokenize_ms") or {}).get("p50")


def _idle_clause(p50: float | None, ratio: float | None) -> str:
    """' (after idle: X ms[, Y×])' for a summary line (Y: against the best peer), or nothing when not measured."""
    if p50 is None:
        return ""
    return f" (after idle: {p50:.2f} ms{f', {ratio:.2f}×' if ratio else ''})"


def summary_markdown(results: dict[str, Any]) -> str:
    """The summary as bullet points."""
    lines = []
    head = results["suite"]["headline_batch_size"]
    for s in summary(results):
        peer, w = s["best_peer"], words(s.get("task"))
        if peer is None:
            continue
        lines.append(
            f"- **{s['model']}** — sentence-transformers' best backend: {peer['label']} "
            f"({peer['sentences_per_s']:.0f} {w['rate']} at batch {head}, p50 {peer['p50_ms']:.2f} ms"
            f"{_idle_clause(peer['p50_after_idle_ms'], None)}, cold start "
            f"{peer['cold_start_s']:.2f} s, peak RSS {peer['peak_rss_mb']:.0f} MB, ρ×100 {peer['spearman']:.2f}"
            f"{_share_clause(peer.get('interleaved_share_of_best_round'))})."
        )
        for key, what in (
            ("fastest_fp32_accurate", f"fastest fp32-accurate ({w['min']} ≥ {FP32_ACCURATE_MIN_COSINE})"),
            ("fastest_within_1_spearman_point", "fastest within 1 Spearman point"),
        ):
            e = s.get(key)
            if not e:
                continue
            inter = _interleaved_clause(
                e.get("interleaved_ratio_vs_best_peer"),
                e["interleaved_share_of_best_round"],
                e.get("interleaved_ratio_vs_best_peer_ci"),
            )
            lines.append(
                f"  - {what}: {e['label']}: {e['sentences_per_s']:.0f} {w['rate']} = "
                f"**{e['throughput_ratio_vs_best_peer']:.2f}×** the best peer{inter}; "
                f"p50 {e['p50_ms']:.2f} ms ({e['p50_ratio_vs_best_peer']:.2f}×)"
                f"{_idle_clause(e['p50_after_idle_ms'], e.get('p50_after_idle_ratio_vs_best_peer'))}, "
                f"cold start {e['cold_start_s']:.2f} s "
                f"({e['cold_start_ratio_vs_best_peer']:.2f}×), peak RSS {e['peak_rss_mb']:.0f} MB "
                f"({e['peak_rss_ratio_vs_best_peer']:.2f}×), "
                f"ρ×100 {e['spearman']:.2f}, {w['min']} {e['min_cosine']:.4f}."
            )
    lines += _auto_lines(results)
    for r in results["rows"]:
        if r.get("status") == "ok" and r.get("speedup_vs_baseline_model") is not None:
            lines.append(
                f"- {r['model']} / {r['label']}: {r['speedup_vs_baseline_model']:.2f}× the same subject on "
                f"{r['baseline_model']}."
            )
    return "\n".join(lines)


def _auto_lines(results: dict[str, Any]) -> list[str]:
    """One bullet per auto-chosen subject: what Encoder.load picked here and how it compares."""
    out = []
    head = results["suite"]["headline_batch_size"]
    for r in results["rows"]:
        if r.get("status") != "ok" or not r.get("auto_tier"):
            continue
        sel = (r.get("subject_info") or {}).get("selection") or r.get("selection") or {}
        w = words(_task(r))
        text = (
            f"- {r['model']} / **auto {r['auto_tier']}** picked {sel.get('variant')} ({sel.get('source')}: "
            f"{sel.get('reason', '')}): {r['headline_sentences_per_s']:.0f} {w['rate']} at batch {head}"
        )
        if r.get("speedup_vs_best_peer") is not None:
            text += f" = **{r['speedup_vs_best_peer']:.2f}×** {r['best_peer']}"
            text += _interleaved_clause(
                _interleaved(r, "speedup_vs_best_peer"),
                interleaved_share(r, str(head)),
                _interleaved(r, "speedup_vs_best_peer_ci"),
            )
        text += f", p50 {r['latency_ms']['p50']:.2f} ms{_idle_clause(_idle_p50(r), None)}"
        text += f", ρ×100 {r['accuracy']['spearman']:.2f}"
        if r.get("headline_passages_per_s"):
            text += f", {r['headline_passages_per_s']:.0f} {w['passages']}"
            if _interleaved(r, "passage_speedup_vs_best_peer") is not None:
                text += (
                    f" ({_interleaved(r, 'passage_speedup_vs_best_peer'):.2f}× "
                    f"{_interleaved(r, 'passage_best_peer')} on passages in the interleaved phase"
                    f"{_ci_text(_interleaved(r, 'passage_speedup_vs_best_peer_ci'), ', 95 % CI ')})"
                )
        vs_fe = r.get("speedup_vs_fastembed") or {}
        if vs_fe:
            text += "; × fastembed by batch size: " + ", ".join(f"bs={b} {x:.2f}" for b, x in vs_fe.items())
        vs_fe, fe_ci = _interleaved(r, "speedup_vs_fastembed") or {}, _interleaved(r, "speedup_vs_fastembed_ci") or {}
        if vs_fe:
            text += "; in the interleaved phase: " + ", ".join(
                f"bs={b} {x:.2f}{_ci_text(fe_ci.get(b), ' (95 % CI ', ')')}" for b, x in vs_fe.items()
            )
        out.append(text + ".")
    return out


def interleaved_share(r: dict[str, Any], head: str) -> float | None:
    """A row's interleaved median at the headline batch size over its best-round rate there (None without an
    interleaved phase): a peer that keeps less of its rate than stedge when all subjects are resident makes the
    interleaved ratio flatter stedge, and the README then quotes the lower of the two ratios."""
    rate = ((_interleaved(r, "throughput") or {}).get(head) or {}).get("sentences_per_s")
    return rate / r["headline_sentences_per_s"] if rate and r.get("headline_sentences_per_s") else None


def _share_clause(share: float | None) -> str:
    return "" if share is None else f"; in the interleaved phase it kept {100 * share:.0f} % of its best-round rate"


def _interleaved_clause(ratio: float | None, share: float | None = None, ci: list[float] | None = None) -> str:
    """' (X× in the interleaved phase, 95 % CI L-H, at S % of its best-round rate)', parts left out when missing."""
    if ratio is None:
        return ""
    kept = "" if share is None else f", at {100 * share:.0f} % of its best-round rate"
    return f" ({ratio:.2f}× in the interleaved phase{_ci_text(ci, ', 95 % CI ')}{kept})"


def _ci_text(ci: list[float] | None, before: str, after: str = "") -> str:
    """An interleaved ratio's confidence interval as 'L-H' between ``before`` and ``after`` ("" without one)."""
    return "" if not ci else f"{before}{ci[0]:.2f}-{ci[1]:.2f}{after}"


# --------------------------------------------------------------------------- markdown
def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown_table(results: dict[str, Any], task: str = "embedding") -> str:
    """One row per subject of the models of ``task``: accuracy beside speed, memory, cold start, efficiency,
    speedups; a reranker's in pairs/s, with its score agreement and max abs score difference to PyTorch fp32 where
    an embedding model's rows have min and mean cosine ("" when the run has no model of ``task``)."""
    bss = results["suite"]["batch_sizes"]
    head = results["suite"]["headline_batch_size"]
    rows = [r for r in results["rows"] if _task(r) == task]
    if not rows:
        return ""
    w, rerank = words(task), task == "reranking"
    cols = (
        ["model", "subject", "size MB", "STS-B ρ×100", "Δρ", w["min"], "max abs Δ score" if rerank else "mean cos"]
        + [f"{w['rate']} bs={b}" for b in bss]
        + [
            f"{w['passages']} bs={head}",
            "p50 ms",
            "tokenize p50 ms",
            "weights read ms",
            "p99 ms",
            "p50 ms after idle",
            "cold start s",
            "peak RSS MB",
            f"GFLOP/s bs={head}",
            "% GEMM peak",
            "× torch",
            "× best peer",
            "rounds",
            "× best peer, interleaved",
            "passages × best peer, interleaved",
        ]
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['model']} | {r['label']} | "
                + f"{r['status']}: {r.get('reason', '')} |".replace("\n", " ")
                + " |" * (len(cols) - 3)
            )
            continue
        a = r["accuracy"]
        cells = [
            r["model"],
            r["label"],
            _f(r["size_mb"]),
            _f(a["spearman"], "{:.2f}"),
            _f(a.get("spearman_delta"), "{:+.2f}"),
            _f(a["min_cosine"], "{:.4f}"),
            _f(a.get("max_abs_diff"), "{:.2g}") if rerank else _f(a["mean_cosine"], "{:.5f}"),
        ]
        cells += [_f(r["throughput"].get(str(b), {}).get("sentences_per_s"), "{:.0f}") for b in bss]
        cells += [_f(r.get("headline_passages_per_s"), "{:.0f}")]
        cells += [
            _f(r["latency_ms"]["p50"], "{:.2f}"),
            _f(_tokenize_p50(r), "{:.3f}"),
            _f(r.get("weights_read_ms"), "{:.2f}"),
            _f(r["latency_ms"]["p99"], "{:.2f}"),
            _f(_idle_p50(r), "{:.2f}"),
            _f(r["cold_start_s"], "{:.2f}"),
            _f(r["peak_rss_mb"], "{:.0f}"),
            _f(r["gflops"], "{:.1f}"),
            _f(None if r["gemm_share"] is None else 100 * r["gemm_share"], "{:.0f}"),
            _f(r["speedup_vs_torch"], "{:.2f}"),
            _f(r["speedup_vs_best_peer"], "{:.2f}"),
            _rounds_cell(r),
            _f(_interleaved(r, "speedup_vs_best_peer"), "{:.2f}")
            + _ci_text(_interleaved(r, "speedup_vs_best_peer_ci"), " (", ")"),
            _f(_interleaved(r, "passage_speedup_vs_best_peer"), "{:.2f}")
            + _ci_text(_interleaved(r, "passage_speedup_vs_best_peer_ci"), " (", ")"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interleaved(r: dict[str, Any], key: str) -> Any:
    """A figure of the row's interleaved phase (None when it had none)."""
    return (r.get("interleaved") or {}).get(key)


def _interleaved_text(results: dict[str, Any]) -> str:
    """The Texts line's part on the interleaved phase (runner._interleave)."""
    s = results["suite"]
    if not s.get("interleave_cycles"):
        return ""
    sizes = ", ".join(map(str, s.get("interleave_batch_sizes") or [s["headline_batch_size"]]))
    passages = any("passages" in (r.get("interleaved") or {}) for r in results["rows"])
    return (
        f"; then all subjects were loaded at once and ran {s['interleave_cycles']} cycles of one pass each at "
        f"batch size {sizes}{' and over the passages' if passages else ''}, in turn, the order reversed every "
        f"cycle: *× best peer, interleaved* (batch {s['headline_batch_size']}) is the median of the per-cycle "
        "ratios, which a slow spell of the machine cannot tilt towards one subject"
        + (", and *passages × best peer, interleaved* the same over the passages" if passages else "")
        + "; in parentheses the 95 % confidence interval of that median (from 6 cycles on: the k-th smallest to the "
        "k-th largest per-cycle ratio, whatever their distribution): how closely the run pins the ratio down"
        + " (`interleaved` in the JSON, with fastembed ratios per batch size)"
    )


def _rounds_cell(r: dict[str, Any]) -> str:
    """How many rounds a subject ran, with * when its two best still disagree (runner.rounds_agree)."""
    return f"{r.get('rounds', 1)}{'' if r.get('rounds_agree', True) else ' *'}"


def _rounds_text(results: dict[str, Any]) -> str:
    """The Texts line's part on rounds: how many, the re-run rule, and which subjects stayed noisy."""
    from .runner import ROUNDS_AGREE

    s = results["suite"]
    rounds, most = s.get("rounds") or 1, max(s.get("max_rounds") or 0, s.get("rounds") or 1)
    if most <= 1:
        return ""
    text = f"; every subject ran {rounds} times in alternating order and the best round counts"
    if most > rounds:
        text += (
            f", and a subject whose two best rounds at batch {s['headline_batch_size']} differed by more than "
            f"{ROUNDS_AGREE:.0%} ran again, up to {most} rounds"
        )
    noisy = [r for r in results["rows"] if r.get("status") == "ok" and not r.get("rounds_agree", True)]
    if noisy:
        text += (
            f"; * in the rounds column: the two best rounds still differ by more (a re-run may land lower; "
            f"{len(noisy)} of {sum(r.get('status') == 'ok' for r in results['rows'])} subjects)"
        )
    return text + " (`rounds_headline_sentences_per_s` in the JSON)"


def _peaks(g: dict[str, Any]) -> str:
    parts = [f"fp32 {g['gflops']:.0f} GFLOP/s ({g.get('library', '')})"]
    if g.get("gflops_fp16"):
        parts.append(f"fp16 {g['gflops_fp16']:.0f}")
    if g.get("gflops_bf16"):
        isa = f" ({g['bf16_isa']})" if g.get("bf16_isa") else ""  # a CPU names the instructions; a GPU has none
        parts.append(f"bf16 {g['gflops_bf16']:.0f}{isa}")
    if g.get("gflops_int8"):
        parts.append(
            f"int8 {g['gflops_int8']:.0f} GOP/s ({g.get('int8_isa')}; onnxruntime MatMulInteger "
            f"{_f(g.get('gflops_int8_ort'), '{:.0f}')}, torch._int_mm {_f(g.get('gflops_int8_torch'), '{:.0f}')})"
        )
    return ", ".join(parts)


def _measured_twice(g: dict[str, Any]) -> str:
    """'; each figure the higher of N measurements ...' where the run measured the peaks more than once
    (gemm.best_peaks), else ""."""
    n = len(g.get("measurements") or [])
    if n < 2:
        return ""
    return (
        f"; each figure the higher of {n} measurements, before the first subject and after the last, as a slow "
        "spell only lowers a peak"
    )


def machine_line(results: dict[str, Any]) -> str:
    """One line: CPU, cores, ISA, GPU, load, thread budget."""
    m = results["machine"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "no GPU"
    load = results["load_average"]
    quota = f", CPU quota {m['cpu_quota']:g}" if m.get("cpu_quota") else ""
    return (
        f"{m['cpu']} ({m['cores_physical']} cores / {m['cores_logical']} threads{quota}; {', '.join(m['isa_flags'])}); "
        f"{gpu}; "
        f"thread budget {results['threads']['budget']}; load average before {load['before']}, after {load['after']}"
    )


def _latency_text(results: dict[str, Any]) -> str:
    """The Texts line's part on batch-1 latency: the tokenize column when a subject measured it, and the after-idle
    pass when the suite has one."""
    gap = results["suite"].get("idle_gap_ms") or 0
    tokenize = (
        " (`tokenize p50 ms`: the subject's own tokenizing alone on the same queries, as its batch-1 call runs it: "
        "the share of the p50 that is not the engine)"
        if any(_tokenize_p50(r) is not None for r in results["rows"])
        else ""
    )
    if not gap:
        return tokenize
    return tokenize + (
        f", back to back and again with the process idle {gap} ms before each query (`p50 ms after idle`: what an "
        "interactive app sees, its threads asleep and caches cooled)"
    )


def markdown(results: dict[str, Any]) -> str:
    """The whole Markdown report: setup, table, notes on how to read it."""
    s = results["suite"]
    g = results["gemm_peak"]
    libs = results["machine"]["libraries"]
    lib_line = ", ".join(f"{k} {v}" for k, v in libs.items())
    models = "; ".join(
        f"{m['name']}: {m['layers']} layers, hidden {m['hidden']}, reference STS-B ρ×100 "
        f"{_f(m['reference_spearman'], '{:.2f}')}, "
        f"{m['mean_tokens_per_text']:.1f} tokens/{words(m.get('task'))['per']}"
        for m in results["models"]
    )
    tasks = {m.get("task") or "embedding" for m in results["models"]} or {"embedding"}
    return "\n".join(
        [
            f"# Benchmark: suite `{s['name']}` ({results['started'][:10]})",
            "",
            f"- Machine: {machine_line(results)}",
            f"- Libraries: {lib_line}",
            f"- Models: {models}",
            *([_texts_line(results)] if "embedding" in tasks else []),
            *([_pairs_line(results, "embedding" not in tasks)] if "reranking" in tasks else []),
            f"- GEMM peak measured in this run ({g['threads']} threads, {g.get('size')}² matrices"
            f"{_measured_twice(g)}): {_peaks(g)}; each subject's % GEMM peak is against the peak of its own precision.",
            *([_memory_line(g)] if g.get("memory_read_gbs") else []),
            *([_padding_line(results)] if any(m.get("padding") for m in results["models"]) else []),
            f"- Speedups use sentences/s at batch {s['headline_batch_size']}"
            + (" (a reranker's pairs/s)" if "reranking" in tasks else "")
            + "; × torch is vs stedge PyTorch fp32, × best peer vs the fastest "
            "sentence-transformers backend. Cold start: process start to the first vector (files in the page cache).",
            *(f"- Skipped model {m['name']}: {m['reason']}" for m in results.get("skipped_models") or []),
            "",
            "## Summary",
            "",
            summary_markdown(results) or "(no sentence-transformers peer in this run)",
            "",
            "## All subjects",
            "",
            "\n\n".join(t for t in (markdown_table(results), _reranker_table(results)) if t),
            "",
        ]
    )


def _memory_line(g: dict[str, Any]) -> str:
    """The bullet on the memory read bandwidth and what the `weights read ms` column takes from it (gemm.weights_mb)."""
    from .gemm import BYTES_PER_WEIGHT

    sizes = " / ".join(f"{v:g}" for v in BYTES_PER_WEIGHT.values())
    return (
        f"- Memory read bandwidth measured in this run: {g['memory_read_gbs']:.1f} GB/s ({g.get('memory_read_mb')} MB "
        f"buffer, {g.get('memory_read_library')}{'; the higher of the measurements' if _measured_twice(g) else ''}). "
        "`weights read ms`: the weights of the model's matrix products at the precision the subject's batch-1 calls "
        f"compute in ({' / '.join(BYTES_PER_WEIGHT)}: {sizes} bytes each) read once at that rate. Every batch-1 call "
        "reads them all however short its text, so where they come from memory, not cache, that much of its p50 is "
        "the memory's."
    )


def _padding_line(results: dict[str, Any]) -> str:
    """The bullet on padding: the share of real tokens among those the engine runs, per model and kind of text, for
    each way a subject orders a call's items before it pads each batch to its longest."""
    from .gemm import PADDING_ORDERS

    def shares(p: dict[str, Any]) -> str:
        return " / ".join(f"{100 * p[k]:.0f} %" for k in PADDING_ORDERS)

    parts = []
    for m in results["models"]:
        pad = m.get("padding")
        if not pad:
            continue
        kinds = [f"{words(m.get('task'))['per']}s {shares(pad['texts'])} at batch {pad['texts']['batch_size']}"]
        if pad.get("passages"):
            what = words(m.get("task"))["passages"].removesuffix("/s")
            kinds.append(f"{what} {shares(pad['passages'])} at batch {pad['passages']['batch_size']}")
        parts.append(f"{m['name']}: {', '.join(kinds)}")
    return (
        "- Padding: real tokens as a share of the tokens the engine runs, the rest padding to each batch's longest "
        f"item, when a call's items are {' / '.join(PADDING_ORDERS.values())}: "
        + "; ".join(parts)
        + ". % GEMM peak counts real tokens only, so padding lowers it."
    )


def _texts_line(results: dict[str, Any]) -> str:
    """The bullet on what the embedding models were given: texts, queries, STS pairs."""
    s, d = results["suite"], results["data"]
    return (
        f"- Texts: {d['num_texts']} from `{d['texts']}` per pass, {s['repetitions']} timed passes per batch size "
        "after warm-up (median; spread in the JSON)"
        + _rounds_text(results)
        + _interleaved_text(results)
        + f"; batch-1 latency on {d['num_queries']} short queries from `{d['queries']}`"
        + _latency_text(results)
        + f"; accuracy on {d['accuracy_pairs']} STS pairs from `{d['accuracy']}` (cosine to the stedge PyTorch fp32 "
        f"CPU reference over {d['accuracy_texts']} texts)."
    )


def _pairs_line(results: dict[str, Any], alone: bool) -> str:
    """The bullet on what the rerankers were given: (query, passage) pairs, and how their accuracy reads (``alone``:
    no embedding model's line says how the rounds and the interleaved phase ran)."""
    s, d = results["suite"], results["data"]
    p = d.get("reranking") or {}
    passages = (
        f"; passage-length pairs: each of {p['num_passage_pairs']} passages after a query ({p['passage_pairs']})"
        if p.get("num_passage_pairs")
        else ""
    )
    return (
        f"- Reranker pairs: {p.get('num_pairs')} STS pairs from `{p.get('pairs')}` per pass, {s['repetitions']} timed "
        "passes per batch size after warm-up (median; spread in the JSON)"
        + (_rounds_text(results) + _interleaved_text(results) if alone else "")
        + f"; batch-1 latency on the first {p.get('num_query_pairs')} of them"
        + _latency_text(results)
        + passages
        + f"; accuracy on {d['accuracy_pairs']} STS pairs from `{d['accuracy']}`: the Spearman of the scores against "
        "the gold ones, and their score agreement with the stedge PyTorch fp32 scores "
        "(`stedge_runtime.similarity.agreement`, the measure of export's verification and `stedge tune`; 1.0: equal, "
        "0.9999 exact, 0.99 near) and the largest score difference (`min_cosine` / `max_abs_diff` in the JSON, "
        "`agreement: score`)."
    )


def _reranker_table(results: dict[str, Any]) -> str:
    """The rerankers' table, under a line saying how its columns read ("" without a reranker)."""
    table = markdown_table(results, "reranking")
    if not table:
        return ""
    return (
        "Rerankers, one (query, passage) pair per item; *min score agr.*: the lowest score agreement with stedge "
        "PyTorch fp32 over the STS pairs, *max abs Δ score*: the largest score difference.\n\n" + table
    )


# --------------------------------------------------------------------------- plots
def plot_speedup_vs_accuracy(results: dict[str, Any], path: Path) -> bool:
    """Scatter: speedup vs stedge PyTorch fp32 (x) against STS-B Spearman (y), one point per subject. Returns
    whether it was drawn: a suite without a stedge PyTorch fp32 subject has no x axis for it."""
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    # One x axis for every model: the first model's stedge PyTorch fp32 (so a student sits beside its teacher); a
    # reranker's pairs/s are compared with the first reranker's (another work unit).
    bases: dict[str, dict[str, Any]] = {}
    for r in ok:
        if r["reference"]:
            bases.setdefault(_task(r), r)
    base = next(iter(bases.values()), None)
    if base is None:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    for r in ok:
        if _task(r) not in bases:
            continue
        x = r["headline_sentences_per_s"] / bases[_task(r)]["headline_sentences_per_s"]
        color = "tab:gray" if r["peer"] else ("tab:red" if r["kind"] == "stedge-torch" else "tab:blue")
        ax.scatter(x, r["accuracy"]["spearman"], color=color, marker="s" if r["peer"] else "o")
        name = r["label"].replace("sentence-transformers", "ST").replace("stedge ", "")
        if r["model"] != bases[_task(r)]["model"]:
            name = f"{r['model']}: {name}"
        ax.annotate(
            name, (x, r["accuracy"]["spearman"]), fontsize=7, xytext=(3, 3), textcoords="offset points", rotation=20
        )
    ax.set_xscale("log", base=2)
    unit = " and ".join(f"{'pairs' if t == 'reranking' else 'sentences'}/s" for t in bases)
    ax.set_xlabel(
        f"speedup vs {' / '.join(b['model'] for b in bases.values())} stedge PyTorch fp32 ({unit} at batch "
        f"{results['suite']['headline_batch_size']}, log scale)"
    )
    ax.set_ylabel("STS-B test Spearman × 100")
    ax.set_title("Speed vs accuracy (circles: stedge, squares: sentence-transformers)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_throughput_vs_batch(results: dict[str, Any], path: Path) -> None:
    """Lines: sentences/s per batch size, one line per subject (log-scaled batch axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in (r for r in results["rows"] if r["status"] == "ok"):
        bss = sorted(int(b) for b in r["throughput"])
        ys = [r["throughput"][str(b)]["sentences_per_s"] for b in bss]
        label = r["label"] if len(results["models"]) == 1 else f"{r['model']}: {r['label']}"
        ax.plot(bss, ys, marker="o", linestyle="--" if r["peer"] else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    rerank = any(_task(r) == "reranking" for r in results["rows"])
    ax.set_ylabel("sentences / s" + (" (a reranker's: pairs / s)" if rerank else ""))
    ax.set_title("Throughput vs batch size (dashed: sentence-transformers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    from stedge.errors import require

    mpl = require("matplotlib", "bench", "drawing benchmark plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_all(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Validate, add the summary, then write results.json, results.md, speedup_vs_accuracy.png (where the suite has
    a stedge PyTorch fp32 subject; an earlier run's is removed otherwise) and throughput_vs_batch.png (results that
    fail the check are kept as results.unchecked.json). Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        validate(results)  # before the summary, which reads the rows the check vouches for
    except StedgeError as e:  # minutes of measuring are never lost to a check: kept beside, under another name
        kept = out_dir / "results.unchecked.json"
        write_text_atomic(kept, json.dumps(results, indent=2))
        raise StedgeError(f"{e}\nthe measurements are kept in {kept}") from None
    results["summary"] = summary(results)
    files = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "speedup_plot": out_dir / "speedup_vs_accuracy.png",
        "throughput_plot": out_dir / "throughput_vs_batch.png",
    }
    write_text_atomic(files["json"], json.dumps(results, indent=2))
    write_text_atomic(files["markdown"], markdown(results))
    if not plot_speedup_vs_accuracy(results, files["speedup_plot"]):
        files.pop("speedup_plot").unlink(missing_ok=True)  # never beside results it was not drawn from
    plot_throughput_vs_batch(results, files["throughput_plot"])
    return files


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace`` (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
