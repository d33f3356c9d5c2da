"""`stedge pack`: a runtime-only copy of an artifact for apps to ship.

It holds what ``stedge_runtime`` reads and nothing else: ``stedge.json`` listing only the chosen
variants, the tokenizer file, the files of those variants (graph + external data / OpenVINO
weights) and the embedding calibration ranges when there are some, each checked against its sha256
while it is copied, and the tuning profiles (``tuning/``). No torch weights, no model card.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import StedgeError
from ..io import atomic_dir, check_output, sha256_file

# The CPU a packed artifact must also run on when what this machine chose needs CPU flags (openvino-bf16): an
# AVX2-class x86 CPU (stedge_runtime.machine.cpu_class "plain"), which every x86 CPU the engines support covers.
PORTABLE_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})


@dataclass
class PackResult:
    """What pack wrote: the folder, its variants and default, its files with their sizes, and notes on why a
    variant was added (``portable_variant``)."""

    path: Path
    variants: list[str]
    default_variant: str
    files: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "variants": self.variants,
            "default_variant": self.default_variant,
            "files": self.files,
            "size_bytes": sum(self.files.values()),
            "notes": self.notes,
        }


def default_pack_variants(
    root: Path, tier: str = "near", max_memory_mb: float | None = None, device: str = "cpu"
) -> list[str]:
    """What ``Encoder.load(root, tier=tier, max_memory_mb=..., device=device)`` runs on this machine: the bulk
    variant and, when batch-1 calls are routed elsewhere, that one too (an app built and tested here gets the same
    choice); on another device than the CPU, what its rule takes there."""
    import warnings

    from stedge_runtime.errors import RuntimeStedgeError
    from stedge_runtime.tune import best_choices

    sel = best_choices(root, (tier,), max_memory_mb=max_memory_mb, device=device)[tier]
    if "error" in sel:
        raise RuntimeStedgeError(f"{sel['error']}; name the variants to pack with --variant")
    for w in sel.get("warnings") or []:  # a budget nothing fits, or one not checked: as Encoder.load says it
        warnings.warn(f"{root}: {w}", RuntimeWarning, stacklevel=2)
    return list(dict.fromkeys(n for n in (sel["variant"], sel.get("latency_variant")) if n))


def portable_variant(root: Path, m: Any, names: Sequence[str], tier: str = "near") -> tuple[str | None, str | None]:
    """When a variant of ``names`` runs only on CPUs with certain flags (openvino-bf16), the variant
    ``Encoder.load(root, tier=tier)`` picks on a CPU without them (an AVX2-class x86 CPU, PORTABLE_FLAGS, by the
    rule: no profile is made there), so the packed artifact runs on any CPU; ``m`` is the artifact's Manifest.
    Returns (variant to add or None, a note for the user or None); the note is a warning when no variant of the
    tier runs there."""
    from stedge_runtime.engines import installed_backends
    from stedge_runtime.errors import RuntimeStedgeError
    from stedge_runtime.select import cpu_requirements, select_variant

    need = sorted({f for n in names for f in cpu_requirements(m.variants[n])})
    if not need:
        return None, None
    try:
        sel = select_variant(
            m.variants, "cpu", None, installed_backends(), root, tier=tier, flags=set(PORTABLE_FLAGS), use_profile=False
        )
    except RuntimeStedgeError:
        return None, (
            f"{', '.join(names)} run only on CPUs with one of {', '.join(need)}, and no tier-{tier} variant of {root} "
            "runs on others: name one to add with --variant (or export one, e.g. --quantize int8 --add)"
        )
    if sel.variant in names:
        return None, None
    return sel.variant, (
        f"{sel.variant} added for CPUs without {' or '.join(need)} (what Encoder.load picks at tier {tier} there); "
        "--no-portable leaves it out"
    )


def pack_artifact(
    artifact: str | os.PathLike,
    output: str | os.PathLike,
    variants: Sequence[str] = (),
    overwrite: bool = False,
    tier: str = "near",
    max_memory_mb: float | None = None,
    portable: bool = True,
    devices: Sequence[str] = ("cpu",),
) -> PackResult:
    """Copy ``variants`` of ``artifact`` (default: what ``Encoder.load`` picks for ``tier`` on each of ``devices``
    (on the CPU within ``max_memory_mb`` when given, on this machine, and, when ``portable`` and that needs CPU
    flags such as bf16's, what it picks on a CPU without them: ``portable_variant``) with the tokenizer and a
    manifest listing only them into ``output``. Every file is checked against the manifest's sha256 while copied."""
    from stedge_runtime.artifact import Manifest, artifact_path, device_family, write_manifest
    from stedge_runtime.profile import list_profiles

    root = Path(artifact)
    m = Manifest.read(root)
    names = list(dict.fromkeys(variants))
    notes: list[str] = []
    for device in [] if variants else list(dict.fromkeys(devices or ("cpu",))):
        cpu = device_family(device) == "cpu"
        found = default_pack_variants(root, tier, max_memory_mb if cpu else None, device)
        if cpu and portable:
            extra, note = portable_variant(root, m, found, tier)
            found += [extra] if extra else []
            notes += [note] if note else []
        if not cpu:
            notes += [f"{', '.join(found)}: what Encoder.load picks at tier {tier} on {device}"]
        names = list(dict.fromkeys(names + found))
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
    return PackResult(Path(output).resolve(), names, default, files, notes)


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
