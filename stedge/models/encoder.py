"""SentenceEncoder: a sentence-transformers-compatible embedding model on torch."""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import InvalidModelError, StedgeError, runtime_input_errors
from ..data import check_texts
from ..hub import resolve_model
from ..io import atomic_dir, read_json
from .adapters import AdapterMixin, load_transformer
from .modules import Normalize, Pooling, Transformer, module_class, module_type_name
from .similarity import check_similarity_fn_name, get_similarity

logger = logging.getLogger(__name__)

CONFIG_FILE = "config_sentence_transformers.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def split_precision(precision: str, dtype: str | None) -> tuple[str, torch.dtype]:
    """(output precision, compute dtype) from encode's ``precision`` and ``dtype`` arguments.

    ``precision`` is the output precision (float32, int8, uint8, binary, ubinary); for backward
    compatibility float16/bfloat16 (fp16/bf16) given as ``precision`` choose the compute dtype
    and return float32, as ``dtype=`` does.
    """
    if dtype is not None and dtype not in _DTYPES:
        raise StedgeError(f"dtype must be one of float32, float16, bfloat16, got {dtype!r}")
    if precision in _DTYPES and precision not in ("float32", "fp32"):
        if dtype is not None and _DTYPES[dtype] != _DTYPES[precision]:
            raise StedgeError(f"precision={precision!r} (the old spelling of dtype) conflicts with "
                              f"dtype={dtype!r}; pass only dtype")
        return "float32", _DTYPES[precision]
    from stedge_runtime.quantization import OUTPUT_PRECISIONS  # output precisions, as sentence-transformers'

    if precision == "fp32":
        precision = "float32"
    if precision not in OUTPUT_PRECISIONS:
        raise StedgeError(
            f"precision must be one of {', '.join(OUTPUT_PRECISIONS)} (output), or float16/bfloat16 "
            f"(compute dtype, better passed as dtype=), got {precision!r}"
        )
    return precision, _DTYPES[dtype or "float32"]


def default_device() -> str:
    """cuda when available, then mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SentenceEncoder(AdapterMixin, nn.Sequential):
    """Sentence embeddings from a chain of modules (Transformer -> Pooling -> [Dense] -> [Normalize]).

    Loads and saves the sentence-transformers layout, so models move freely between the two.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        modules: Iterable[nn.Module] | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        truncate_dim: int | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        revision: str | None = None,
    ) -> None:
        config: dict[str, Any] = {}
        self.model_path: Path | None = None
        if model_name_or_path is not None and modules is not None:
            raise StedgeError("pass either model_name_or_path or modules, not both")
        if model_name_or_path is not None:
            self.model_path = resolve_model(model_name_or_path, revision=revision)
            modules, config = self._load_modules(self.model_path, trust_remote_code)
        if modules is None:
            raise StedgeError("SentenceEncoder needs a model reference or a list of modules")
        mods = list(modules)
        super().__init__(OrderedDict((str(i), m) for i, m in enumerate(mods)))
        self.model_ref = str(model_name_or_path) if model_name_or_path is not None else None
        self.prompts: dict[str, str] = dict(config.get("prompts") or {})
        if prompts:
            self.prompts.update(prompts)
        self.default_prompt_name: str | None = default_prompt_name or config.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise StedgeError(
                f"default_prompt_name '{self.default_prompt_name}' is not among the prompts ({', '.join(self.prompts) or 'none'})"
            )
        fn = similarity_fn_name or config.get("similarity_fn_name") or "cosine"
        self.similarity_fn_name: str = check_similarity_fn_name(fn)
        self.truncate_dim = truncate_dim
        self.trust_remote_code = trust_remote_code
        self.to(device or default_device())

    # ----------------------------------------------------------------- loading
    @staticmethod
    def _load_modules(path: Path, trust_remote_code: bool) -> tuple[list[nn.Module], dict]:
        modules_file = path / "modules.json"
        config: dict = {}
        if (path / CONFIG_FILE).exists() or (path / CONFIG_FILE).is_symlink():
            config = read_json(path / CONFIG_FILE)
            if not isinstance(config, dict):
                raise InvalidModelError(f"{path / CONFIG_FILE}: expected a JSON object")
        if not modules_file.exists():
            st_parts = [p.name for p in path.iterdir() if p.name in ("sentence_bert_config.json", CONFIG_FILE)
                        or (p.is_dir() and p.name.split("_", 1)[0].isdigit())]
            if st_parts:
                raise InvalidModelError(
                    f"{modules_file} is missing, but {path} holds sentence-transformers parts ({', '.join(sorted(st_parts))}): "
                    "the folder is damaged; restore modules.json or save the model again"
                )
            if (path / "config.json").exists():
                from ..hub import detect_task

                if detect_task(path) == "reranking":  # its head would be dropped: a silent, useless bi-encoder
                    raise InvalidModelError(
                        f"{path} is a cross-encoder (reranker: a *ForSequenceClassification model), not a sentence "
                        "encoder: load it with stedge.CrossEncoder (stedge rank, stedge export and stedge eval --task "
                        "rerank take it, and stedge train MODEL --loss bce fine-tunes it); embed, similarity, "
                        "embed-corpus, distill and pca work on sentence encoders"
                    )
                # A plain Hugging Face model: Transformer + mean pooling, as sentence-transformers does.
                logger.warning("%s has no modules.json: using the transformer with mean pooling", path)
                t = Transformer(path, trust_remote_code=trust_remote_code)
                return [t, Pooling(t.get_word_embedding_dimension(), "mean")], config
            raise InvalidModelError(f"{modules_file} is missing: not a sentence-transformers model folder")
        entries = read_json(modules_file)
        if not isinstance(entries, list):
            raise InvalidModelError(f"{modules_file}: expected a JSON list of modules")
        modules: list[nn.Module] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
                raise InvalidModelError(f"{modules_file}: entry {i} has no 'type'")
            cls = module_class(entry["type"], modules_file)
            sub = entry.get("path", "")
            if not isinstance(sub, str) or Path(sub).is_absolute() or ".." in Path(sub).parts:
                raise InvalidModelError(f"{modules_file}: entry {i} path {sub!r} must be a folder inside the model")
            folder = path / sub
            if cls is Transformer:
                modules.append(load_transformer(folder, trust_remote_code=trust_remote_code))
            else:
                modules.append(cls.load(folder))
        return modules, config

    # --------------------------------------------------------------- accessors
    def _first(self, cls: type) -> Any:
        return next((m for m in self if isinstance(m, cls)), None)

    @property
    def transformer(self) -> Transformer:
        """The Transformer module."""
        t = self._first(Transformer)
        if t is None:
            raise InvalidModelError("this SentenceEncoder has no Transformer module")
        return t

    @property
    def pooling(self) -> Pooling | None:
        return self._first(Pooling)

    @property
    def normalize(self) -> Normalize | None:
        return self._first(Normalize)

    @property
    def tokenizer(self):
        return self.transformer.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.transformer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.transformer.max_seq_length = int(value)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_sentence_embedding_dimension(self) -> int:
        """Output width, after truncate_dim."""
        dim = None
        for m in self:
            if hasattr(m, "get_sentence_embedding_dimension"):
                dim = m.get_sentence_embedding_dimension()
        if dim is None:
            dim = self.transformer.get_word_embedding_dimension()
        return min(dim, self.truncate_dim) if self.truncate_dim else dim

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Tokenize a batch with the Transformer module."""
        return self.transformer.tokenize(texts)

    # ---------------------------------------------------------------- prompts
    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str | None:
        """The prompt text to prepend: explicit prompt, else prompt_name, else the default prompt."""
        from stedge_runtime.errors import InputError
        from stedge_runtime.inputs import resolve_prompt

        try:
            return resolve_prompt(self.prompts, self.default_prompt_name, prompt_name, prompt)
        except InputError as e:
            raise StedgeError(str(e)) from None

    def prompt_length(self, prompt: str) -> int:
        """Number of leading tokens a prompt takes (special start token included, end token not)."""
        ids = self.tokenize([prompt])["input_ids"][0]
        return int(ids.shape[0]) - 1

    # ----------------------------------------------------------------- encode
    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = False,
        convert_to: Literal["numpy", "torch"] = "numpy",
        device: str | None = None,
        precision: Literal["float32", "int8", "uint8", "binary", "ubinary"] = "float32",
        show_progress_bar: bool | None = None,
        dtype: Literal["float32", "float16", "bfloat16"] | None = None,
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
    ) -> np.ndarray | Tensor:
        """Embed texts in length-sorted batches; rows come back in input order.

        A single string gives a 1-D vector. ``precision`` is the output precision, as in
        sentence-transformers: float32, int8/uint8 (calibrated buckets, needs ``ranges`` or
        ``calibration_embeddings``) or binary/ubinary (packed bits, dimension / 8 bytes); see
        ``stedge_runtime.quantization``. ``dtype`` float16/bfloat16 runs the model under autocast on
        a GPU (bfloat16 also on CPU) before any quantization; passing them as ``precision`` still works.
        Autocast keeps the weights in fp32 and casts around every layer, which costs more than it saves on
        small models; for speed on a GPU, cast the encoder itself (``encoder.half()`` or ``.bfloat16()``):
        weights already in the compute dtype run as they are.
        """
        single = isinstance(texts, str)
        items = check_texts(texts)
        if convert_to not in ("numpy", "torch"):
            raise StedgeError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        precision, compute = split_precision(precision, dtype)
        from stedge_runtime.quantization import require_calibration

        with runtime_input_errors():
            require_calibration(precision, ranges, calibration_embeddings)
        if batch_size < 1:
            raise StedgeError(f"batch_size must be >= 1, got {batch_size}")
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        if compute == torch.float16 and self.device.type == "cpu":
            raise StedgeError("dtype float16 needs a GPU (cuda or mps); use bfloat16 or float32 on the CPU")
        prompt_text = self.resolve_prompt(prompt_name, prompt)
        exclude_prompt = prompt_text is not None and self.pooling is not None and not self.pooling.include_prompt
        plen = self.prompt_length(prompt_text) if exclude_prompt else None
        if prompt_text:
            items = [prompt_text + t for t in items]

        dim = self.get_sentence_embedding_dimension()
        if not items:
            empty = torch.zeros((0, dim))
            return self._quantize_output(empty, False, convert_to, precision, ranges, calibration_embeddings)

        emb = self._forward_sorted(items, batch_size, plen, compute, normalize_embeddings, show_progress_bar)
        return self._quantize_output(emb, single, convert_to, precision, ranges, calibration_embeddings)

    def _forward_sorted(self, items: list[str], batch_size: int, plen: int | None, compute: torch.dtype,
                        normalize: bool, show_progress_bar: bool | None) -> Tensor:
        """Run the model over length-sorted batches; float32 rows (on the CPU) in input order."""
        from ..progress import progress_iter

        dev = self.device
        cuda = dev.type == "cuda"
        weights = next(self.parameters()).dtype
        order = np.argsort([-len(t) for t in items], kind="stable")
        n_batches = (len(items) + batch_size - 1) // batch_size
        if show_progress_bar is None:
            show_progress_bar = n_batches > 20 and logger.getEffectiveLevel() <= logging.INFO
        results: list[Tensor] = []
        self.eval()
        with torch.inference_mode():
            steps = progress_iter(range(0, len(items), batch_size), total=n_batches, description="Encoding",
                                  enabled=show_progress_bar)
            for start in steps:
                idx = order[start : start + batch_size]
                feats = {k: v.to(dev) for k, v in self.tokenize([items[i] for i in idx]).items()}
                if plen is not None:
                    feats["prompt_length"] = torch.full((len(idx),), plen, dtype=torch.long, device=dev)
                if compute != torch.float32 and compute != weights:
                    with torch.autocast(device_type=dev.type, dtype=compute):
                        out = self.forward(feats)["sentence_embedding"]
                else:  # fp32, or weights already in the compute dtype (after .half() / .bfloat16())
                    out = self.forward(feats)["sentence_embedding"]
                out = out.float()
                if self.truncate_dim:
                    out = out[:, : self.truncate_dim]
                if normalize:
                    out = torch.nn.functional.normalize(out, p=2, dim=1)
                # On a GPU the copy back is queued, not waited for, so the host goes on to the next batch while the
                # GPU finishes this one; one synchronize at the end, before the rows are read. (On the H200 this gained
                # 11-31 % on passages and at batch 512; at batch 128 the host's tokenizing and launching set the pace.)
                results.append(out.to("cpu", non_blocking=True) if cuda else out.cpu())
        if cuda:
            torch.cuda.synchronize(dev)
        emb = torch.cat(results)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        return emb[inverse]

    @staticmethod
    def _quantize_output(emb: Tensor, single: bool, convert_to: str, precision: str, ranges, calibration_embeddings):
        """Quantize (stedge_runtime.quantization, the one implementation), take the single row, convert."""
        if precision != "float32":
            from stedge_runtime.quantization import quantize_embeddings

            with runtime_input_errors():
                emb = torch.from_numpy(quantize_embeddings(emb.numpy(), precision, ranges=ranges,
                                                           calibration_embeddings=calibration_embeddings))
        if single:
            emb = emb[0]
        return emb.numpy() if convert_to == "numpy" else emb

    # ------------------------------------------------------------- similarity
    def similarity(self, a, b) -> np.ndarray | Tensor:
        """All-pairs similarity with the model's similarity_fn_name; numpy in -> numpy out."""
        out = get_similarity(self.similarity_fn_name)(a, b)
        return out.numpy() if isinstance(a, np.ndarray) else out

    def similarity_pairwise(self, a, b) -> np.ndarray | Tensor:
        """Row-by-row similarity of two equally long lists of embeddings."""
        out = get_similarity(self.similarity_fn_name, pairwise=True)(a, b)
        return out.numpy() if isinstance(a, np.ndarray) else out

    # ------------------------------------------------------------------- save
    def save(self, path: str | os.PathLike, overwrite: bool = True, model_card: str | None = None) -> Path:
        """Write the sentence-transformers layout atomically (temporary folder, then rename)."""
        with atomic_dir(path, overwrite=overwrite) as tmp:
            self._save_into(tmp, model_card=model_card)
        return Path(path)

    def _save_into(self, folder: Path, model_card: str | None = None) -> None:
        entries = []
        for i, m in enumerate(self):
            if isinstance(m, Transformer):
                sub = ""
            else:
                sub = f"{i}_{type(m).__name__}"
            m.save(folder / sub if sub else folder)
            entries.append({"idx": i, "name": str(i), "path": sub, "type": module_type_name(m)})
        (folder / "modules.json").write_text(json.dumps(entries, indent=2))
        self._finish_adapter_save(folder)
        config = {
            "__version__": {"stedge": __version__, "pytorch": torch.__version__},
            "model_type": "SentenceTransformer",
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if model_card is not None:
            (folder / "README.md").write_text(model_card, encoding="utf-8")

    def __repr__(self) -> str:
        inner = ", ".join(type(m).__name__ for m in self)
        return f"SentenceEncoder({inner}; dim={self.get_sentence_embedding_dimension()}, max_seq_length={self.max_seq_length})"
