"""`stedge embed`, `stedge similarity`, `stedge rank`, `stedge info`.

MODEL is any model reference (folder, HF cache, bundled name, Hub id). An exported artifact
folder (one with stedge.json) runs through the torch-free runtime instead of torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import StedgeError, runtime_input_errors


def is_artifact_folder(model: str) -> bool:
    """True for an exported artifact (a folder with stedge.json). A folder with graphs (onnx/, openvino/)
    but no stedge.json is refused when it has no torch weights, and said to run with PyTorch when it has."""
    from stedge_runtime.artifact import has_manifest

    p = Path(model)
    if has_manifest(p):
        return True
    graphs = [d for d in ("onnx", "openvino") if (p / d).is_dir()]
    if p.is_dir() and graphs:
        weights = any(p.glob("*.safetensors")) or (p / "pytorch_model.bin").is_file()
        if not weights:
            raise StedgeError(
                f"{p} has {graphs[0]}/ but no stedge.json, so it is not a complete stedge artifact; "
                "export the model again (stedge export) or restore stedge.json"
            )
        typer.secho(
            f"note: {p} has no stedge.json: running its torch weights with PyTorch "
            f"(the graphs in {graphs[0]}/ are not used)",
            fg="yellow",
            err=True,
        )
    return False


def _npy_output(output: Optional[Path]) -> Optional[Path]:
    """Check `-o` before any work: a .npy file name in a writable, existing folder (never a folder)."""
    if output is None:
        return None
    from ..io import check_writable

    if output.is_dir():
        raise StedgeError(f"-o {output} is a folder; give a .npy file name, e.g. -o {output / 'embeddings.npy'}")
    if output.suffix != ".npy":
        raise StedgeError(f"-o {output}: give a file name ending in .npy (the embeddings are a numpy array)")
    if not output.parent.is_dir():
        raise StedgeError(f"-o {output}: folder {output.parent} does not exist")
    check_writable(output)
    return output


TIER_HELP = "Precision tier for the automatic variant choice: exact, near (default) or compressed (artifacts)."
MEMORY_HELP = (
    "Artifacts: the automatic choice must have peaked at most this many MB in `stedge tune`'s memory probe on this "
    "machine (a batch-1 route is dropped, or a lighter variant or setting taken; a warning when none fits)."
)


NO_VERIFY_HELP = (
    "Artifacts: skip the sha256 check of the graph files (for an artifact without hashes; "
    "paths stay confined to the artifact)."
)


def _load(
    kind: str,
    model: str,
    variant: Optional[str],
    device: Optional[str],
    tier: Optional[str],
    no_verify: bool,
    max_memory_mb: Optional[float] = None,
):
    """An artifact through the runtime (Encoder / Reranker), else the torch model (SentenceEncoder / CrossEncoder)."""
    if is_artifact_folder(model):
        import stedge_runtime

        cls = stedge_runtime.Encoder if kind == "encoder" else stedge_runtime.Reranker
        verify = False if no_verify else "cached"
        return cls.load(model, variant=variant, device=device or "cpu", tier=tier, verify=verify, max_memory_mb=max_memory_mb)
    if variant or tier or max_memory_mb:
        raise StedgeError(
            f"--variant / --tier / --max-memory-mb apply to exported artifacts only; '{model}' has no stedge.json"
        )
    from . import CrossEncoder, SentenceEncoder

    return (SentenceEncoder if kind == "encoder" else CrossEncoder)(model, device=device)


def _load_encoder(*args: Any):
    """``_load("encoder", model, variant, device, tier, no_verify, max_memory_mb)``."""
    return _load("encoder", *args)


def _load_reranker(*args: Any):
    """``_load("reranker", model, variant, device, tier, no_verify, max_memory_mb)``."""
    return _load("reranker", *args)


def _encode(enc, texts: list[str], batch_size: int, prompt_name: Optional[str], normalize: bool, **quant):
    """SentenceEncoder and stedge_runtime.Encoder share encode's signature; ``quant``: precision,
    ranges, calibration_embeddings."""
    return enc.encode(texts, batch_size=batch_size, prompt_name=prompt_name, normalize_embeddings=normalize, **quant)


def _quant_options(
    enc, precision: str, calibration: Optional[str], calibration_column: Optional[str], batch_size: int, normalize: bool
) -> dict:
    """encode's precision keywords for `stedge embed`: calibration texts are embedded the same way first."""
    if calibration is None:
        if precision in ("int8", "uint8") and getattr(enc, "embedding_ranges", None) is None:
            raise StedgeError(
                f"--precision {precision} needs calibration ranges: pass --calibration TEXTS, "
                "or use an artifact calibrated with `stedge calibrate ARTIFACT --texts TEXTS`"
            )
        return {"precision": precision}
    if precision not in ("int8", "uint8"):
        raise StedgeError(f"--calibration applies to --precision int8 or uint8, not {precision}")
    from ..data import read_texts

    cal = _encode(enc, read_texts(calibration, column=calibration_column), batch_size, None, normalize)
    return {"precision": precision, "calibration_embeddings": cal}


def embed(
    model: str = typer.Argument(..., help="Model reference or exported artifact folder."),
    texts: Optional[List[str]] = typer.Argument(None, help="Texts to embed."),
    file: Optional[Path] = typer.Option(
        None, "--file", "-f", help="Read texts from a file (one per line, or a table with --column)."
    ),
    column: Optional[str] = typer.Option(None, help="Text column when --file is a CSV/TSV/JSONL table."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the embeddings to a .npy file."),
    batch_size: int = typer.Option(32, help="Texts per batch."),
    prompt_name: Optional[str] = typer.Option(None, help="Prompt from the model's config to prepend."),
    normalize: bool = typer.Option(False, help="L2-normalize the embeddings."),
    variant: Optional[str] = typer.Option(None, help="Artifact variant (see `stedge info ARTIFACT`)."),
    tier: Optional[str] = typer.Option(None, "--tier", help=TIER_HELP),
    max_memory_mb: Optional[float] = typer.Option(None, "--max-memory-mb", min=1.0, help=MEMORY_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: best available)."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
    precision: str = typer.Option(
        "float32", "--precision", help="Output: float32, int8, uint8 (calibrated), binary or ubinary (packed bits)."
    ),
    calibration: Optional[str] = typer.Option(
        None, "--calibration", help="int8/uint8: texts to take the ranges from (default: the artifact's ranges)."
    ),
    calibration_column: Optional[str] = typer.Option(
        None, "--calibration-column", help="Text column of a calibration table."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: {dimension, precision, count, embeddings}."),
) -> None:
    """Embed texts with a model or an exported artifact (optionally quantized: --precision)."""
    from ..data import check_texts, read_texts

    output = _npy_output(output)
    items = check_texts(list(texts or []), "TEXT")
    if file is not None:
        items += read_texts(file, column=column)
    if not items:
        raise StedgeError("no texts: pass TEXT arguments or --file PATH")
    from stedge_runtime.quantization import check_precision

    with runtime_input_errors():
        check_precision(precision)  # before loading the model
    enc = _load_encoder(model, variant, device, tier, no_verify, max_memory_mb)
    quant = _quant_options(enc, precision, calibration, calibration_column, batch_size, normalize)
    emb = _encode(enc, items, batch_size, prompt_name, normalize, **quant)
    dim = int(enc.get_sentence_embedding_dimension())
    if output is not None:
        import numpy as np

        from ..io import atomic_file

        with atomic_file(output) as tmp, open(tmp, "wb") as f:
            np.save(f, emb)
    if as_json:
        data = {"dimension": dim, "precision": precision, "count": len(items), "embeddings": emb.tolist()}
        typer.echo(json.dumps(data))
    elif output is None:
        fmt = "{:+.4f}" if precision == "float32" else "{:d}"
        for t, v in zip(items, emb):
            head = ", ".join(fmt.format(x) for x in v[:6].tolist())
            typer.echo(f"{t[:40]!r:44} [{head}, ...] dim={dim} {precision} ({v.nbytes} bytes)")
    else:
        typer.echo(f"wrote {emb.shape[0]} x {emb.shape[1]} {emb.dtype} embeddings ({precision}) to {output}", err=True)


def similarity(
    model: str = typer.Argument(..., help="Model reference or exported artifact folder."),
    a: str = typer.Argument(..., help="First text."),
    b: str = typer.Argument(..., help="Second text."),
    variant: Optional[str] = typer.Option(None, help="Artifact variant."),
    tier: Optional[str] = typer.Option(None, "--tier", help=TIER_HELP),
    max_memory_mb: Optional[float] = typer.Option(None, "--max-memory-mb", min=1.0, help=MEMORY_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Similarity of two texts with the model's similarity function."""
    from ..data import check_texts

    check_texts([a, b], "A/B")
    enc = _load_encoder(model, variant, device, tier, no_verify, max_memory_mb)
    emb = _encode(enc, [a, b], 32, None, False)
    score = float(enc.similarity(emb[:1], emb[1:])[0][0])
    fn = getattr(enc, "similarity_fn_name", "cosine")
    if as_json:
        typer.echo(json.dumps({"similarity": score, "function": fn}))
    else:
        typer.echo(f"{score:.4f} ({fn})")


def rank(
    model: str = typer.Argument(..., help="Cross-encoder reference or exported reranker artifact."),
    query: str = typer.Argument(..., help="The query."),
    documents: Optional[List[str]] = typer.Argument(None, help="Documents to rank."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read documents from a file."),
    top_k: Optional[int] = typer.Option(None, help="Keep the best K."),
    variant: Optional[str] = typer.Option(None, help="Artifact variant."),
    tier: Optional[str] = typer.Option(None, "--tier", help=TIER_HELP),
    max_memory_mb: Optional[float] = typer.Option(None, "--max-memory-mb", min=1.0, help=MEMORY_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ..."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: a list of {corpus_id, score, text}."),
) -> None:
    """Rank documents for a query with a cross-encoder (reranker)."""
    from ..data import check_texts, read_texts

    check_texts([query], "QUERY")
    docs = check_texts(list(documents or []), "DOC")
    if file is not None:
        docs += read_texts(file)
    if not docs:
        raise StedgeError("no documents: pass DOC arguments or --file PATH")
    rr = _load_reranker(model, variant, device, tier, no_verify, max_memory_mb)
    res = rr.rank(query, docs, top_k=top_k, return_documents=True)
    if as_json:
        typer.echo(json.dumps(res))
    else:
        for r in res:
            typer.echo(f"{r['score']:+.4f}  [{r['corpus_id']}] {r['text'][:80]}")


def _variant_lines(manifest: Any) -> None:
    """One line per variant: file, size, min cosine (a reranker's: min score agreement), tier and batch
    invariance."""
    from stedge_runtime.select import batch_invariance, variant_tier

    def six(x: float | None) -> str:  # 6 decimals: the exact tier's bounds (0.9999, 0.99999) stay readable
        return "not measured" if x is None else f"{x:.6f}"

    names = max((len(n) for n in manifest.variants), default=0)
    files = max((len(v.file) for v in manifest.variants.values()), default=0)
    old = []  # reranker variants verified before score agreement (no `agreement` in their record)
    for name, v in manifest.variants.items():
        ver = v.verification
        measure = ver.get("agreement") if ver else "cosine"
        if measure is None:
            old.append(name)
        typer.echo(
            f"  {name:{names}}  {v.file:{files}}  {(v.size_bytes or 0) / 1e6:6.1f} MB  "
            f"{'min_agr' if measure == 'score' else 'min_cos'}={six(ver.min_cosine if ver else None)}  "
            f"tier={variant_tier(v) or 'none'}  alone-vs-batch={six(batch_invariance(v))}"
        )
    if manifest.task == "reranking" and old:
        typer.echo(
            f"note: {', '.join(old)}: verified by an older stedge, by the cosine of the score vectors, which "
            "stays near 1 whenever scores share an offset: their tiers may be too high. Export again to verify "
            "them by score agreement.",
            err=True,
        )


def _artifact_info(model: str, max_memory_mb: Optional[float], device: str, as_json: bool) -> None:
    """`stedge info` on an artifact folder: its variants, and each tier's choice on this machine or ``device``."""
    from stedge_runtime.artifact import Manifest
    from stedge_runtime.tune import best_choices

    manifest = Manifest.read(model)
    choices = best_choices(model, max_memory_mb=max_memory_mb, device=device)  # what Encoder.load picks per tier
    if as_json:
        typer.echo(json.dumps({**manifest.to_dict(), "device": device, "selection": choices}, indent=2))
        return
    pooling = (manifest.pooling or {}).get("mode")
    dim = f" dim={manifest.dimension}" if manifest.dimension is not None else ""  # a reranker's is a score
    typer.echo(f"artifact {model}: task={manifest.task}{dim} max_seq_length={manifest.max_seq_length} pooling={pooling}")
    _variant_lines(manifest)
    cal = manifest.embedding_calibration
    if cal is not None:
        typer.echo(
            f"  int8/uint8 output ranges: {cal.file} from {cal.texts or '?'} texts "
            f"({cal.variant or 'PyTorch at export'})"
        )
    from ..export.calibration import calibrated_on
    from ..export.plan import bf16_hint, outdated_builds
    from stedge_runtime.cli import device_line, machine_line, profile_notes

    from ..tune.cli import render_choice

    typer.echo(machine_line())
    other = device_line(device)
    if other:  # tuning profiles are the CPU's: their notes do not apply
        typer.echo(other)
        render_choice(choices)
        return
    line, untuned = profile_notes(model)
    if line:
        typer.echo(line)
    render_choice(choices)
    source = str(manifest.source.get("model") or "MODEL")
    for hint in (untuned, bf16_hint(model, manifest.variants, source)):
        if hint:
            typer.echo(f"note: {hint}", err=True)
    for name, why in outdated_builds(manifest.variants).items():
        v = manifest.variants[name]
        cal = str((v.quantization or {}).get("calibration") or "")
        arg, also = ("builtin", []) if calibrated_on(cal, "builtin") else ("FILE", [f"FILE: {cal or 'its texts'}"])
        if v.verification is not None and v.verification.spearman is not None:
            also.append("and the --eval it was verified on")
        cmd = f"stedge export {source} -o {model} --add --backend openvino --quantize int8-static --calibration {arg}"
        typer.echo(f"note: {name}: {why}: `{cmd}`" + (f" ({'; '.join(also)})" if also else ""), err=True)


def info(
    model: str = typer.Argument(..., help="Model reference or exported artifact folder."),
    max_memory_mb: Optional[float] = typer.Option(None, "--max-memory-mb", min=1.0, help=MEMORY_HELP),
    device: str = typer.Option(
        "cpu", "--device", help="Artifacts: the device to choose for, as `embed`'s (npu, gpu, cuda...: by its rule)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Describe a model or artifact: modules, dimension, prompts, variants, and what the runtime chooses per tier
    on this machine (within --max-memory-mb when given; on --device when given)."""
    if is_artifact_folder(model):
        return _artifact_info(model, max_memory_mb, device, as_json)
    if max_memory_mb is not None or device != "cpu":
        option = "--max-memory-mb" if max_memory_mb is not None else "--device"
        raise StedgeError(f"{option} applies to exported artifacts only; '{model}' has no stedge.json")
    from ..hub import detect_task, resolve_model
    from . import SentenceEncoder

    path = resolve_model(model)
    if detect_task(path) == "reranking":
        from . import CrossEncoder

        ce = CrossEncoder(path, device="cpu")
        data = {
            "path": str(path),
            "task": "reranking",
            "num_labels": ce.num_labels,
            "max_length": ce.max_length,
            "activation": type(ce.activation).__name__,
            "parameters": sum(p.numel() for p in ce.parameters()),
        }
        typer.echo(json.dumps(data, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in data.items()))
        return
    enc = SentenceEncoder(path, device="cpu")
    data = {
        "path": str(path),
        "task": "embedding",
        "modules": [type(m).__name__ for m in enc],
        "dimension": enc.get_sentence_embedding_dimension(),
        "max_seq_length": enc.max_seq_length,
        "pooling": enc.pooling.pooling_mode if enc.pooling else None,
        "normalized": enc.normalize is not None,
        "similarity_fn_name": enc.similarity_fn_name,
        "prompts": enc.prompts,
        "default_prompt_name": enc.default_prompt_name,
        "parameters": sum(p.numel() for p in enc.parameters()),
    }
    typer.echo(json.dumps(data, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in data.items()))


def register(app: typer.Typer) -> None:
    """Add embed, similarity, rank and info to the stedge app."""
    app.command("embed")(embed)
    app.command("similarity")(similarity)
    app.command("rank")(rank)
    app.command("info")(info)
