"""`stedge tune ARTIFACT`: time every verified variant here, write tuning/<machine key>.json, print the table."""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from ..errors import StedgeError


def run_tune(
    path: str | Path,
    variants: list[str] | None = None,
    threads: int | None = None,
    quick: bool = False,
    budget_s: float | None = None,
    texts: list[str] | None = None,
    batch_sizes: tuple[int, ...] = (32,),
    show_progress: bool = True,
    write: bool = True,
    paired_cycles: int | None = None,
    memory: bool = True,
    queries: list[str] | None = None,
    reuse_memory: bool = True,
    keep_choices: bool = True,
) -> tuple[dict[str, Any], Path | None]:
    """Tune the artifact at ``path``; returns (profile, file written or None). Progress bar on stderr.
    ``texts`` replace the built-in samples; ``queries`` replace them for the batch-1 calls alone.
    ``paired_cycles``: cycles of the paired final (None: stedge_runtime.tune.PAIRED_CYCLES; 0 skips it).
    ``memory``: once the profile is written (not with ``quick``), measure in fresh processes the peak RSS of
    each tier's choice and of each configuration a memory budget may fall back to (stedge_runtime.tune.
    measure_memory) and add them to the profile, written again after each probe (so a tune stopped then keeps
    them); with ``reuse_memory``, figures this machine's previous profile measured on the same variant files and
    workloads are kept, not probed again (tune.reusable_memory). With ``keep_choices``, that profile's token
    budget and tier choices stay where this tune cannot tell the new ones from them (stedge_runtime.tune.tune's
    ``previous``)."""
    from stedge_runtime.artifact import has_manifest
    from stedge_runtime.profile import write_profile
    from stedge_runtime.tune import PAIRED_CYCLES, measure_memory, tune

    root = Path(path)
    if not has_manifest(root):
        raise StedgeError(f"{root}: not an artifact folder (no stedge.json); pass a folder written by `stedge export`")
    previous = _previous_profile(root) if reuse_memory or keep_choices else None  # the tune replaces it
    quiet = logging.getLogger("stedge_runtime")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # passages are longer than max_seq_length on purpose
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # each variant is named on purpose
            cycles = PAIRED_CYCLES if paired_cycles is None else paired_cycles
            with _bar(show_progress, "tuning") as progress:
                held = previous if keep_choices else None
                prof = tune(
                    root, variants, threads, quick, budget_s, texts, batch_sizes, progress, cycles, queries, held
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

    with _bar(show_progress, "measuring the memory of") as progress:
        kept = previous if reuse_memory else None
        prof["memory"] = measure_memory(root, prof, kept, texts, batch_sizes, progress, queries, save)
    return prof, written[-1]


def _previous_profile(root: Path) -> dict[str, Any] | None:
    """This machine's profile of the artifact before the tune replaces it (None: none, or one this runtime cannot
    read, which the tune then overwrites)."""
    from stedge_runtime.errors import ArtifactError
    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import read_profile

    try:
        return read_profile(root, machine_key())
    except ArtifactError:
        return None


@contextmanager
def _bar(show: bool, label: str) -> Iterator[Callable[[str, int, int], None] | None]:
    """A transient progress bar on stderr as a tune progress callback ``(what, done, total)``; None if not ``show``."""
    if not show:
        yield None
        return
    from ..progress import make_progress

    with make_progress(transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda what, done, total: bar.update(task, description=f"{label} {what}", completed=done, total=total)


def tune_after_export(path: str | Path, show: bool = True, queries: list[str] | None = None) -> dict[str, Any]:
    """`stedge export --tune`: tune the artifact just written (its batch-1 calls on ``queries`` where given, from
    ``--tune-queries``); print the tuning table and the choice per tier when ``show``; returns {file, choices} for
    the export's JSON."""
    from stedge_runtime.artifact import Manifest
    from stedge_runtime.tune import best_choices

    prof, file = run_tune(path, show_progress=show, queries=queries)
    choices = best_choices(path, profile=prof)
    if show:
        m = Manifest.read(path)
        render_profile(prof, {n: v.to_dict() for n, v in m.variants.items()}, choices)
        typer.echo(f"profile written to {file}")
    return {"file": str(file), "choices": choices}


def _settings(s: dict[str, Any]) -> str:
    from stedge_runtime.select import budget_only

    parts = [f"{s['threads']}t"] if "threads" in s else []
    if "allow_spinning" in s:
        parts.append("spin" if s["allow_spinning"] else "no spin")
    if "performance_hint" in s:
        parts.append(str(s["performance_hint"]).lower())
    if "num_streams" in s:
        parts.append(f"{s['num_streams']} streams")
    if s.get("snippets") is False:
        parts.append("no snippets")
    if s.get("snippets_above"):
        parts.append(f"no snippets <= {s['snippets_above']} tokens")
    if s.get("static_batch1"):
        lean = " (budgets only)" if budget_only({"static_batch1": s["static_batch1"]}) else ""
        pad = f", padded to {s['static_pad']}" if s.get("static_pad") else ""
        parts.append(f"static batch-1 x{s['static_batch1']}{pad}{lean}")
    if s.get("shape_cache"):
        parts.append(f"{s['shape_cache']} shapes cached (budgets only)")
    group = s.get("dynamic_quantization_group_size")
    if group is not None:
        parts.append(f"run-time int8 in groups of {group}" if group else "no run-time int8")
    shown = (
        "threads",
        "allow_spinning",
        "performance_hint",
        "num_streams",
        "snippets",
        "snippets_above",
        "static_batch1",
        "static_pad",
        "shape_cache",
        "dynamic_quantization_group_size",
    )  # the keys above; any other as k=v
    parts += [f"{k}={v}" for k, v in s.items() if k not in shown]
    return ", ".join(parts)


def render_profile(prof: dict[str, Any], manifest_variants: dict[str, Any], choices: dict[str, Any]) -> None:
    """The tuning table: one row per variant and setting; the chosen ones marked per tier."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from stedge_runtime.select import memory_config_key, variant_tier

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    m = prof["machine"]
    bs = [str(b) for b in prof.get("batch_sizes", [1, 32]) if b != 1]
    units = [f for f in m["isa_flags"] if "vnni" in f or "bf16" in f or f.startswith("amx")] or [m.get("cpu_class", "")]
    w = prof.get("workloads") or {}
    tokens = [w.get(k, {}).get("mean_tokens") for k in ("batch1", "batch1_long")] + [w.get("batch1", {}).get("source")]
    peaks = {
        memory_config_key(c["variant"], c.get("settings")): _mb(c.get("peak_rss_mb"), c.get("growth_mb"))
        for c in (prof.get("memory") or {}).get("configs") or []
    }
    caption = _caption(tokens, peaks, prof.get("memory"))
    t = Table(
        title=f"{m['cpu']} ({m['cores_physical']} cores, {', '.join(units)}) - profile {m['key']}", caption=caption
    )
    for col in (
        "variant",
        "tier",
        "settings",
        "bs=1 p50 ms",
        "bs=1 longer",
        *[f"short bs={b} /s" for b in bs],
        *[f"passage bs={b} /s" for b in bs],
        "alone vs batch",
        "score agr. to exact here" if prof.get("task") == "reranking" else "cos to exact here",
        "peak MB",
        "chosen",
    ):
        t.add_column(col, justify="left" if col in ("variant", "tier", "settings", "chosen") else "right")
    marks = _marks(choices)
    for name, entry in prof["variants"].items():
        tier = variant_tier(manifest_variants.get(name, {})) or "-"
        inv = entry.get("batch_invariance_min_cos")
        inv_s = "-" if inv is None else (f"{inv:.5f}" if inv >= 0.999 else f"[red]{inv:.5f}[/]")
        here = entry.get("min_cos_to_exact")
        here_s = "-" if here is None else (f"{here:.4f}" if here >= 0.99 else f"[yellow]{here:.4f}[/]")
        if entry["status"] != "ok":
            failed = f"[red]{escape(str(entry.get('error', 'failed')))}[/]"
            t.add_row(name, tier, "", failed, "", *[""] * (2 * len(bs)), inv_s, "", "", "")
            continue
        for run in entry["runs"]:
            s = run["settings"]
            bulk = run.get("bulk") or {}
            t.add_row(
                name,
                tier,
                _settings(s),
                f"{run['batch1_ms_p50']:.2f}",
                f"{run['batch1_ms_p50_long']:.2f}" if "batch1_ms_p50_long" in run else "-",
                *[f"{bulk.get('short', {}).get(b, 0):.0f}" for b in bs],
                *[f"{bulk.get('passage', {}).get(b, 0):.1f}" for b in bs],
                inv_s,
                here_s,
                peaks.get(memory_config_key(name, s), "-"),
                marks.get((name, json.dumps(s, sort_keys=True)), ""),
            )
    console.print(t)
    _render_batch_tokens(prof.get("batch_tokens"), console)
    _render_paired(prof.get("paired"), console)
    for name, why in (prof.get("skipped") or {}).items():
        console.print(f"[yellow]not tuned: {escape(f'{name}: {why}')}[/]")
    render_choice(choices, console)


def _render_batch_tokens(bt: dict[str, Any] | None, console: Any) -> None:
    """The token-budget sweep's line: each budget's rates (the best round's), the budget chosen, the default and
    the previous tune's budget where the sweep started from it."""
    if not bt:
        return
    rates = "; ".join(
        f"{b}: short {r.get('short', 0):.0f}/s, passages {r.get('passage', 0):.1f}/s" for b, r in bt["rates"].items()
    )
    console.print(
        f"padded tokens per engine call, on {bt['variant']} (short bs={bt['batch_sizes']['short']}, passages "
        f"bs={bt['batch_sizes']['passage']}): {rates} -> [bold]{bt['best']}[/] (default {bt['default']}"
        + (
            f"; the previous tune's {bt['incumbent']} stays unless another is 10 % faster in every round"
            if "incumbent" in bt
            else ""
        )
        + ")"
    )


def _caption(tokens: list, peaks: dict[str, str], memory: dict[str, Any] | None = None) -> str | None:
    """The table's caption: the batch-1 query lengths (and whether they were the app's, given with --queries), what
    a "+" on a peak figure means where one has it, and how many memory figures an earlier tune measured (kept)."""
    parts = []
    if all(tokens[:2]):
        which = "your queries" if tokens[2:] == ["queries"] else "short queries"
        parts.append(f"bs=1 on {which} ({tokens[0]:.0f} tokens) and longer ones ({tokens[1]:.0f})")
    if any(v.endswith("+") for v in peaks.values()):
        parts.append("peak MB +: still growing at the end of the memory probe (a memory budget does not take it)")
    entries = [*((memory or {}).get("tiers") or {}).values(), *((memory or {}).get("configs") or [])]
    kept = sorted({str(e["measured"]) for e in entries if e.get("measured")})
    if kept:
        n = sum(1 for e in entries if e.get("measured"))
        parts.append(
            f"memory: {n} of {len(entries)} figures kept from the tune of {', '.join(kept)} (same variant files, "
            "settings, workloads and token budget; --remeasure-memory probes them again)"
        )
    return "; ".join(parts) or None


def _mb(value: Any, growth: Any = None) -> str:
    """A peak RSS figure for the table ("-": not measured; "+": still growing at the end of the probe, which a
    memory budget does not take)."""
    from stedge_runtime.select import still_growing

    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.0f}" + ("+" if still_growing(value, growth) else "")


def _render_paired(final: dict[str, Any] | None, console: Any) -> None:
    """The paired final: one line per contender, its median per-cycle speedup over the reference."""
    from rich.markup import escape

    if not final:
        return
    names = ", ".join(_contender(k, c) for k, c in (final.get("contenders") or {}).items()) or "none"
    if not final.get("cycles"):
        console.print(f"paired final: not run (contenders within {final.get('within')} of a tier's best: {names})")
        return
    from stedge_runtime.select import interval_text, within_noise
    from stedge_runtime.tune import interval_min_values

    ref, level = final["reference"], final.get("ci_level", 0.95)
    need = interval_min_values(level)
    console.print(
        f"paired final: {final['cycles']} cycles, contenders side by side, one pass each in turn; "
        f"median per-cycle speedup over {_contender(ref, final['contenders'][ref])}"
        + ("" if final["cycles"] >= need else f" ({level * 100:.0f} % intervals need {need} cycles or more)")
        + ":"
    )
    unsettled = []
    for name, c in final["contenders"].items():
        if "error" in c:
            console.print(f"    {_contender(name, c)}: [red]{escape(str(c['error']))}[/]")
            continue
        if name == ref:
            console.print(f"    {_contender(name, c)}: the reference")
            continue
        ivs = c.get("speedup_ci") or {}
        parts = ", ".join(f"{key} {v:.3f}x{interval_text(ivs.get(key), level)}" for key, v in c["speedup"].items())
        bulk = interval_text(c.get("bulk_speedup_ci"), level)
        if within_noise(c.get("bulk_speedup_ci")):
            unsettled.append(_contender(name, c))
        console.print(f"    {_contender(name, c)}: bulk {c['bulk_speedup']:.3f}x{escape(bulk)} ({escape(parts)})")
    if unsettled:
        console.print(
            f"    within noise in bulk: {escape(', '.join(unsettled))} (the cycles did not tell them from the "
            "reference; more --paired-cycles narrow the intervals)"
        )


def _contender(cid: str, c: dict[str, Any]) -> str:
    """A contender of the paired final as ``variant (settings)`` (its id names the variant in older profiles)."""
    return f"{c.get('variant') or cid} ({_settings(c.get('settings') or {})})"


def _marks(choices: dict[str, Any]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], list[str]] = {}
    for tier, c in choices.items():
        if "variant" not in c:
            continue
        out.setdefault((c["variant"], json.dumps(c.get("settings") or {}, sort_keys=True)), []).append(tier)
        if c.get("latency_variant"):
            key = (c["latency_variant"], json.dumps(c.get("latency_settings") or {}, sort_keys=True))
            out.setdefault(key, []).append(f"{tier} bs=1")
    return {k: ", ".join(v) for k, v in out.items()}


def render_choice(choices: dict[str, Any], console: Any = None) -> None:
    """One line per tier: what Encoder.load chooses on this machine and why."""
    from rich.console import Console
    from rich.markup import escape

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    for tier, c in choices.items():
        if "error" in c:
            console.print(f"tier {tier}: [yellow]nothing eligible[/] ({escape(c['error'])})")
            continue
        settings = escape(_settings(c.get("settings") or {}))
        line = f"tier {tier}: [bold]{c['variant']}[/] {settings} - {escape(c['reason'])}"
        if c.get("latency_variant"):
            line += f"; batch-1 calls: {c['latency_variant']} {escape(_settings(c.get('latency_settings') or {}))}"
        if c.get("max_batch_tokens"):
            line += f"; at most {c['max_batch_tokens']} tokens per call"
        if c.get("peak_rss_mb"):
            line += f"; peak RSS {c['peak_rss_mb']:.0f} MB here"
        console.print(line)
        for warning in c.get("warnings") or []:
            console.print(f"    [yellow]{escape(warning)}[/]")
        for note in c.get("notes") or []:
            console.print(f"    [dim]{escape(note)}[/]")


def tune_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder written by `stedge export`."),
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="Tune only these variants (repeatable)."),
    threads: Optional[int] = typer.Option(
        None, "--threads", "-t", min=1, help="Only this thread count (default: all physical cores)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Engine defaults only and fewer texts (~1.5 s per variant)."),
    budget: Optional[float] = typer.Option(
        None, "--budget", min=1.0, help="Target total seconds (default 4 per variant)."
    ),
    texts: Optional[Path] = typer.Option(
        None,
        "--texts",
        help="A text file (one text per line) instead of the built-in samples, for every workload: bulk batches, "
        "passages (the texts joined) and, without --queries, batch 1.",
    ),
    queries: Optional[Path] = typer.Option(
        None,
        "--queries",
        help="A text file of your app's queries (one per line; for a reranker, each is paired with a text as its "
        "document): batch-1 calls are timed on them and on them joined in pairs, so batch-1 choices such as "
        "OpenVINO's static padding and the batch-1 route fit their lengths; bulk workloads are unchanged.",
    ),
    batch_size: list[int] = typer.Option(
        [32], "--batch-size", "-b", help="Bulk batch sizes to time (repeatable; batch 1 is always timed)."
    ),
    paired_cycles: Optional[int] = typer.Option(
        None,
        "--paired-cycles",
        min=0,
        help="Cycles of the paired final, which times each tier's close contenders side by side (0 skips it; "
        "default: stedge_runtime.tune.PAIRED_CYCLES, the margin PAIRED_WITHIN).",
    ),
    memory: bool = typer.Option(
        True,
        "--memory/--no-memory",
        help="Once the profile is written, measure in a fresh process the peak RSS of each tier's choice and of each "
        "configuration a memory budget (max_memory_mb, --max-memory-mb) may fall back to, and whether it had "
        "leveled off by the end (a budget takes only what did; 12-40 s each for MiniLM on 2 cores, depending on "
        "the variant and the host's load; not with --quick or --dry-run). The profile is written again after each "
        "probe, so a tune stopped in them keeps what they measured. Figures this machine's previous profile measured "
        "on the same variant files, workloads and token budget are kept (a re-tune after `stedge export --add` "
        "probes only what changed).",
    ),
    remeasure_memory: bool = typer.Option(
        False,
        "--remeasure-memory",
        help="Probe every configuration's memory again instead of keeping the previous profile's figures.",
    ),
    fresh_choices: bool = typer.Option(
        False,
        "--fresh-choices",
        help="Choose each tier, its batch-1 route, the duels' static padding and int8 group, and the token budget "
        "afresh. By default a re-tune keeps the previous profile's choice of a tier where the paired final cannot "
        "tell the new fastest from it, where its batch-1 calls went where a route duel cannot tell the new "
        "destination faster, its padding and group unless a duel shows another 5 % faster with confidence, and its "
        "token budget unless another is 10 % faster in every round, so an app does not move within noise.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print, but do not write the profile."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile and the choices as JSON."),
) -> None:
    """Time every verified variant of ARTIFACT on this machine (engine settings: threads, spinning, OpenVINO hints,
    static shapes and their padding, OpenVINO's run-time int8 groups; batch 1 and bulk, short texts and passages;
    then the padded tokens per engine call, on the fastest; then a paired final of the close contenders, side by
    side pass after pass) and write ARTIFACT/tuning/<machine key>.json,
    which Encoder.load uses to choose the fastest variant of each precision tier here and its batch size in tokens;
    then each tier's choice, and each configuration a memory budget may fall back to, runs in a fresh process for
    its peak RSS, kept in the profile (--no-memory skips it).
    Profiles of other machines are kept and ignored here."""
    from stedge_runtime.artifact import Manifest
    from stedge_runtime.tune import best_choices

    lines = read_lines(texts, "--texts")
    prof, file = run_tune(
        artifact,
        variant or None,
        threads,
        quick,
        budget,
        lines,
        tuple(batch_size),
        show_progress=not as_json,
        write=not dry_run,
        paired_cycles=paired_cycles,
        memory=memory,
        queries=read_lines(queries, "--queries"),
        reuse_memory=not remeasure_memory,
        keep_choices=not fresh_choices,
    )
    choices = best_choices(artifact, profile=prof)
    if as_json:
        typer.echo(json.dumps({"profile": prof, "file": str(file) if file else None, "choices": choices}, indent=2))
        return
    m = Manifest.read(artifact)
    render_profile(prof, {n: v.to_dict() for n, v in m.variants.items()}, choices)
    typer.echo(f"profile written to {file}" if file else "profile not written (--dry-run)")

    from stedge.export.plan import bf16_hint

    hint = bf16_hint(artifact, m.variants, str(m.source.get("model") or "MODEL"))
    if hint:
        typer.secho(hint, fg="yellow", err=True)


def read_lines(path: Path | None, option: str) -> list[str] | None:
    """The non-empty lines of a UTF-8 text file given as ``option`` (None when not given)."""
    if path is None:
        return None
    try:
        lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise StedgeError(f"{option} {path}: cannot read it as UTF-8 text ({e})") from None
    if not lines:
        raise StedgeError(f"{option} {path}: no non-empty lines")
    return lines


def register(app: typer.Typer) -> None:
    """Add `stedge tune` to the app."""
    app.command("tune")(tune_cmd)
