"""`stedge embed-corpus`: embed a corpus of any size into Parquet shards, resumably, locally or on Ray.

stedge embed-corpus models/minilm-stedge docs/*.jsonl.gz --text-column text --id-column _id -o out/docs
stedge embed-corpus models/minilm-stedge corpus.parquet -o out/docs --engine ray --address ray://head:10001
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def embed_corpus_cmd(
    model: str = typer.Argument(..., help="Exported artifact folder (torch-free runtime) or model reference (torch)."),
    inputs: List[str] = typer.Argument(
        ..., help="Input files or globs: .txt (a text per line), .jsonl, .csv, .tsv (each optionally .gz) or .parquet."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder: shard-*.parquet + corpus.json."),
    text_column: Optional[str] = typer.Option(
        None,
        "--text-column",
        help="Text column of a table (default: text, sentence, ... whichever the first record has).",
    ),
    id_column: Optional[str] = typer.Option(
        None, "--id-column", help="Id column (default: the line number, prefixed with the file when there are several)."
    ),
    prompt_name: Optional[str] = typer.Option(None, "--prompt-name", help="Prompt from the model's config to prepend."),
    normalize: bool = typer.Option(False, "--normalize", help="L2-normalize the vectors."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored vector type: float32 or float16."),
    precision: str = typer.Option(
        "float32",
        "--precision",
        help="Store quantized vectors: int8, uint8 (calibrated "
        "ranges, recorded in corpus.json), binary or ubinary (packed bits).",
    ),
    calibration: Optional[str] = typer.Option(
        None,
        "--calibration",
        help="int8/uint8: texts for the ranges (default: the artifact's saved ones, `stedge calibrate`).",
    ),
    calibration_column: Optional[str] = typer.Option(
        None, "--calibration-column", help="Text column of a calibration table."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per model call."),
    shard_rows: int = typer.Option(100_000, "--shard-rows", help="Rows per Parquet shard (the unit of resume)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Artifact variant (see `stedge info ARTIFACT`)."),
    tier: Optional[str] = typer.Option(
        None,
        "--tier",
        help="Precision tier for the automatic variant choice: exact, near (default) or compressed (artifacts).",
    ),
    max_memory_mb: Optional[float] = typer.Option(
        None,
        "--max-memory-mb",
        min=1.0,
        help="Artifacts: each encoder's choice (one per Ray actor) must have peaked at most this many MB in `stedge "
        "tune`'s memory probe here (see `stedge info ARTIFACT --max-memory-mb N`).",
    ),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: the CPU for artifacts)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Engine threads per encoder (artifacts)."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (an actor pool on Ray Data)."),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="Ray cluster to join (host:port, ray://host:10001 or auto); default: a local Ray instance.",
    ),
    workers: int = typer.Option(2, "--workers", help="Ray actors, each holding one encoder."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs each Ray actor reserves."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Log unreadable rows (file:line) and go on."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an output folder of another job."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed a corpus into Parquet shards (id, text_sha256, vector), resumably: run the same command again
    after a crash and it continues after the last complete shard."""
    from .local import embed_corpus

    summary = embed_corpus(
        model,
        inputs,
        output,
        text_column=text_column,
        id_column=id_column,
        prompt_name=prompt_name,
        normalize=normalize,
        dtype=dtype,
        precision=precision,
        calibration=calibration,
        calibration_column=calibration_column,
        batch_size=batch_size,
        shard_rows=shard_rows,
        variant=variant,
        device=device,
        threads=threads,
        tier=tier,
        max_memory_mb=max_memory_mb,
        engine=engine,
        address=address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        skip_bad_rows=skip_bad_rows,
        overwrite=overwrite,
        progress=not (quiet or as_json),
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    if summary["already_complete"]:
        typer.echo(f"{output}: already complete ({summary['rows']} rows in {summary['shards']} shards)")
        return
    resumed = f", resumed after row {summary['resumed_from_row']}" if summary["resumed_from_row"] else ""
    skipped = f", {summary['skipped_rows']} bad rows skipped" if summary["skipped_rows"] else ""
    stored = summary["dtype"]
    if summary["precision"] != summary["dtype"]:
        stored = f"{summary['precision']}, {summary['width']} x {summary['dtype']}"
    typer.echo(
        f"{summary['rows']} rows x {summary['dimension']} ({stored}) in {summary['shards']} shards "
        f"-> {output}{resumed}{skipped}; {summary['rows_this_run']} rows in {summary['seconds']:.1f} s "
        f"({summary['rows_per_s'] or 0:,.0f} rows/s, {summary['engine']})"
    )


def register(app: typer.Typer) -> None:
    """Add `embed-corpus` to the stedge app."""
    app.command("embed-corpus")(embed_corpus_cmd)
