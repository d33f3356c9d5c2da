"""LoRA adapters: merge an adapter folder into its base model and save a plain model directory.

An adapter folder holds ``adapter_config.json`` (with ``base_model_name_or_path``) and
``adapter_model.safetensors`` as peft writes them, usually next to the sentence-transformers
module files (``modules.json``, ``1_Pooling/``, ...) of the model it was trained in.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InvalidModelError, ModelNotFoundError, require
from ..models import SentenceEncoder, Transformer
from ..models.modules import module_class

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a peft adapter folder (has adapter_config.json)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _adapter_config(adapter_dir: Path) -> dict:
    cfg_file = adapter_dir / ADAPTER_CONFIG
    if not adapter_dir.is_dir():
        raise ModelNotFoundError(f"adapter folder {adapter_dir} not found")
    if not cfg_file.is_file():
        raise InvalidModelError(f"{adapter_dir} is not a LoRA adapter folder: {ADAPTER_CONFIG} is missing")
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidModelError(f"{cfg_file} is not valid JSON ({e})") from None


def adapter_base(adapter_dir: str | os.PathLike, base: str | None = None) -> str:
    """The base model reference for an adapter: ``base`` if given, else the adapter config's."""
    cfg = _adapter_config(Path(adapter_dir))
    ref = base or cfg.get("base_model_name_or_path")
    if not ref:
        raise InvalidModelError(
            f"{Path(adapter_dir) / ADAPTER_CONFIG} has no base_model_name_or_path: pass the base model with --base"
        )
    return str(ref)


def _load_base(adapter_dir: Path, base: str | None, device: str | None) -> SentenceEncoder:
    """The base encoder with the adapter folder's own sentence-transformers modules and settings."""
    ref = adapter_base(adapter_dir, base)
    try:
        encoder = SentenceEncoder(ref, device=device or "cpu")
    except ModelNotFoundError as e:
        raise ModelNotFoundError(
            f"the base model '{ref}' of adapter {adapter_dir} cannot be found: pass --base MODEL "
            f"(a local folder or reference of the model the adapter was trained on)\n{e}"
        ) from None
    mods = list(encoder)
    modules_file = adapter_dir / "modules.json"
    if modules_file.is_file():  # the adapter's own Pooling / Dense / Normalize replace the base's
        try:
            entries = json.loads(modules_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InvalidModelError(f"{modules_file} is not valid JSON ({e})") from None
        rest = []
        for entry in entries:
            cls = module_class(entry.get("type", ""), modules_file)
            if cls is not Transformer:
                rest.append(cls.load(adapter_dir / entry.get("path", "")))
        mods = [encoder.transformer] + [m.to(encoder.device) for m in rest]
    cfg = {}
    if (adapter_dir / "config_sentence_transformers.json").is_file():
        cfg = json.loads((adapter_dir / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    out = SentenceEncoder(
        modules=mods, device=str(encoder.device),
        prompts=cfg.get("prompts") or encoder.prompts,
        default_prompt_name=cfg.get("default_prompt_name", encoder.default_prompt_name),
        similarity_fn_name=cfg.get("similarity_fn_name") or encoder.similarity_fn_name,
    )
    sbert = adapter_dir / Transformer.config_file
    if sbert.is_file():
        scfg = json.loads(sbert.read_text(encoding="utf-8"))
        if scfg.get("max_seq_length"):
            out.max_seq_length = scfg["max_seq_length"]
        out.transformer.do_lower_case = bool(scfg.get("do_lower_case", out.transformer.do_lower_case))
    if (adapter_dir / "tokenizer_config.json").is_file():  # the tokenizer saved with the adapter wins
        from transformers import AutoTokenizer

        out.transformer.tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    out.model_path, out.model_ref = encoder.model_path, ref
    return out


def load_unmerged(adapter_dir: str | os.PathLike, base: str | None = None, device: str | None = None) -> SentenceEncoder:
    """The base encoder with the adapter attached but not merged (peft wrapper as its transformer)."""
    peft = require("peft", "train", "loading LoRA adapters")
    adapter_dir = Path(adapter_dir)
    encoder = _load_base(adapter_dir, base, device)
    try:
        wrapped = peft.PeftModel.from_pretrained(encoder.transformer.auto_model, str(adapter_dir))
    except Exception as e:  # peft raises ValueError/KeyError/OSError on mismatching adapters
        raise InvalidModelError(
            f"could not attach the adapter {adapter_dir} to its base '{encoder.model_ref}' ({type(e).__name__}: {e}); "
            "is --base the model the adapter was trained on?"
        ) from None
    encoder.transformer.auto_model = wrapped.to(encoder.device)
    return encoder


def merge_adapter(adapter_dir: str | os.PathLike, base: str | None = None, device: str | None = None) -> SentenceEncoder:
    """Load a LoRA adapter onto its base and merge the weights: a plain SentenceEncoder.

    ``base`` overrides the adapter config's ``base_model_name_or_path`` (a folder or reference).
    """
    encoder = load_unmerged(adapter_dir, base, device)
    merged = encoder.transformer.auto_model.merge_and_unload()
    encoder.transformer.auto_model = merged
    encoder.eval()
    return encoder


SAMPLE_SENTENCES = (
    "A man is playing a guitar.", "The weather is lovely today.", "Stocks fell sharply on Monday.",
    "A child is riding a horse on the beach.", "How do I reset my password?", "Quantum computers use qubits.",
    "She sold the house and moved to the coast.", "Two dogs are running through a field.",
)


def run_merge(adapter: str, output: str, base: str | None = None, eval_path: str | None = None,
              overwrite: bool = False, batch_size: int = 64, device: str | None = None) -> dict:
    """`stedge lora merge`: merge, check merged vs unmerged outputs, save; returns the report."""
    import numpy as np

    from ..data import read_sts
    from ..errors import CheckFailedError
    from .report import (eval_sentences, embedding_mse, make_step, min_cosine, model_summary,
                         save_with_report, sts_spearman)

    adapter_dir = Path(adapter)
    cfg = _adapter_config(adapter_dir)
    pairs = read_sts(eval_path) if eval_path else None
    texts = eval_sentences(pairs, limit=256) or list(SAMPLE_SENTENCES)
    unmerged = load_unmerged(adapter_dir, base, device)
    ref = unmerged.model_ref
    before = model_summary(unmerged, unmerged.model_path)
    before["model"] = f"{adapter} (on {ref})"
    before["parameters"] = int(sum(p.numel() for n, p in unmerged.named_parameters()))
    before["weights_bytes"] = (before["weights_bytes"] or 0) + sum(
        f.stat().st_size for f in adapter_dir.glob("adapter_model.*") if f.is_file())
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
    comparison = {"merged_vs_unmerged_min_cosine": min_cosine(emb, ref_emb),
                  "merged_vs_unmerged_mse": embedding_mse(emb, ref_emb), "compared_sentences": len(texts)}
    if not np.isfinite(emb).all() or comparison["merged_vs_unmerged_min_cosine"] < 0.9999:
        raise CheckFailedError(
            f"merged model disagrees with the adapter on its base: min cosine "
            f"{comparison['merged_vs_unmerged_min_cosine']:.6f} < 0.9999; nothing was written"
        )
    report = {"command": "lora merge", "before": before, "after": after, "comparison": comparison,
              "settings": {"adapter": str(adapter), "base": ref, "eval": eval_path}}
    step = make_step("lora merge", ref, adapter=str(adapter), rank=cfg.get("r"), lora_alpha=cfg.get("lora_alpha"),
                     target_modules=cfg.get("target_modules"))
    save_with_report(merged, output, report, step, parent=adapter_dir if (adapter_dir / "stedge_lineage.json").exists()
                     else unmerged.model_path, overwrite=overwrite)
    return report
