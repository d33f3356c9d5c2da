"""`stedge train` and `stedge eval`.

    stedge train all-MiniLM-L6-v2 --train-data stsb/train.tsv.gz --columns sentence1,sentence2,score \\
        --loss cosent --eval-data stsb/dev.tsv.gz -o models/minilm-stsb
    stedge train --config train.yaml
    stedge eval models/minilm-stsb --data stsb/test.tsv.gz --task sts
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import StedgeError
from ..models.cli import MEMORY_HELP, TIER_HELP


def parse_prompts(values: list[str] | None) -> Any:
    """--prompts values -> one of the four prompt forms.

    ``"query: "`` (one string for every column), ``anchor=query: `` (repeatable: column -> prompt),
    or JSON for the dataset forms (``{"nli": {"anchor": "query: "}}``).
    """
    if not values:
        return None
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            return json.loads(values[0])
        except json.JSONDecodeError as e:
            raise StedgeError(f"--prompts: not valid JSON ({e})") from None
    pairs = [v.split("=", 1) for v in values]
    if all(len(p) == 2 and p[0].strip() and " " not in p[0].strip() for p in pairs):
        return {k.strip(): v for k, v in pairs}
    if len(values) == 1:
        return values[0]
    raise StedgeError("--prompts: give one prompt string, or column=prompt pairs (repeat --prompts), or JSON")


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console(stderr=False)
    t = Table(title=escape(f"trained -> {summary['output']}"), show_header=True)
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    for k in summary.get("metrics_after", {}):
        b = summary["metrics_before"].get(k)
        t.add_row(
            k[5:] if k.startswith("eval_") else k,
            f"{b:.4f}" if b is not None else "-",
            f"{summary['metrics_after'][k]:.4f}",
        )
    con.print(t)
    extra = f", adapter {summary['adapter_size_bytes'] / 1e6:.2f} MB" if "adapter_size_bytes" in summary else ""
    con.print(
        f"{summary['steps']} steps, {summary['epochs']:.2f} epochs, train loss {summary['train_loss']:.4f}, "
        f"{summary['train_runtime_s']:.1f} s training ({summary['total_time_s']:.1f} s total), "
        f"{summary['size_bytes'] / 1e6:.1f} MB on disk{extra}"
    )


def train(
    model: Optional[str] = typer.Argument(None, help="Base model reference (folder, HF cache, bundled name, Hub id)."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML/JSON/TOML config (multi-dataset, per-dataset losses...)."
    ),
    train_data: Optional[str] = typer.Option(
        None, "--train-data", help="Training data: CSV/TSV/JSON/JSONL/Parquet (gz ok) or a datasets name."
    ),
    eval_data: Optional[str] = typer.Option(
        None, "--eval-data", help="Evaluation data (run by an evaluator during training)."
    ),
    eval_task: Optional[str] = typer.Option(
        None,
        "--eval-task",
        help="sts, triplet, ir or rerank (guessed from the columns; a cross-encoder: rerank or sts).",
    ),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Use only the first N evaluation rows."),
    eval_steps: Optional[int] = typer.Option(
        None, "--eval-steps", help="Evaluate every N steps (default: every epoch)."
    ),
    loss: Optional[str] = typer.Option(
        None, "--loss", help="Loss name (mnrl, cosent, angle, cosine, softmax, triplet, ...; bce for a cross-encoder)."
    ),
    columns: Optional[str] = typer.Option(
        None, "--columns", help="Comma-separated columns to use, inputs in order (+ label/score)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N training rows."),
    label_range: Optional[str] = typer.Option(
        None,
        "--label-range",
        help="LO:HI, the range the labels run over in the data: rescaled onto 0-1 (STS-B scores, bce or cosine: 0:5).",
    ),
    epochs: float = typer.Option(1.0, "--epochs", help="Training epochs."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after N optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size per device."),
    lr: float = typer.Option(2e-5, "--lr", help="Peak learning rate."),
    warmup_ratio: float = typer.Option(0.1, "--warmup-ratio", help="Linear warmup over this fraction of the steps."),
    prompts: Optional[List[str]] = typer.Option(
        None, "--prompts", help="'prompt', column=prompt (repeatable) or JSON."
    ),
    batch_sampler: str = typer.Option("batch", "--batch-sampler", help="batch or no_duplicates."),
    lora_r: Optional[int] = typer.Option(
        None, "--lora-r", help="Train a LoRA adapter of this rank instead of the full model."
    ),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2 * r)."),
    lora_targets: Optional[str] = typer.Option(
        None,
        "--lora-targets",
        help="Comma-separated module names to adapt (default: peft's for the architecture, e.g. query,value for BERT).",
    ),
    max_seq_length: Optional[int] = typer.Option(None, "--max-seq-length", help="Truncate inputs to N tokens."),
    seed: int = typer.Option(42, "--seed", help="Random seed."),
    save_steps: int = typer.Option(500, "--save-steps", help="Write a checkpoint every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT_checkpoints."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep OUT_checkpoints after success."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 mixed precision."),
    fp16: bool = typer.Option(False, "--fp16", help="float16 mixed precision (GPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: best available)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (sentence-transformers layout)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune a sentence encoder (full model or LoRA adapter), or with --loss bce a cross-encoder (reranker; a new
    one from a sentence encoder) on (query, document, label) rows; saves the sentence-transformers layout + model
    card."""
    from .config import check_limit, config_from_dict, load_config, run_training

    check_limit(eval_limit, "--eval-limit")

    if config is not None:
        if model or train_data or loss or label_range:
            raise StedgeError(
                "--config describes the whole run: drop MODEL, --train-data, --loss and --label-range (put them in "
                "the file)"
            )
        cfg = load_config(config)
        if output is not None:
            cfg.output = str(output)
        cfg.overwrite = cfg.overwrite or overwrite
    else:
        missing = [
            n
            for n, v in (("MODEL", model), ("--train-data", train_data), ("--loss", loss), ("-o/--output", output))
            if not v
        ]
        if missing:
            raise StedgeError(f"stedge train needs {', '.join(missing)} (or --config FILE)")
        args: dict[str, Any] = {
            "num_train_epochs": epochs,
            "max_steps": max_steps,
            "per_device_train_batch_size": batch_size,
            "per_device_eval_batch_size": batch_size,
            "learning_rate": lr,
            "warmup_ratio": warmup_ratio,
            "seed": seed,
            "save_steps": save_steps,
            "batch_sampler": batch_sampler,
            "bf16": bf16,
            "fp16": fp16,
        }
        if eval_steps:
            args.update(eval_strategy="steps", eval_steps=eval_steps)
        d: dict[str, Any] = {
            "model": model,
            "output": str(output),
            "train_data": train_data,
            "loss": loss,
            "columns": columns,
            "label_range": label_range,
            "prompts": parse_prompts(prompts),
            "args": args,
            "overwrite": overwrite,
            "max_seq_length": max_seq_length,
        }
        if eval_data:
            d["eval"] = {"data": eval_data, "task": eval_task, "limit": eval_limit}
        if (lora_alpha or lora_targets) and not lora_r:
            raise StedgeError("--lora-alpha / --lora-targets need --lora-r N (the adapter rank)")
        if lora_r:
            d["lora"] = {"r": lora_r, "lora_alpha": lora_alpha or 2 * lora_r}
            if lora_targets:
                d["lora"]["target_modules"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
        cfg = config_from_dict(d, where="stedge train")
        if limit is not None:
            check_limit(limit, "--limit")
            cfg.datasets["train"].limit = limit
    from .callbacks import RichProgressCallback

    callbacks = [RichProgressCallback(quiet=quiet or as_json)]
    summary = run_training(cfg, resume=resume, callbacks=callbacks, device=device, keep_checkpoints=keep_checkpoints)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: the first process reports
        _print_summary(summary, as_json)


# --------------------------------------------------------------------------- eval
def load_for_eval(
    model: str,
    task: str,
    device: str | None = None,
    variant: str | None = None,
    tier: str | None = None,
    max_memory_mb: float | None = None,
) -> Any:
    """A torch SentenceEncoder/CrossEncoder, or the runtime Encoder/Reranker for an artifact folder (has
    stedge.json): ``variant`` named, else the choice for ``tier`` within ``max_memory_mb``, as `stedge embed` and
    `stedge rank` load it (those three are errors for a torch model)."""
    from stedge_runtime.artifact import Manifest

    from ..models.cli import _load, is_artifact_folder
    from .config import CROSS_ENCODER_EVAL_TASKS, is_cross_encoder

    if is_artifact_folder(model):
        kind = "reranker" if Manifest.read(model).task == "reranking" else "encoder"
    else:
        kind = "reranker" if is_cross_encoder(model) else "encoder"
    if kind == "reranker" and task not in CROSS_ENCODER_EVAL_TASKS:
        raise StedgeError(
            f"{model} is a cross-encoder (reranker): it scores pairs and has no embeddings, so --task {task} does "
            f"not apply; use --task rerank (ranking) or --task sts (correlation of its scores with the gold ones)"
        )
    return _load(kind, model, variant, device, tier, False, max_memory_mb)


def _quantized_facts(evaluator: Any, model: Any) -> dict[str, Any]:
    """precision, rescoring, bytes per vector, ranges source and search time of a quantized ir eval."""
    from stedge_runtime.quantization import bytes_per_vector

    dim = int(model.get_sentence_embedding_dimension())
    return {
        "precision": evaluator.precision,
        "rescore_multiplier": evaluator.rescore_multiplier,
        "bytes_per_vector": bytes_per_vector(evaluator.precision, dim),
        "float32_bytes_per_vector": bytes_per_vector("float32", dim),
        "ranges": evaluator.ranges_source,
        "search_seconds": round(evaluator.search_seconds or 0.0, 4),
    }


def eval_cmd(
    model: str = typer.Argument(
        ..., help="Model reference, or an exported artifact folder (runs through stedge_runtime)."
    ),
    data: str = typer.Option(
        ..., "--data", help="Eval data: STS pairs, triplets, rerank rows, or a BEIR folder for ir."
    ),
    task: str = typer.Option(..., "--task", help="sts, triplet, ir or rerank (a cross-encoder: rerank or sts)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N rows (queries for ir)."),
    split: Optional[str] = typer.Option(None, "--split", help="qrels split for ir (default test)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ..."),
    precision: str = typer.Option(
        "float32", "--precision", help="ir: store the corpus as float32, int8, uint8, binary or ubinary."
    ),
    rescore_multiplier: int = typer.Option(
        0,
        "--rescore-multiplier",
        help="ir with a quantized --precision: the top 10 come from rescoring the best "
        "M x 10 candidates with the float query (0: off).",
    ),
    variant: Optional[str] = typer.Option(None, "--variant", help="Artifact variant (see `stedge info ARTIFACT`)."),
    tier: Optional[str] = typer.Option(None, "--tier", help=TIER_HELP),
    max_memory_mb: Optional[float] = typer.Option(None, "--max-memory-mb", min=1.0, help=MEMORY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Evaluate a model or an exported artifact exactly the same way (STS Spearman, triplet accuracy, IR, rerank;
    a cross-encoder takes rerank, or sts: the correlation of its pair scores); for an artifact, the variant
    `stedge embed` would run (--variant, --tier, --max-memory-mb choose it), named in the result."""
    import time

    from .config import EVAL_TASKS, _stem, build_evaluator, check_limit

    check_limit(limit, "--limit")

    if task not in EVAL_TASKS:
        raise StedgeError(f"--task must be one of {', '.join(EVAL_TASKS)}, got {task!r}")
    ir = {"precision": precision, "rescore_multiplier": rescore_multiplier}
    if precision == "float32" and not rescore_multiplier:
        ir = {}
    evaluator = build_evaluator(task, data, limit=limit, name=_stem(data), split=split, **ir)
    m = load_for_eval(model, task, device, variant, tier, max_memory_mb)
    t0 = time.perf_counter()
    metrics = evaluator(m)
    elapsed = time.perf_counter() - t0
    result = {
        "model": model,
        "task": task,
        "data": data,
        "backend": type(m).__module__.split(".")[0],
        "primary_metric": evaluator.primary_metric,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "seconds": round(elapsed, 2),
    }
    sel = getattr(m, "selection", None)  # an artifact: which variant ran, and why
    if sel is not None:
        result.update(variant=sel.variant, variant_tier=sel.variant_tier, selection=sel.reason)
    if ir:
        result.update(_quantized_facts(evaluator, m))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    ran = f"{result['backend']}: {sel.variant}, tier {sel.variant_tier or 'none'}" if sel else result["backend"]
    t = Table(title=escape(f"{task} on {data} ({ran})"))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result["metrics"].items():
        t.add_row(k + (" *" if k == evaluator.primary_metric else ""), f"{v:.4f}")
    Console().print(t)
    if ir:
        Console().print(
            f"corpus stored as {result['precision']}: {result['bytes_per_vector']} bytes per vector "
            f"(float32: {result['float32_bytes_per_vector']}), "
            f"rescore x{result['rescore_multiplier'] or 0}, "
            f"ranges: {result['ranges'] or '-'}, search {result['search_seconds']:.3f} s"
        )
    Console().print(f"{elapsed:.1f} s")


def register(app: typer.Typer) -> None:
    """Add `train` and `eval` to the stedge app."""
    app.command("train")(train)
    app.command("eval")(eval_cmd)
