"""`stedge bench SUITE_OR_PATH`: run a benchmark suite (also `python -m stedge.bench`); `stedge bench-pool RUN...`:
pool the interleaved ratios of several runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer


def bench(
    suite: str = typer.Argument(..., help="Suite name in benchmarks/suites/ (cpu, gpu, smoke) or a .toml file."),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Folder for results.json, results.md and the PNGs "
        "(default: benchmarks/results/<cpu slug>/<suite> in a checkout, else ./stedge-bench/<cpu slug>/<suite>; "
        "a CUDA suite uses the GPU's name, e.g. nvidia-h200, as the slug; "
        "with --quick models/bench-<suite>-quick, git-ignored).",
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        "-t",
        min=0,
        help="Thread budget for every engine (0: all physical cores; default: the suite's).",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="One repetition, fewer texts and batch sizes: a fast look, not for quoting."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the results JSON on stdout (progress and logs go to stderr)."
    ),
    peer_python: Optional[Path] = typer.Option(
        None,
        "--peer-python",
        metavar="PATH",
        help="Run the sentence-transformers peers in this interpreter, e.g. .venv-compat/bin/python (the "
        "compatibility venv with its ONNX/OpenVINO backends); default: $STEDGE_BENCH_PEER_PYTHON, else the "
        "suite's peer_python, else this interpreter.",
    ),
) -> None:
    """Measure every subject of a suite side by side: speed, latency, memory, cold start and accuracy."""
    from . import default_results_dir
    from .corpus import is_corpus_suite
    from .report import markdown_table
    from .runner import find_suite, load_suite, run_suite

    file = find_suite(suite)
    if is_corpus_suite(file):  # embed-corpus throughput: its own subjects and table
        if peer_python is not None:
            typer.echo("note: --peer-python applies to speed suites; the corpus suite's subjects run here", err=True)
        _corpus(file, out, threads, quick, as_json)
        return
    from .peer import resolve_peer_python

    s = load_suite(file)
    s.peer_python = resolve_peer_python(peer_python, s.peer_python)  # a bad path fails before anything runs
    if quick:
        s = s.quick()
    target = out or default_results_dir(s.name, quick, s.models_dir, s.device)
    from stedge.io import check_writable

    check_writable(target, "--out")  # before minutes of measuring

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    results = run_suite(
        s,
        out_dir=target,
        threads=threads,
        progress=sys.stderr.isatty() or not as_json,
        log=log,
        peer_python=s.peer_python,
    )
    keep_suite_file(file, target)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    typer.echo(markdown_table(results))
    names = ("results.json", "results.md", "speedup_vs_accuracy.png", "throughput_vs_batch.png")
    typer.echo(f"\nresults written to {target}/ ({', '.join(n for n in names if (Path(target) / n).is_file())})")
    failed = [r for r in results["rows"] if r["status"] == "error"]
    if failed:
        typer.secho(
            f"{len(failed)} subject(s) failed: " + "; ".join(f"{r['id']}: {r['reason']}" for r in failed),
            fg="red",
            err=True,
        )
        raise typer.Exit(1)


def _corpus(file: Path, out: Optional[Path], threads: Optional[int], quick: bool, as_json: bool) -> None:
    from . import default_results_dir
    from .corpus import corpus_table, load_corpus_suite, run_corpus_suite

    s = load_corpus_suite(file)
    target = out or default_results_dir(s.name, quick, s.models_dir)
    results = run_corpus_suite(s, target, threads=threads, quick=quick, log=lambda msg: typer.echo(msg, err=True))
    keep_suite_file(file, target)
    typer.echo(json.dumps(results, indent=2) if as_json else corpus_table(results))
    if any(r["status"] != "ok" for r in results["rows"]):
        raise typer.Exit(1)


def keep_suite_file(file: Path, target: Path) -> None:
    """A suite file that is not a bundled one is copied beside its results as ``suite.toml`` (written atomically),
    so a run made with a one-off suite can be repeated from its folder; bundled suites are named in results.json."""
    from . import SUITES_DIR
    from .report import write_text_atomic

    file = Path(file).resolve()
    if file.parent != SUITES_DIR.resolve() and Path(target).is_dir():
        write_text_atomic(Path(target) / "suite.toml", file.read_text(encoding="utf-8"))


def bench_pool(
    runs: list[Path] = typer.Argument(..., help="Folders `stedge bench` wrote (or their results.json), 1 or more."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "-b", min=1, help="Interleaved batch size (default: each run's headline batch size)."
    ),
    passages: bool = typer.Option(False, "--passages", help="The passage passes instead of the short texts."),
    against: Optional[str] = typer.Option(
        None,
        "--against",
        help="Compare with the peer whose label contains this (e.g. torch, fastembed); default: the best peer "
        "each run named.",
    ),
    subject: Optional[str] = typer.Option(
        None, "--subject", "-s", help="Only subjects whose name contains this (e.g. 'auto near', 'minilm-L3')."
    ),
    line: Optional[float] = typer.Option(
        None, "--line", min=0.0, help="A target ratio (e.g. 1.5): say whether each pooled interval clears it."
    ),
    peers: bool = typer.Option(False, "--peers", help="Pool the peers' own rows too."),
    as_json: bool = typer.Option(False, "--json", help="Print the pooled figures as JSON."),
) -> None:
    """Pool each subject's interleaved per-cycle ratios to its baseline over several runs: one median, one 95 % CI."""
    from .pool import pool, pool_table

    pooled = pool(
        runs,
        batch_size=batch_size,
        passages=passages,
        against=against,
        subject=subject,
        peers=peers,
        log=lambda msg: typer.echo(msg, err=True),
    )
    if not pooled:
        from stedge.errors import StedgeError

        raise StedgeError(
            "no subject has interleaved cycles beside its baseline in these runs: pass runs made with "
            "interleave_cycles > 0 (and --against a peer they measured, --subject a subject they have)"
        )
    typer.echo(json.dumps(pooled, indent=2) if as_json else pool_table(pooled, line))


def register(app: typer.Typer) -> None:
    """Add `bench` and `bench-pool` to the stedge app."""
    app.command("bench")(bench)
    app.command("bench-pool")(bench_pool)
