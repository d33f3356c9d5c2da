"""The model behind a corpus job: an exported artifact (stedge_runtime, torch-free) or a plain model
(stedge.models.SentenceEncoder), described by a picklable spec so Ray actors can open it too."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StedgeError


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how to encode: the model reference, variant, device and encode options."""

    model: str
    variant: str | None = None
    device: str | None = None
    prompt_name: str | None = None
    normalize: bool = False
    batch_size: int = 32
    threads: int | None = None
    tier: str | None = None
    max_memory_mb: float | None = None  # per encoder (each Ray actor holds one): Encoder.load's budget

    @property
    def is_artifact(self) -> bool:
        """True when ``model`` is an exported artifact folder (has stedge.json)."""
        from stedge_runtime import is_artifact

        return is_artifact(self.model)


class CorpusEncoder:
    """Encodes lists of texts to float32 vectors with the spec's model; knows its dimension and identity."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        if spec.batch_size < 1:
            raise StedgeError(f"--batch-size must be >= 1, got {spec.batch_size}")
        self._artifact = spec.is_artifact
        if self._artifact:
            from stedge_runtime import Encoder

            # route=False: every chunk, however small, runs on the one variant recorded in corpus.json
            self._enc: Any = Encoder.load(
                spec.model,
                variant=spec.variant,
                device=spec.device or "cpu",
                threads=spec.threads,
                tier=spec.tier,
                route=False,
                max_memory_mb=spec.max_memory_mb,
            )
            self.variant: str | None = self._enc.variant
            self.dimension = int(self._enc.dimension)
        else:
            if spec.variant or spec.tier or spec.max_memory_mb:
                raise StedgeError(
                    f"--variant / --tier / --max-memory-mb apply to exported artifacts only; '{spec.model}' has no "
                    "stedge.json"
                )
            from ..models import SentenceEncoder

            self._enc = SentenceEncoder(spec.model, device=spec.device)
            self.variant = None
            self.dimension = int(self._enc.get_sentence_embedding_dimension())
        if spec.prompt_name is not None and spec.prompt_name not in (self._enc.prompts or {}):
            names = ", ".join(sorted(self._enc.prompts or {})) or "none"
            raise StedgeError(
                f"--prompt-name {spec.prompt_name!r}: the model has no such prompt (its prompts: {names})"
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32 vectors, in input order."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._artifact:
            out = self._enc.encode(
                list(texts),
                batch_size=self.spec.batch_size,
                prompt_name=self.spec.prompt_name,
                normalize_embeddings=self.spec.normalize,
            )
        else:
            out = self._enc.encode(
                list(texts),
                batch_size=self.spec.batch_size,
                prompt_name=self.spec.prompt_name,
                normalize_embeddings=self.spec.normalize,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)

    @property
    def ranges(self) -> np.ndarray | None:
        """The int8/uint8 output ranges saved with the artifact (``stedge calibrate``), else None."""
        return self._enc.embedding_ranges if self._artifact else None

    def identity(self) -> dict[str, Any]:
        """What made the vectors: the model, the variant and a hash of its weights (a change means new vectors)."""
        d: dict[str, Any] = {
            "ref": self.spec.model,
            "variant": self.variant,
            "prompt_name": self.spec.prompt_name,
            "normalize": self.spec.normalize,
        }
        if self._artifact:
            manifest = self._enc.manifest  # stedge_runtime.artifact.Manifest
            d["kind"] = "artifact"
            d["path"] = str(Path(self.spec.model).resolve())
            d["sha256"] = dict(manifest.variants[self.variant].sha256)
            d["source_sha256"] = (manifest.source or {}).get("sha256")
        else:
            from ..export.core import source_sha256
            from ..hub import resolve_model

            path = resolve_model(self.spec.model)
            d["kind"] = "model"
            d["path"] = str(path)
            d["sha256"] = source_sha256(path)
        return d

    def warn_batch_invariance(self) -> None:
        """Warn when the artifact variant is not known to give a text the same vector whatever its batch
        (its record says the check failed, or the export did not measure it)."""
        if not self._artifact:
            return
        from stedge_runtime.select import DEFAULT_TIER, INVARIANCE, batch_invariance

        sel = self._enc.selection
        inv = batch_invariance(self._enc.manifest.variants[self.variant])
        bound = INVARIANCE[sel.tier or DEFAULT_TIER]
        if inv is not None and (inv >= bound or sel.source == "named"):  # a named failing variant: the runtime warned
            return
        what = (
            f"failed the batch-invariance check (min cos {inv:.5f} < {bound})"
            if inv is not None
            else "has no batch-invariance record (exported by an older stedge)"
        )
        warnings.warn(
            f"variant {self.variant} of {self.spec.model} {what}: a text's vector may depend on the other texts "
            f"in its batch. Pick another with --variant NAME (`stedge info {self.spec.model}` lists them).",
            RuntimeWarning,
            stacklevel=2,
        )


def spec_dict(spec: ModelSpec) -> dict[str, Any]:
    """The spec as a plain dict (for summaries)."""
    return asdict(spec)
