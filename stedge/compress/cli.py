"""`stedge lora merge`, `stedge distill`, `stedge pca`: each writes a model folder and a before/after report."""

from __future__ import annotations

import json
from typing import List, Optional

import typer


def _emit(report: dict, as_json: bool) -> None:
    from .report import print_report

    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from rich.console import Console

        print_report(report, Console())


def lora_merge(
    adapter: str = typer.Argument(..., help="LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the merged model."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model (defaults to the adapter's base_model_name_or_path)."
    ),
    eval_path: Optional[str] = typer.Option(
        None, "--eval", help="STS pairs (sentence1, sentence2, score) for a Spearman before/after."
    ),
    batch_size: int = typer.Option(64, help="Texts per batch when encoding."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Merge a LoRA adapter into its base model and save a plain sentence-transformers model."""
    from .lora import run_merge

    _emit(
        run_merge(
            adapter, output, base=base, eval_path=eval_path, overwrite=overwrite, batch_size=batch_size, device=device
        ),
        as_json,
    )


def distill(
    teacher: str = typer.Argument(..., help="Teacher model reference or folder."),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the student model."),
    data: List[str] = typer.Option(..., "--data", help="Unlabeled sentences: text file or table (repeatable)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Teacher layers to keep, e.g. 0,2,5."),
    num_layers: Optional[int] = typer.Option(
        None, "--num-layers", help="Keep N layers spread evenly (first and last kept)."
    ),
    student: Optional[str] = typer.Option(
        None, "--student", help="Distill into this (smaller) model instead of a layer-reduced teacher."
    ),
    eval_path: Optional[str] = typer.Option(
        None, "--eval", help="STS pairs for a similarity evaluator and the Spearman before/after."
    ),
    epochs: float = typer.Option(1, help="Training epochs."),
    batch_size: int = typer.Option(64, help="Training batch size."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate."),
    max_sentences: Optional[int] = typer.Option(None, help="Use at most this many sentences."),
    cache_dir: Optional[str] = typer.Option(
        None, help="Where teacher embeddings are cached (default: $STEDGE_CACHE or ~/.cache/stedge)."
    ),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    seed: int = typer.Option(42, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Shrink a model by keeping some layers (or using --student) and train it on the teacher's embeddings (MSE)."""
    from .distill import run_distill
    from .layers import parse_layers

    _emit(
        run_distill(
            teacher,
            output,
            data,
            layers=parse_layers(layers) if layers is not None else None,
            num_layers=num_layers,
            student=student,
            eval_path=eval_path,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            max_sentences=max_sentences,
            cache_dir=cache_dir,
            device=device,
            seed=seed,
            overwrite=overwrite,
            show_progress_bar=not as_json,
        ),
        as_json,
    )


def pca(
    model: str = typer.Argument(..., help="Model reference or folder."),
    dim: int = typer.Option(..., "--dim", help="Output dimensions."),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the reduced model."),
    data: List[str] = typer.Option(..., "--data", help="Sentences to fit PCA on: text file or table (repeatable)."),
    eval_path: Optional[str] = typer.Option(None, "--eval", help="STS pairs for the Spearman before/after."),
    uncentred: bool = typer.Option(False, "--uncentred", help="Project without subtracting the mean (for comparison)."),
    batch_size: int = typer.Option(64, help="Texts per batch when encoding."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Reduce embedding dimensions with a centring PCA Dense layer inserted before Normalize."""
    from .pca import run_pca

    _emit(
        run_pca(
            model,
            dim,
            data,
            output,
            eval_path=eval_path,
            centred=not uncentred,
            overwrite=overwrite,
            batch_size=batch_size,
            device=device,
        ),
        as_json,
    )


def register(app: typer.Typer) -> None:
    """Add `lora merge`, `distill` and `pca` to the stedge app."""
    lora_app = typer.Typer(help="LoRA adapters.", no_args_is_help=True)
    lora_app.command("merge")(lora_merge)
    app.add_typer(lora_app, name="lora")
    app.command("distill")(distill)
    app.command("pca")(pca)
