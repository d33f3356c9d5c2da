"""PEFT adapters (LoRA and friends) on a SentenceEncoder's transformer: the one home for detecting,
loading and merging them.

Built on transformers' PeftAdapterMixin, which every ``PreTrainedModel`` has: the adapter is
injected into ``encoder.transformer.auto_model`` in place, so the module chain, tokenizer and
ONNX export path stay the same. Saving an encoder that holds an adapter writes only the adapter
(``adapter_model.safetensors`` + ``adapter_config.json``, whose ``base_model_name_or_path`` names the
base model reference) next to the usual module files; loading that folder finds the base through
``stedge.hub`` and applies the adapter.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError, ModelNotFoundError, StedgeError, require
from ..io import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """True for a folder that holds a PEFT adapter (adapter_config.json) but no full transformer (config.json).

    The one adapter detector: loading (SentenceEncoder), ``stedge lora merge`` and ``stedge export`` use it.
    """
    f = Path(folder)
    return (f / ADAPTER_CONFIG).is_file() and not (f / "config.json").is_file()


def _base_reference(ref: str | None) -> str | None:
    if ref is None:
        return None
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.is_dir() else ref


def _base_transformer_folder(base: Path) -> Path:
    """Where the transformer files of a base model live (root, or the Transformer entry of modules.json)."""
    modules = base / "modules.json"
    if modules.exists():
        for entry in read_json(modules):
            if str(entry.get("type", "")).endswith(".Transformer"):
                return base / entry.get("path", "")
    return base


def load_transformer(folder: str | os.PathLike, trust_remote_code: bool = False):
    """Load the Transformer module of a model folder; an adapter folder loads its base, then the adapter."""
    from .modules import Transformer

    folder = Path(folder)
    if not is_adapter_folder(folder):
        return Transformer.load(folder, trust_remote_code=trust_remote_code)
    require("peft", "train", "loading a model saved as a PEFT adapter")
    from ..hub import resolve_model

    cfg = read_json(folder / ADAPTER_CONFIG)
    base_ref = cfg.get("base_model_name_or_path")
    if not base_ref:
        raise InvalidModelError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path, so the base model cannot be found")
    base = resolve_model(base_ref)
    st_cfg: dict = {}
    if (folder / Transformer.config_file).exists():
        st_cfg = read_json(folder / Transformer.config_file)
    t = Transformer(
        _base_transformer_folder(base), max_seq_length=st_cfg.get("max_seq_length"),
        do_lower_case=st_cfg.get("do_lower_case", False), trust_remote_code=trust_remote_code,
    )
    if (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        t.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    t.auto_model.load_adapter(str(folder), adapter_name="default", is_trainable=True)
    t.adapter_base_ref = base_ref
    return t


class AdapterMixin:
    """Adapter methods for SentenceEncoder, delegating to transformers' PeftAdapterMixin on ``auto_model``."""

    def _auto_model(self):
        return self.transformer.auto_model  # type: ignore[attr-defined]

    @property
    def has_adapters(self) -> bool:
        """Whether an adapter has been added or loaded."""
        return bool(getattr(self._auto_model(), "_hf_peft_config_loaded", False))

    def _require_adapters(self) -> None:
        if not self.has_adapters:
            raise StedgeError("this model has no adapter: add one with add_adapter(config) or load_adapter(path)")

    def add_adapter(self, config: Any, adapter_name: str = "default") -> None:
        """Add a fresh trainable adapter (a ``peft.PeftConfig``, or a dict of LoraConfig arguments) and activate it.

        Only the adapter's parameters stay trainable in the transformer.
        """
        peft = require("peft", "train", "adapters")
        if isinstance(config, dict):
            config = peft.LoraConfig(**config)
        if not isinstance(config, peft.PeftConfig):
            raise StedgeError(f"add_adapter needs a peft.PeftConfig (for example peft.LoraConfig(r=8)), got {type(config).__name__}")
        try:
            self._auto_model().add_adapter(config, adapter_name=adapter_name)
        except ValueError as e:
            raise StedgeError(f"add_adapter('{adapter_name}'): {e}") from None

    def load_adapter(self, path: str | os.PathLike, adapter_name: str | None = None, is_trainable: bool = False) -> None:
        """Load a saved adapter (a folder with adapter_config.json) onto this model's transformer."""
        require("peft", "train", "adapters")
        folder = Path(path)
        if not (folder / ADAPTER_CONFIG).exists():
            folder = _base_transformer_folder(folder)
        if not (folder / ADAPTER_CONFIG).exists():
            raise StedgeError(f"{path}: no {ADAPTER_CONFIG} found; pass a folder written by saving a model with an adapter")
        name = adapter_name or "default"
        try:
            self._auto_model().load_adapter(str(folder), adapter_name=name, is_trainable=is_trainable)
        except ValueError as e:
            raise StedgeError(f"load_adapter({str(path)!r}): {e}") from None
        self._auto_model().set_adapter(name)

    def active_adapters(self) -> list[str]:
        """Names of the active adapters."""
        self._require_adapters()
        return list(self._auto_model().active_adapters())

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Activate an adapter (or several) by name."""
        self._require_adapters()
        try:
            self._auto_model().set_adapter(adapter_name)
        except ValueError as e:
            raise StedgeError(f"set_adapter: {e} (adapters: {', '.join(self._auto_model().peft_config)})") from None

    def enable_adapters(self) -> None:
        """Turn the adapters back on after disable_adapters."""
        self._require_adapters()
        self._auto_model().enable_adapters()

    def disable_adapters(self) -> None:
        """Run the base model alone (adapters stay loaded)."""
        self._require_adapters()
        self._auto_model().disable_adapters()

    def get_adapter_state_dict(self, adapter_name: str | None = None) -> dict:
        """The adapter's weights (keys without the adapter name), as peft saves them."""
        self._require_adapters()
        return self._auto_model().get_adapter_state_dict(adapter_name)

    def _finish_adapter_save(self, folder: Path) -> None:
        """After the modules are saved: point every adapter_config.json at the base model reference."""
        if not self.has_adapters:
            return
        t = self.transformer  # type: ignore[attr-defined]
        base = getattr(t, "adapter_base_ref", None) or _base_reference(getattr(self, "model_ref", None))
        base = base or getattr(self._auto_model(), "name_or_path", None)
        for cfg_path in Path(folder).rglob(ADAPTER_CONFIG):
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg["base_model_name_or_path"] = base
            cfg_path.write_text(json.dumps(cfg, indent=2))


# --------------------------------------------------------------------------- merging (stedge lora merge, export)
def adapter_config(adapter_dir: Path) -> dict:
    """The parsed adapter_config.json of an adapter folder (clear errors when missing or broken)."""
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
    cfg = adapter_config(Path(adapter_dir))
    ref = base or cfg.get("base_model_name_or_path")
    if not ref:
        raise InvalidModelError(
            f"{Path(adapter_dir) / ADAPTER_CONFIG} has no base_model_name_or_path: pass the base model with --base"
        )
    return str(ref)


def _load_base(adapter_dir: Path, base: str | None, device: str | None):
    """The base encoder with the adapter folder's own sentence-transformers modules and settings."""
    from . import SentenceEncoder
    from .modules import Transformer, module_class

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


def load_unmerged(adapter_dir: str | os.PathLike, base: str | None = None, device: str | None = None):
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


def merge_adapter(adapter_dir: str | os.PathLike, base: str | None = None, device: str | None = None):
    """Load a LoRA adapter onto its base and merge the weights: a plain SentenceEncoder.

    ``base`` overrides the adapter config's ``base_model_name_or_path`` (a folder or reference).
    """
    encoder = load_unmerged(adapter_dir, base, device)
    merged = encoder.transformer.auto_model.merge_and_unload()
    encoder.transformer.auto_model = merged
    encoder.eval()
    return encoder
