"""The sentence-transformers modules: Transformer, Pooling, Dense, Normalize.

Each module maps a features dict to a features dict. Pooling is written in trace-friendly
torch (no data-dependent Python branches) so exporting the whole encoder puts it in the graph.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidModelError

logger = logging.getLogger(__name__)

ST_PREFIX = "sentence_transformers.models."


def _read_json(path: Path) -> dict:
    from ..io import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise InvalidModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


# Files transformers reads from a model folder; each is checked before it is (a reader of /dev/zero never ends).
HF_JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "generation_config.json")
HF_OTHER_FILES = ("vocab.txt", "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                  "tokenizer.model")


def check_model_files(folder: Path) -> None:
    """Refuse a damaged model folder before transformers reads it: each file it may read must be a regular
    file, each JSON file valid JSON and each safetensors file whole (header and data inside the file)."""
    from ..io import JSON_LIMIT, read_json, regular_file

    for name in HF_JSON_FILES:
        if (folder / name).exists() or (folder / name).is_symlink():
            data = read_json(folder / name)
            if not isinstance(data, dict):
                raise InvalidModelError(f"{folder / name}: expected a JSON object, got {type(data).__name__}")
    for name in HF_OTHER_FILES:
        if (folder / name).exists() or (folder / name).is_symlink():
            regular_file(folder / name)
    for st in sorted(folder.glob("*.safetensors")):
        check_safetensors(st, JSON_LIMIT)


def check_safetensors(path: Path, header_limit: int) -> None:
    """A safetensors file must hold its whole header and every tensor's bytes (catches truncation and
    garbage; a flipped byte inside the weights is only caught by a hash, see stedge.json)."""
    import struct

    from ..io import regular_file

    size = regular_file(path).stat().st_size
    bad = f"{path} is damaged (not a whole safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidModelError(f"{bad}: {size} bytes); restore it from the source")
        n = struct.unpack("<Q", head)[0]
        if n > min(header_limit, size - 8):
            raise InvalidModelError(f"{bad}: its header claims {n} bytes); restore it from the source")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except ValueError:
            raise InvalidModelError(f"{bad}: unreadable header); restore it from the source") from None
    if not isinstance(header, dict):
        raise InvalidModelError(f"{bad}: unreadable header); restore it from the source")
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and max(ends) > size - 8 - n:
        raise InvalidModelError(f"{bad}: truncated, {size} bytes of {8 + n + max(ends)}); restore it from the source")


@contextlib.contextmanager
def loading(path: str, what: str) -> Iterator[None]:
    """Turn a transformers failure on a damaged file into one line naming the folder."""
    try:
        yield
    except InvalidModelError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        raise InvalidModelError(f"{path}: {what} could not be read ({type(e).__name__}: {_first_line(e)}); "
                                "restore the file or re-save the model") from None


def _load_safetensors(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    st = folder / "model.safetensors"
    if st.exists() or st.is_symlink():
        check_safetensors(st, 64 << 20)
        with loading(str(folder), "model.safetensors"):
            return load_file(str(st))
    if (folder / "pytorch_model.bin").exists():
        raise InvalidModelError(
            f"{folder / 'pytorch_model.bin'}: stedge loads weights from safetensors only; "
            "convert it (load with sentence-transformers and save again) to model.safetensors"
        )
    raise InvalidModelError(f"{st} is missing")


class Transformer(nn.Module):
    """A Hugging Face AutoModel with its tokenizer; produces ``token_embeddings``."""

    config_file = "sentence_bert_config.json"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        max_seq_length: int | None = None,
        do_lower_case: bool = False,
        trust_remote_code: bool = False,
        model_args: dict[str, Any] | None = None,
        tokenizer_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = str(model_name_or_path)
        if Path(path).is_dir():
            check_model_files(Path(path))
        with loading(path, "config.json"):
            self.config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        kwargs = dict(model_args or {})
        kwargs.setdefault("use_safetensors", True)
        try:
            if getattr(self.config, "is_encoder_decoder", False):
                from transformers import T5EncoderModel

                self.auto_model = T5EncoderModel.from_pretrained(path, config=self.config, **kwargs)
            else:
                self.auto_model = AutoModel.from_pretrained(
                    path, config=self.config, trust_remote_code=trust_remote_code, **kwargs
                )
        except OSError as e:
            if Path(path).is_dir() and not list(Path(path).glob("*.safetensors")):
                raise InvalidModelError(
                    f"{path}: no *.safetensors weights (stedge loads safetensors only; "
                    "re-save the model with safe_serialization=True)"
                ) from None
            raise InvalidModelError(f"{path}: could not load the transformer ({e})") from None
        except InvalidModelError:
            raise
        except Exception as e:  # safetensors / transformers on a damaged weights file
            raise InvalidModelError(f"{path}: the weights could not be loaded ({type(e).__name__}: "
                                    f"{_first_line(e)}); restore model.safetensors") from None
        with loading(path, "the tokenizer files"):
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code, **(tokenizer_args or {})
            )
        if max_seq_length is None:
            limits = [
                getattr(self.config, "max_position_embeddings", None),
                getattr(self.tokenizer, "model_max_length", None),
            ]
            limits = [x for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
            max_seq_length = min(limits) if limits else 512
        self.max_seq_length = int(max_seq_length)
        self.do_lower_case = bool(do_lower_case)
        self._warned_truncation = False
        import inspect

        self._forward_params = set(inspect.signature(self.auto_model.forward).parameters)

    @classmethod
    def load(cls, folder: str | os.PathLike, trust_remote_code: bool = False) -> "Transformer":
        """Load from a folder holding the HF model files and (optionally) sentence_bert_config.json."""
        folder = Path(folder)
        cfg: dict = {}
        for name in (cls.config_file, "sentence_roberta_config.json", "sentence_distilbert_config.json"):
            if (folder / name).exists():
                cfg = _read_json(folder / name)
                break
        return cls(
            folder,
            max_seq_length=cfg.get("max_seq_length"),
            do_lower_case=cfg.get("do_lower_case", False),
            trust_remote_code=trust_remote_code,
        )

    def save(self, folder: str | os.PathLike) -> None:
        """Write the HF model (safetensors), tokenizer and sentence_bert_config.json."""
        folder = Path(folder)
        self.auto_model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / self.config_file).write_text(
            json.dumps({"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case}, indent=2)
        )

    def get_word_embedding_dimension(self) -> int:
        """Width of the token embeddings."""
        return int(getattr(self.config, "hidden_size", None) or getattr(self.config, "d_model"))

    @property
    def uses_token_type_ids(self) -> bool:
        """Whether the model takes token_type_ids with more than one type."""
        return "token_type_ids" in self._forward_params and getattr(self.config, "type_vocab_size", 0) > 1

    def tokenize(self, texts: list[str] | list[tuple[str, str]]) -> dict[str, Tensor]:
        """Tokenize a batch, padded to its longest text and truncated to max_seq_length (warned once)."""
        if self.do_lower_case:
            texts = [t.lower() if isinstance(t, str) else tuple(x.lower() for x in t) for t in texts]
        if texts and isinstance(texts[0], (tuple, list)):
            a, b = [t[0] for t in texts], [t[1] for t in texts]
            enc = self.tokenizer(a, b, padding=True, truncation="longest_first", max_length=self.max_seq_length, return_tensors="pt")
        else:
            enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt")
            if not self._warned_truncation and enc["input_ids"].shape[1] >= self.max_seq_length:
                full = enc["attention_mask"].sum(1) >= self.max_seq_length
                for i in torch.nonzero(full).flatten().tolist():
                    n = len(self.tokenizer(texts[i], truncation=False, verbose=False)["input_ids"])
                    if n > self.max_seq_length:
                        logger.warning(
                            "A text has %d tokens, more than max_seq_length=%d: it is truncated "
                            "(this warning is shown once).", n, self.max_seq_length,
                        )
                        self._warned_truncation = True
                        break
        if "token_type_ids" in enc and "token_type_ids" not in self._forward_params:
            del enc["token_type_ids"]
        return dict(enc)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features and k in self._forward_params}
        out = self.auto_model(**inputs, return_dict=True)
        features["token_embeddings"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return features


POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


class Pooling(nn.Module):
    """Token embeddings -> sentence embedding. Several modes are concatenated in the order of POOLING_MODES."""

    def __init__(self, word_embedding_dimension: int, pooling_mode: str | list[str] = "mean", include_prompt: bool = True) -> None:
        super().__init__()
        modes = [pooling_mode] if isinstance(pooling_mode, str) else list(pooling_mode)
        modes = ["mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes]
        for m in modes:
            if m not in POOLING_MODES:
                raise InvalidModelError(f"unknown pooling mode '{m}' (known: {', '.join(POOLING_MODES)})")
        if not modes:
            raise InvalidModelError("pooling config enables no pooling mode")
        self.pooling_modes = list(dict.fromkeys(modes))  # concatenated in the given order
        self.word_embedding_dimension = int(word_embedding_dimension)
        self.include_prompt = bool(include_prompt)

    @property
    def pooling_mode(self) -> str:
        """The pooling mode(s), joined with '+' when several are concatenated."""
        return "+".join(self.pooling_modes)

    def get_sentence_embedding_dimension(self) -> int:
        return self.word_embedding_dimension * len(self.pooling_modes)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        tok = features["token_embeddings"]
        mask = features["attention_mask"]
        if not self.include_prompt and "prompt_length" in features:
            pl = features["prompt_length"].to(mask.device).reshape(-1, 1)
            pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
            mask = mask * (pos >= pl).to(mask.dtype)
        m = mask.unsqueeze(-1).to(tok.dtype)
        outs = []
        for mode in self.pooling_modes:
            if mode == "cls":
                outs.append(tok[:, 0])
            elif mode == "max":
                outs.append(torch.where(m > 0, tok, torch.full_like(tok, -1e9)).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                s = (tok * m).sum(1)
                n = m.sum(1).clamp(min=1e-9)
                outs.append(s / n if mode == "mean" else s / n.sqrt())
            elif mode == "weightedmean":
                w = torch.arange(1, tok.shape[1] + 1, device=tok.device, dtype=tok.dtype).view(1, -1, 1) * m
                outs.append((tok * w).sum(1) / w.sum(1).clamp(min=1e-9))
            elif mode == "lasttoken":
                pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
                last = (pos * (mask > 0)).max(dim=1).values  # index of the last real token
                idx = last.view(-1, 1, 1).expand(-1, 1, tok.shape[2])
                outs.append(torch.gather(tok * m, 1, idx).squeeze(1))
        features["sentence_embedding"] = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return features

    def get_config_dict(self) -> dict:
        cfg: dict[str, Any] = {"word_embedding_dimension": self.word_embedding_dimension}
        for mode, key in _POOLING_KEYS.items():
            cfg[key] = mode in self.pooling_modes
        cfg["include_prompt"] = self.include_prompt
        return cfg

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Pooling":
        """Read both layouts: legacy ``pooling_mode_*_tokens`` booleans and the newer ``pooling_mode`` value."""
        path = Path(folder) / "config.json"
        cfg = _read_json(path)
        if "pooling_mode" in cfg:
            modes = cfg["pooling_mode"]
        else:
            modes = [m for m, k in _POOLING_KEYS.items() if cfg.get(k)]
        if not modes:
            raise InvalidModelError(f"{path}: no pooling mode is enabled (pooling_mode or pooling_mode_*_tokens)")
        dim = cfg.get("word_embedding_dimension", cfg.get("embedding_dimension"))
        if dim is None:
            raise InvalidModelError(f"{path}: missing word_embedding_dimension")
        return cls(dim, modes, cfg.get("include_prompt", True))

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps(self.get_config_dict(), indent=2))


def _activation_from_name(name: str | None) -> nn.Module:
    if not name:
        return nn.Identity()
    if not name.startswith("torch."):
        raise InvalidModelError(f"activation '{name}' is not a torch.nn module; stedge only loads torch activations")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)()
    except (ImportError, AttributeError) as e:
        raise InvalidModelError(f"unknown activation '{name}' ({e})") from None


def _activation_name(act: nn.Module) -> str:
    return f"{type(act).__module__}.{type(act).__name__}"


class Dense(nn.Module):
    """A linear layer with an activation on the sentence embedding (also used for PCA projections)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation_function: nn.Module | None = None) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.bias = bool(bias)
        self.linear = nn.Linear(self.in_features, self.out_features, bias=self.bias)
        self.activation_function = activation_function if activation_function is not None else nn.Tanh()

    @property
    def activation(self) -> nn.Module:
        return self.activation_function

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["sentence_embedding"] = self.activation_function(self.linear(features["sentence_embedding"]))
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.out_features

    def get_config_dict(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": _activation_name(self.activation_function),
        }

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.get_config_dict(), indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Dense":
        folder = Path(folder)
        cfg = _read_json(folder / "config.json")
        try:
            module = cls(cfg["in_features"], cfg["out_features"], cfg.get("bias", True), _activation_from_name(cfg.get("activation_function")))
        except KeyError as e:
            raise InvalidModelError(f"{folder / 'config.json'}: missing field {e}") from None
        state = _load_safetensors(folder)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing:
            raise InvalidModelError(f"{folder / 'model.safetensors'}: missing weights {missing}")
        return module


class Normalize(nn.Module):
    """L2-normalizes the sentence embedding."""

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        features["sentence_embedding"] = F.normalize(features["sentence_embedding"], p=2, dim=1)
        return features

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Normalize":
        return cls()


MODULE_TYPES: dict[str, type[nn.Module]] = {
    "Transformer": Transformer,
    "Pooling": Pooling,
    "Dense": Dense,
    "Normalize": Normalize,
}


def module_type_name(module: nn.Module) -> str:
    """The modules.json type string sentence-transformers understands for one of our modules."""
    for name, cls in MODULE_TYPES.items():
        if isinstance(module, cls):
            return ST_PREFIX + name
    raise InvalidModelError(f"cannot save module of type {type(module).__name__}")


def module_class(type_name: str, where: Path) -> type[nn.Module]:
    """Map a modules.json type (sentence_transformers.models.X or stedge.models.X) to our class."""
    short = type_name.rsplit(".", 1)[-1]
    if short in MODULE_TYPES and (type_name.startswith(("sentence_transformers.", "stedge.")) or "." not in type_name):
        return MODULE_TYPES[short]
    raise InvalidModelError(
        f"{where}: unknown module type '{type_name}' (stedge knows: "
        + ", ".join(ST_PREFIX + k for k in MODULE_TYPES) + ")"
    )
