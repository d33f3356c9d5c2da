"""`stedge pack`: a runtime-only copy of an artifact for apps to ship.

It holds what ``stedge_runtime`` reads and nothing else: ``stedge.json`` listing only the chosen
variants, the tokenizer file, the files of those variants (graph + external data / OpenVINO
weights) and the embedding calibration ranges when there are some, each checked against its sha256
while it is copied, and the tuning profiles (``tuning/``). No torch weights, no model card.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import StedgeError
from ..io import atomic_dir, check_output, sha256_file


@dataclass
class PackResult:
    """What pack wrote: the folder, its variants and default, and its files with their sizes."""

    path: Path
    variants: list[str]
    default_variant: str
    files: dict[str, int]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "variants": self.variants,
            "default_variant": self.default_variant,
            "files": self.files,
            "size_bytes": sum(self.files.values()),
        }


def default_pack_variants(root: Path, tier: str = "near", max_memory_mb: float | None = None) -> list[str]:
    """What ``Encoder.load(root, tier=tier, max_memory_mb=...)`` runs on this machine: the bulk variant and, when
    batch-1 calls are routed elsewhere, that one too (an app built and tested here gets the same choice)."""
    import warnings

    from stedge_runtime.errors import RuntimeStedgeError
    from stedge_runtime.tune import best_choices

    sel = best_choices(root, (tier,), max_memory_mb=max_memory_mb)[tier]
    if "error" in sel:
        raise RuntimeStedgeError(f"{sel['error']}; name the variants to pack with --variant")
    for w in sel.get("warnings") or []:  # a budget nothing fits, or one not checked: as Encoder.load says it
        warnings.warn(f"{root}: {w}", RuntimeWarning, stacklevel=2)
    return [n for n in (sel["variant"], sel.get("latency_variant")) if n]


def pack_artifact(
    artifact: str | os.PathLike,
    output: str | os.PathLike,
    variants: Sequence[str] = (),
    overwrite: bool = False,
    tier: str = "near",
    max_memory_mb: float | None = None,
) -> PackResult:
    """Copy ``variants`` of ``artifact`` (default: what ``Encoder.load`` picks for ``tier``, within
    ``max_memory_mb`` when given, on this machine) with the tokenizer and a manifest listing only them into
    ``output``. Every file is checked against the manifest's sha256 while copied."""
    from stedge_runtime.artifact import Manifest, artifact_path, write_manifest
    from stedge_runtime.profile import list_profiles

    root = Path(artifact)
    m = Manifest.read(root)
    names = list(dict.fromkeys(variants)) or default_pack_variants(root, tier, max_memory_mb)
    chosen = {n: m.variant(n, root / "stedge.json") for n in names}
    check_output(output, overwrite, protect=[root])
    files: dict[str, int] = {}
    with atomic_dir(output, overwrite=overwrite, protect=[root]) as tmp:
        _copy(artifact_path(root, m.tokenizer, "tokenizer"), tmp / m.tokenizer)
        files[m.tokenizer] = (tmp / m.tokenizer).stat().st_size
        for name, v in chosen.items():
            for rel in v.files():
                if rel in files:
                    continue
                src = artifact_path(root, rel, f"variants.{name}.sha256")
                _copy(src, tmp / rel, v.sha256.get(rel), f"variants.{name}.sha256")
                files[rel] = (tmp / rel).stat().st_size
        cal = m.embedding_calibration
        if cal is not None:  # the int8/uint8 output ranges travel with the vectors they calibrate
            src = artifact_path(root, cal.file, "embedding_calibration.file")
            _copy(src, tmp / cal.file, cal.sha256, "embedding_calibration.sha256")
            files[cal.file] = (tmp / cal.file).stat().st_size
        for prof in list_profiles(root):  # tuning profiles (stedge tune): the packed variants they measured
            rel = prof.relative_to(root).as_posix()
            _copy(prof, tmp / rel)
            files[rel] = prof.stat().st_size
        default = m.default_variant if m.default_variant in chosen else names[0]
        write_manifest(tmp, m.with_variants(chosen, default))
    return PackResult(Path(output).resolve(), names, default, files)


def _copy(src: Path, dst: Path, digest: str | None = None, field: str = "") -> None:
    if not src.is_file():
        raise StedgeError(f"{src} is missing or not a regular file: re-export the artifact")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if digest is not None and sha256_file(dst) != digest:
        raise StedgeError(
            f"{src}: sha256 does not match stedge.json {field}; the artifact changed after export: "
            "export it again before packing"
        )
