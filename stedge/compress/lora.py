"""`stedge lora merge`: merge an adapter folder into its base model, check it, save a plain model directory.

Detecting, loading and merging adapters lives in ``stedge.models.adapters`` (one home); this module
keeps the command: the merged-vs-unmerged check, the report and the atomic save.
"""

from __future__ import annotations

from pathlib import Path

from ..models.adapters import adapter_config, load_unmerged

SAMPLE_SENTENCES = (
    "A man is playing a guitar.",
    "The weather is lovely today.",
    "Stocks fell sharply on Monday.",
    "A child is riding a horse on the beach.",
    "How do I reset my password?",
    "Quantum computers use qubits.",
    "She sold the house and moved to the coast.",
    "Two dogs are running through a field.",
)


def run_merge(
    adapter: str,
    output: str,
    base: str | None = None,
    eval_path: str | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    device: str | None = None,
) -> dict:
    """`stedge lora merge`: merge, check merged vs unmerged outputs, save; returns the report."""
    import numpy as np

    from ..data import read_sts
    from ..errors import CheckFailedError
    from ..io import check_output
    from .report import (
        embedding_mse,
        eval_sentences,
        make_step,
        min_cosine,
        model_summary,
        save_with_report,
        sts_spearman,
    )

    check_output(output, overwrite, protect=[adapter])
    adapter_dir = Path(adapter)
    cfg = adapter_config(adapter_dir)
    pairs = read_sts(eval_path) if eval_path else None
    texts = eval_sentences(pairs, limit=256) or list(SAMPLE_SENTENCES)
    unmerged = load_unmerged(adapter_dir, base, device)
    ref = unmerged.model_ref
    before = model_summary(unmerged, unmerged.model_path)
    before["model"] = f"{adapter} (on {ref})"
    before["parameters"] = int(sum(p.numel() for n, p in unmerged.named_parameters()))
    before["weights_bytes"] = (before["weights_bytes"] or 0) + sum(
        f.stat().st_size for f in adapter_dir.glob("adapter_model.*") if f.is_file()
    )
    ref_emb = unmerged.encode(texts, batch_size=batch_size)
    if pairs is not None:
        before["spearman"] = sts_spearman(unmerged, pairs, batch_size)
    merged = unmerged
    merged.transformer.auto_model = merged.transformer.auto_model.merge_and_unload()
    merged.eval()
    emb = merged.encode(texts, batch_size=batch_size)
    after = model_summary(merged)
    if pairs is not None:
        after["spearman"] = sts_spearman(merged, pairs, batch_size)
    comparison = {
        "merged_vs_unmerged_min_cosine": min_cosine(emb, ref_emb),
        "merged_vs_unmerged_mse": embedding_mse(emb, ref_emb),
        "compared_sentences": len(texts),
    }
    if not np.isfinite(emb).all() or comparison["merged_vs_unmerged_min_cosine"] < 0.9999:
        raise CheckFailedError(
            f"merged model disagrees with the adapter on its base: min cosine "
            f"{comparison['merged_vs_unmerged_min_cosine']:.6f} < 0.9999; nothing was written"
        )
    report = {
        "command": "lora merge",
        "before": before,
        "after": after,
        "comparison": comparison,
        "settings": {"adapter": str(adapter), "base": ref, "eval": eval_path},
    }
    step = make_step(
        "lora merge",
        ref,
        adapter=str(adapter),
        rank=cfg.get("r"),
        lora_alpha=cfg.get("lora_alpha"),
        target_modules=cfg.get("target_modules"),
    )
    save_with_report(
        merged,
        output,
        report,
        step,
        parent=adapter_dir if (adapter_dir / "stedge_lineage.json").exists() else unmerged.model_path,
        overwrite=overwrite,
    )
    return report
