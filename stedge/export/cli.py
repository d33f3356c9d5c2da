"""`stedge export`: a model reference in, a verified ONNX/OpenVINO artifact folder out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _auto_line(path) -> str:
    """What Encoder.load picks per tier on this machine, for the table title."""
    from stedge_runtime.tune import best_choices

    picks = best_choices(path)
    return "Encoder.load here: " + ", ".join(f"{tier} -> {sel.get('variant', 'none')}" for tier, sel in picks.items())


def render_table(result) -> None:
    """Print the variants table (variant, file size, cosine, Spearman, passed) with rich."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=130)
    t = Table(title=escape(f"{result.path}  ({_auto_line(result.path)})"))
    cos = "cos"
    if any(r.get("agreement") == "score" for r in result.rows):  # a reranker: scores, not vectors
        cos = "agr"
        t.caption = "agr: score agreement with PyTorch, 1 - (score difference / spread of the scores)^2 / 2 per pair"
    for col, just in (
        ("variant", "left"),
        ("size MB", "right"),
        (f"mean {cos}", "right"),
        (f"min {cos}", "right"),
        ("Spearman", "right"),
        ("drop", "right"),
        (f"batch {cos}", "right"),
        ("tier", "center"),
        ("passed", "center"),
    ):
        t.add_column(col, justify=just)
    for r in result.rows:
        sp = "—"
        if r["spearman"] is not None:
            sp = f"{r['spearman'] * 100:.2f} (ref {r['reference_spearman'] * 100:.2f})"
        drop = "—"
        if r["drop"] is not None:
            drop = f"{r['drop']:.2f} pt" if r["drop_unit"] == "spearman_points" else f"{r['drop']:.5f}"
        passed = (
            "[yellow]not verified[/]" if r["passed"] is None else ("[green]yes[/]" if r["passed"] else "[red]no[/]")
        )
        name = r["variant"] + ("" if r["new"] else " (kept)")
        t.add_row(
            name,
            f"{r['size_bytes'] / 1e6:.1f}",
            _fmt(r["mean_cosine"], ".6f"),
            _fmt(r["min_cosine"], ".6f"),
            sp,
            drop,
            _fmt(r.get("batch_invariance_min_cos"), ".6f"),
            r.get("tier") or "—",
            passed,
        )
    console.print(t)
    for r in result.rows:
        if r.get("note"):
            typer.secho(f"{r['variant']}: {r['note']}", fg="yellow", err=True)


HELP = {
    "model": "Model folder or reference (a sentence-transformers model, a reranker, or a LoRA adapter folder).",
    "output": "Artifact folder (default: models/<model-name>-stedge).",
    "optimize": "onnxruntime level: O1, O2, O3 or O4 (O4 = fp16, for GPU).",
    "quantize": "none; fp16; bf16 (OpenVINO, run in bf16 on avx512_bf16/AMX CPUs); int8 (static and, for "
    "onnxruntime, per-row too: batch-invariant, calibrated on --calibration or built-in texts); int8-static "
    "(static int8 with --calibration required); int8-rows (onnxruntime int8, activations quantized per row at run "
    "time); int8-dynamic (onnxruntime dynamic per --isa, not batch-invariant); int8-weights / int4-weights "
    "(OpenVINO weight compression); auto (every variant that may be the fastest verified one on this CPU: int8 "
    "static and per-row, and bf16 where the CPU runs it; add --tune to time them).",
    "isa": "int8-dynamic targets: auto (this CPU), all, or avx2, avx512, avx512_vnni, arm64 (comma-separated).",
    "calibration": "Calibration texts (a text file, CSV/TSV/JSONL, or a datasets name; at most --calibration-size, "
    "spread over it) for int8 / int8-static / int8-rows and, for embedding models, the int8/uint8 output ranges "
    "saved with the artifact. 'builtin' names the built-in texts (varied genres and lengths; --quantize int8 and "
    "auto use them without --calibration).",
    "calibration_method": "minmax, entropy or percentile (ONNX static int8).",
    "eval": "STS pairs (sentence1, sentence2, score) for Spearman, e.g. stsb/test.tsv.gz.",
    "max_drop": "The compressed tier's budget: Spearman points with --eval (default 1.0), else 1 - mean cosine "
    "(default 0.05). Given, a variant losing more fails the export (exit 1, nothing written).",
    "add": "Add the variants to an existing artifact of the same model (others are kept, with the files they were "
    "verified on).",
}


def register(app: typer.Typer) -> None:
    """Add `stedge export`, `stedge pack` and `stedge calibrate` to the app."""

    @app.command("export")
    def export_cmd(
        model: str = typer.Argument(..., help=HELP["model"]),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help=HELP["output"]),
        backend: Optional[str] = typer.Option(
            None,
            "--backend",
            help="onnx, openvino or all (default: onnx; with --quantize auto, all where OpenVINO is installed).",
        ),
        optimize: Optional[str] = typer.Option(None, "--optimize", help=HELP["optimize"]),
        quantize: str = typer.Option("none", "--quantize", help=HELP["quantize"]),
        isa: str = typer.Option("auto", "--isa", help=HELP["isa"]),
        calibration: Optional[str] = typer.Option(None, "--calibration", help=HELP["calibration"]),
        calibration_column: Optional[str] = typer.Option(
            None, "--calibration-column", help="Text column of a calibration table."
        ),
        calibration_method: str = typer.Option("minmax", "--calibration-method", help=HELP["calibration_method"]),
        calibration_size: int = typer.Option(
            300, "--calibration-size", help="Use at most this many calibration texts, spread evenly over the file."
        ),
        eval_data: Optional[str] = typer.Option(None, "--eval", help=HELP["eval"]),
        max_drop: Optional[float] = typer.Option(None, "--max-drop", help=HELP["max_drop"]),
        device: str = typer.Option("cpu", "--device", help="Where verification runs: cpu or cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
        add: bool = typer.Option(False, "--add", help=HELP["add"]),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
        tune: bool = typer.Option(
            False,
            "--tune",
            help="Then time the variants on this machine (`stedge tune`) so "
            "Encoder.load picks the fastest of each precision tier here.",
        ),
        tune_queries: Optional[Path] = typer.Option(
            None,
            "--tune-queries",
            help="Your app's queries, one a line, for the tune's batch-1 calls (as `stedge tune --queries`; "
            "implies --tune).",
        ),
    ) -> None:
        """Export MODEL to ONNX / OpenVINO with pooling inside the graph, verify every variant through
        stedge_runtime against PyTorch (tier, batch invariance), write stedge.json."""
        from stedge_runtime.cli import read_lines

        from stedge.export import export_model

        queries = read_lines(tune_queries, "--tune-queries")  # before the export: a bad file costs nothing
        result = export_model(
            model,
            output,
            backend=backend,
            optimize=optimize,
            quantize=quantize,
            isa=isa,
            calibration=calibration,
            calibration_column=calibration_column,
            calibration_method=calibration_method,
            calibration_size=calibration_size,
            eval_data=eval_data,
            max_drop=max_drop,
            device=device,
            overwrite=overwrite,
            add=add,
            show_progress=not as_json,
        )
        if not as_json:
            render_table(result)
            from stedge.export.plan import bf16_hint

            hint = bf16_hint(result.path, [r["variant"] for r in result.rows], model, device)
            if hint:
                typer.secho(hint, fg="yellow", err=True)
        tuning = None
        if tune or queries:
            from stedge.tune.cli import tune_after_export

            tuning = tune_after_export(result.path, show=not as_json, queries=queries)
        if as_json:
            typer.echo(json.dumps({**result.to_dict(), **({"tuning": tuning} if tuning else {})}, indent=2))

    _register_pack(app)


def _print_pack(res, as_json: bool) -> None:
    """`stedge pack`'s report: its JSON, or its notes (stderr), files and summary line."""
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    for note in res.notes:
        typer.secho(note, fg="yellow", err=True)
    for rel, size in res.files.items():
        typer.echo(f"  {rel:48} {size / 1e6:8.2f} MB")
    typer.echo(
        f"wrote {res.path}: {', '.join(res.variants)} (default {res.default_variant}), "
        f"{sum(res.files.values()) / 1e6:.2f} MB"
    )
    typer.echo(
        f"on a device of another CPU: `stedge-runtime tune {res.path}` there (the runtime alone) times the packed "
        "variants, so Encoder.load picks the fastest for it; `stedge-runtime info` shows the choice",
        err=True,
    )


def _register_pack(app: typer.Typer) -> None:
    """Add `stedge pack` and `stedge calibrate` (artifact post-processing) to the app."""

    @app.command("pack")
    def pack_cmd(
        artifact: Path = typer.Argument(..., help="An artifact folder written by `stedge export`."),
        output: Path = typer.Option(..., "-o", "--output", help="Folder for the runtime-only artifact."),
        variant: Optional[List[str]] = typer.Option(
            None,
            "--variant",
            "-v",
            help="Variant to keep (repeatable; default: what Encoder.load picks for --tier on this machine, "
            "with its batch-1 variant when calls are routed).",
        ),
        tier: str = typer.Option("near", "--tier", help="exact, near or compressed: what is packed without --variant."),
        max_memory_mb: Optional[float] = typer.Option(
            None,
            "--max-memory-mb",
            min=1.0,
            help="Without --variant: what Encoder.load picks for --tier within this many MB (its peak RSS in `stedge "
            "tune`'s memory probe here).",
        ),
        portable: bool = typer.Option(
            True,
            "--portable/--no-portable",
            help="Without --variant: when what this machine picks runs only on some CPUs (openvino-bf16 needs "
            "avx512_bf16 or AMX), also pack what Encoder.load picks for --tier on a CPU without those flags, so the "
            "app runs on any CPU.",
        ),
        device: Optional[List[str]] = typer.Option(
            None,
            "--device",
            help="Without --variant: the devices the app runs on (repeatable; default cpu): what Encoder.load picks "
            "for --tier on each is packed (npu, gpu, cuda...: by the device's rule).",
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder stedge wrote."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Copy an artifact without its torch weights, for apps that ship stedge_runtime: the tokenizer, the
        chosen variants' files (sha256-checked) and a stedge.json listing only them."""
        from stedge.export.pack import pack_artifact

        res = pack_artifact(
            artifact,
            output,
            variant or [],
            overwrite=overwrite,
            tier=tier,
            max_memory_mb=max_memory_mb,
            portable=portable,
            devices=device or (),
        )
        _print_pack(res, as_json)

    @app.command("calibrate")
    def calibrate_cmd(
        artifact: Path = typer.Argument(..., help="Embedding artifact folder (with stedge.json)."),
        texts: str = typer.Option(
            ...,
            "--texts",
            help="Calibration texts: a text file, CSV/TSV/JSONL, or a datasets name (a few hundred in-domain texts).",
        ),
        column: Optional[str] = typer.Option(None, "--column", help="Text column of a table."),
        limit: int = typer.Option(1000, "--limit", help="Use at most this many texts."),
        variant: Optional[str] = typer.Option(
            None, "--variant", help="Variant that embeds them (default: the artifact's choice for the CPU)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the embedding_calibration field as JSON."),
    ) -> None:
        """Save int8/uint8 embedding ranges with an artifact; encode(precision="int8") and `stedge embed
        --precision int8` use them."""
        from stedge.export.calibration import calibrate_artifact

        field = calibrate_artifact(artifact, texts, column=column, limit=limit, variant=variant)
        if as_json:
            typer.echo(json.dumps(field, indent=2))
        else:
            typer.echo(
                f"{artifact / field['file']}: ranges of {field['texts']} texts embedded with "
                f"{field['variant']} (sha256 {field['sha256'][:16]}...)"
            )
