"""`stedge tune ARTIFACT`: time every verified variant here, write tuning/<machine key>.json, print the table."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from stedge_runtime.cli import read_lines, settings_text, written_text


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
    """Tune the artifact at ``path`` and write its profile (stedge_runtime.tune.tune_artifact, whose arguments these
    are; ``show_progress``: a progress bar on stderr); returns (profile, file written or None)."""
    from stedge_runtime.tune import tune_artifact

    with _bar(show_progress) as progress:
        return tune_artifact(
            path,
            variants,
            threads,
            quick,
            budget_s,
            texts,
            batch_sizes,
            progress,
            write,
            paired_cycles,
            memory,
            queries,
            reuse_memory,
            keep_choices,
        )


@contextmanager
def _bar(show: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A transient progress bar on stderr as a tune progress callback ``(what, done, total)``; None if not ``show``."""
    if not show:
        yield None
        return
    from ..progress import make_progress

    with make_progress(transient=True) as bar:
        task = bar.add_task("tuning", total=None)
        yield lambda what, done, total: bar.update(task, description=what, completed=done, total=total)


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
        typer.echo(written_text(file, path))
    return {"file": str(file), "choices": choices}


def render_profile(prof: dict[str, Any], manifest_variants: dict[str, Any], choices: dict[str, Any]) -> None:
    """The tuning table: one row per variant and setting; the chosen ones marked per tier."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from stedge_runtime.cli import profile_table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    title, cols, rows, caption = profile_table(prof, manifest_variants, choices)
    t = Table(title=title, caption=caption)
    for col in cols:
        t.add_column(col, justify="left" if col in ("variant", "tier", "settings", "chosen") else "right")
    styles = {"bad": "red", "warn": "yellow"}
    for row in rows:
        t.add_row(*(f"[{styles[st]}]{escape(text)}[/]" if st else escape(text) for text, st in row))
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
    return f"{c.get('variant') or cid} ({settings_text(c.get('settings') or {})})"


def render_choice(choices: dict[str, Any], console: Any = None) -> None:
    """One line per tier: what Encoder.load chooses on this machine and why."""
    from rich.console import Console
    from rich.markup import escape
    from stedge_runtime.cli import all_choice_lines

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    for c, line, warnings, notes in all_choice_lines(choices):
        console.print(escape(line), style="yellow" if "error" in c else None)
        for warning in warnings:
            console.print(f"    [yellow]{escape(warning)}[/]")
        for note in notes:
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
    side pass after pass) and write ARTIFACT/tuning/<machine key>.json (where ARTIFACT cannot be written, the user's
    profile folder: $STEDGE_RUNTIME_PROFILES, else the runtime's cache),
    which Encoder.load uses to choose the fastest variant of each precision tier here and its batch size in tokens;
    then each tier's choice, and each configuration a memory budget may fall back to, runs in a fresh process for
    its peak RSS, kept in the profile (--no-memory skips it).
    Profiles of other machines are kept and ignored here. On a device with only stedge-runtime installed (no
    torch), `stedge-runtime tune ARTIFACT` runs the same tune."""
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
    typer.echo(written_text(file, artifact))

    from stedge.export.plan import bf16_hint

    hint = bf16_hint(artifact, m.variants, str(m.source.get("model") or "MODEL"))
    if hint:
        typer.secho(hint, fg="yellow", err=True)


def register(app: typer.Typer) -> None:
    """Add `stedge tune` to the app."""
    app.command("tune")(tune_cmd)
