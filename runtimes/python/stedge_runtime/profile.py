"""Tuning profiles: what `stedge tune` measured on one machine, kept inside the artifact.

A profile is ``ARTIFACT/tuning/<machine key>.json`` (see :func:`stedge_runtime.machine.machine_key`):
one file per machine, so an artifact copied to another machine carries profiles that are simply not
read there. The file is written atomically (temporary sibling + ``os.replace``); stedge.json is
not touched. Where the artifact's folder cannot be written (an app installed read-only), the profile goes to
the user's profile folder instead (``user_profiles``: one folder per artifact, named by its stedge.json's
sha256), and a read takes the newer of the two. Layout (``format_version`` 1)::

    {"format_version": 1, "machine": {...machine_facts(), "key": KEY}, "created": ISO-8601 UTC,
     "runtime": "<stedge_runtime version>", "budget_s": 12.0, "quick": false,
     "workloads": {"short": {"texts": 64, "mean_tokens": 14.2}, "passage": {"texts": 32, "mean_tokens": 256.0},
                   "batch1": {...}, "batch1_long": {"texts": 16, "mean_tokens": 27.1}},
     "variants": {NAME: {"status": "ok" | "error", "error": str?, "sha256": <manifest hash(es)>,
                         "batch_invariance_min_cos": 0.99998,    # measured here: alone vs in a batch of 32
                         "min_cos_to_exact": 0.9962, "exact_reference": "onnx-fp32",  # vs an exact variant, here
                         "runs": [{"settings": {"threads": 2, "allow_spinning": true},
                                   "batch1_ms_p50": 1.9, "batch1_ms_p90": 2.3, "rounds": 2,
                                   "batch1_ms_p50_long": 2.6,   # longer queries (two short texts joined)
                                   "bulk": {"short": {"32": 1650.0}, "passage": {"32": 140.0}}}],
                         "static_pad": {"p50_ms": {"16": 2.1, "8": 1.9}, "pass_ms": {"16": [...], "8": [...]},
                                        "incumbent": 8?, "chosen": 8},   # OpenVINO: the static-padding duel
                         "dq_group": {"effect": true, "bulk_sent_s": {...}, "batch1_ms_p50": {...},
                                      "pass_score": {"default": [...], "128": [...], ...}, "incumbent": 128?,
                                      "chosen": 128 | null}}},   # OpenVINO int8/int4: the int8-group duel
                    # (tune.static_pad_duel, tune.dq_group_duel; incumbent: the previous tune's choice, which
                    # stays unless another is 5 % faster with confidence over the passes, tune.duel_winner;
                    # profiles before 2026-12-07T07:15 have no pass figures)
     "agreement": {"A|B": min cosine between the vectors of variants A and B on the short texts},
     "batch_tokens": {"variant": "onnx-fp32", "settings": {...}, "batch_sizes": {"short": 192, "passage": 24},
                      "rates": {"1024": {"short": 620.0, "passage": 27.0}, ...}, "default": 1024,
                      "rounds": {"1024": {"short": [612.0, 620.0], ...}, ...}, "incumbent": 1024?,
                      "best": 1024},    # padded tokens per engine call; absent in --quick profiles; the
                                        # previous tune's best (incumbent), else the default, stays unless
                                        # another is SETTINGS_GAIN faster in every round (rounds: per round)
     "paired": {"cycles": 7, "within": 0.85, "gap_s": 0.1, "ci_level": 0.95, "reference": "onnx-int8-rows",
                "contenders": {ID: {"variant": NAME, "settings": {...},   # ID: NAME, or "NAME (settings)" for a
                                    # variant's further settings (profiles before them: keyed by NAME, no "variant")
                                    "seconds": {"batch1": [...], "short bs=32": [...],
                                                                     "passage bs=32": [...]},
                                      "speedup": {"batch1": 1.02, "short bs=32": 0.97, "passage bs=32": 0.95},
                                      "speedup_ci": {"batch1": [0.97, 1.06], ...},
                                      "bulk_speedup": 0.96, "bulk_speedup_ci": [0.91, 1.01],
                                      "batch1_speedup": 1.02, "batch1_speedup_ci": [0.97, 1.06], "error": str?}}}}
                    # the paired final; absent in --quick profiles; cycles 0 when fewer than two contenders;
                    # *_ci: the ci_level interval of each median (None / left out below 6 cycles; profiles before
                    # 2026-12-06 have none, and their bulk_speedup is the geometric mean of the bulk medians)
     "kept": {TIER: {"variant", "settings", "over": {"variant", "settings"}, "since": ISO-8601 UTC,
                     "bulk_speedup": 1.03, "bulk_speedup_ci": [0.95, 1.08], "batch1_speedup": 0.98,
                     "batch1_speedup_ci": [0.9, 1.04], "batch1_by": "final" | "route duel" | "same destination"}},
                    # a re-tune's new choice ("over") the paired final could not tell from the previous tune's
                    # choice (ratios: over / kept; tune.kept_choices): the tier keeps the previous one while it
                    # is eligible and the new one is still the profile's choice; absent when nothing was kept;
                    # batch 1 compares where each runs its batch-1 calls: the final's batch-1 passes where both
                    # run them on their bulk settings, a route duel where a route or static compilations do,
                    # nothing (no batch1_speedup) where both run them on one engine (profiles before
                    # 2026-12-07T06:40 have no batch1_by: the final's passes)
     "kept_routes": {TIER: {"variant", "settings", "over": {"variant", "settings"}, "bulk": {"variant", "settings"},
                            "since": ISO-8601 UTC, "passes": 10, "batch1_speedup": 1.04,
                            "batch1_speedup_ci": [0.97, 1.1]}},
                    # where batch-1 calls went before a re-tune ("variant", "settings": the route, or the bulk
                    # choice itself when there was none) and the new tune would send them ("over"), with the tier's
                    # bulk choice unchanged ("bulk"): its route duel (tune.kept_routes) could not tell "over" faster
                    # (per-pass speedups over the kept one): the tier keeps it while it still qualifies and the
                    # fresh destination is still "over"; absent when nothing was kept
     "route_duels": [{"new": {"variant", "settings"}, "old": {"variant", "settings"}, "passes": 10,
                      "speedup": 1.05, "speedup_ci": [0.97, 1.12]} | {"new", "old", "error": str}],
                    # every route duel a re-tune ran (kept or not: a move shows its figures here)
     "memory": {"created": ISO-8601 UTC,
                "basis": {"probe": 1, "runtime": "0.1.0", "texts": sha | None, "queries": sha | None,
                          "batch_sizes": [32], "max_batch_tokens": 1024},   # what every figure depends on
                "tiers": {TIER: {"peak_rss_mb": 491.0, "growth_mb": 12.0,
                                 "route_off_mb": 378.0, "route_off_growth_mb": 3.0,
                                 "choice": {"variant", "settings", "latency_variant", "latency_settings"},
                                 "measured": ISO-8601 UTC?} | {"error": str}},
                "configs": [{"variant": NAME, "settings": {...}, "peak_rss_mb": 154.0, "growth_mb": 0.5,
                             "measured": ISO-8601 UTC?} | {..., "error": str}],
                "partial": true?}   # while the probes run (tune.measure_memory writes the profile after each)
                    # peak RSS of a fresh process running each tier's choice (stedge_runtime.tune.tier_memory);
                    # route_off_mb: the same with route=False, where the tier routes batch-1 calls; choice: what
                    # ran (profiles before it: Encoder.load(tier=TIER)); configs: each variant alone at the
                    # settings a budget may fall back to (tune.memory_configs: a tier's, its defaults, budget-only
                    # ones and their static_batch1 twins), for max_memory_mb;
                    # growth_mb: what the second half of the probe's varied texts added (select.still_growing;
                    # profiles before it have none); measured: on a figure a re-tune kept from the profile it
                    # replaced (same basis, the variants' files unchanged: tune.reusable_memory), when its probe
                    # ran (otherwise it ran at "created"); profiles before 2026-12-07 have no basis, so a re-tune
                    # of them probes everything; partial: the tune that wrote it was stopped during its probes,
                    # so figures not reached are missing (the next tune keeps those present, as above)

Each run is the best of ``rounds`` measurements of that (variant, settings) case, taken in alternating
order so that load from elsewhere during one of them does not decide the choice. The paired final then
times the close contenders side by side (stedge_runtime.tune.paired_final); its speedups are medians of
per-cycle ratios to the reference, and selection ranks the contenders by them; their intervals only
inform (a win within noise is still a win: either contender is then as fast here as the cycles can tell).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .artifact import MANIFEST, cache_dir
from .errors import ArtifactError

PROFILE_DIR = "tuning"
PROFILE_FORMAT = 1
PROFILES_ENV = "STEDGE_RUNTIME_PROFILES"  # where the profiles of read-only artifacts go (default: the cache)


def profile_file(root: str | os.PathLike, key: str) -> Path:
    """Where the profile of machine ``key`` lives inside an artifact."""
    return Path(root) / PROFILE_DIR / f"{key}.json"


def user_profiles(root: str | os.PathLike) -> Path | None:
    """The user's profile folder for the artifact at ``root``, for when its own folder is read-only:
    ``$STEDGE_RUNTIME_PROFILES/<id>``, else ``<cache_dir>/profiles/<id>`` (artifact.cache_dir), ``<id>`` the first
    20 hex digits of the sha256 of its stedge.json, so an artifact exported or packed again reads none of the
    profiles measured on its earlier self. None when stedge.json cannot be read."""
    try:
        digest = hashlib.sha256((Path(root) / MANIFEST).read_bytes()).hexdigest()[:20]
    except OSError:
        return None
    base = os.environ.get(PROFILES_ENV)
    return (Path(base) if base else cache_dir() / "profiles") / digest


def profile_files(root: str | os.PathLike, key: str) -> list[Path]:
    """Where the profile of machine ``key`` may be: inside the artifact, then in the user's profile folder."""
    user = user_profiles(root)
    return [profile_file(root, key), *([user / f"{key}.json"] if user is not None else [])]


def list_profiles(root: str | os.PathLike) -> list[Path]:
    """Every profile file in an artifact (any machine), sorted by name."""
    folder = Path(root) / PROFILE_DIR
    try:
        return sorted(p for p in folder.glob("*.json") if p.is_file() and not p.is_symlink())
    except OSError:
        return []


def read_profile(root: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The profile measured on machine ``key``, or None when there is none (see ``find_profile``)."""
    found = find_profile(root, key)
    return None if found is None else found[0]


def find_profile(root: str | os.PathLike, key: str) -> tuple[dict[str, Any], Path] | None:
    """The profile of machine ``key`` and its file: the newer (``created``) of the artifact's own and the one in
    the user's profile folder (``profile_files``), or None when there is neither.

    A profile that cannot be read, has a newer ``format_version`` or was measured on another machine
    (its ``machine.key`` differs from ``key``) raises ArtifactError naming the file, unless the other place
    holds one that reads.
    """
    found: list[tuple[dict[str, Any], Path]] = []
    errors: list[ArtifactError] = []
    for file in profile_files(root, key):
        try:
            data = _read(file, key)
        except ArtifactError as e:
            errors.append(e)
            continue
        if data is not None:
            found.append((data, file))
    if not found and errors:
        raise errors[0]
    return max(found, key=lambda f: str(f[0].get("created") or ""), default=None)  # a tie: the artifact's own


def _read(file: Path, key: str) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    if file.is_symlink():
        raise ArtifactError(f"{file}: a tuning profile must be a plain file, not a symlink")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(
            f"{file}: not a readable tuning profile ({e}); delete it and run `stedge tune` again"
        ) from None
    check_profile(data, file)
    if data["machine"].get("key") != key:
        raise ArtifactError(
            f"{file}: machine.key is {data['machine'].get('key')!r}, expected {key!r} "
            "(the file was renamed or copied); "
            "delete it and run `stedge tune` on this machine"
        )
    return data


def check_profile(data: Any, where: str | os.PathLike) -> None:
    """Raise ArtifactError when ``data`` is not a profile this runtime reads (field named)."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: a tuning profile is a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{where}: field 'format_version' is missing or not an integer")
    if version > PROFILE_FORMAT:
        raise ArtifactError(
            f"{where}: format_version {version} is newer than this runtime reads ({PROFILE_FORMAT}); "
            "upgrade stedge-runtime or run `stedge tune` again"
        )
    if not isinstance(data.get("machine"), dict):
        raise ArtifactError(f"{where}: field 'machine' is missing or not an object")
    variants = data.get("variants")
    if not isinstance(variants, dict):
        raise ArtifactError(f"{where}: field 'variants' is missing or not an object")
    for name, v in variants.items():
        if not isinstance(v, dict) or v.get("status") not in ("ok", "error"):
            raise ArtifactError(f"{where}: variants.{name}.status must be 'ok' or 'error'")
        runs = v.get("runs", [])
        if not isinstance(runs, list) or not all(
            isinstance(r, dict) and isinstance(r.get("settings"), dict) for r in runs
        ):
            raise ArtifactError(f"{where}: variants.{name}.runs must be a list of objects with 'settings'")
    for field in ("kept", "kept_routes"):
        kept = data.get(field)
        if kept is not None and not (isinstance(kept, dict) and all(isinstance(k, dict) for k in kept.values())):
            raise ArtifactError(f"{where}: field {field!r} must be an object mapping tiers to objects")
    paired = data.get("paired")
    if paired is not None and not (
        isinstance(paired, dict)
        and isinstance(paired.get("contenders"), dict)
        and all(isinstance(c, dict) and isinstance(c.get("settings"), dict) for c in paired["contenders"].values())
    ):
        raise ArtifactError(
            f"{where}: field 'paired' must be an object whose 'contenders' map names to objects with 'settings'"
        )


def write_profile(root: str | os.PathLike, profile: dict[str, Any]) -> Path:
    """Write ``profile`` as ``tuning/<machine.key>.json`` atomically; where the artifact's folder cannot be
    written (read-only, no permission), into the user's profile folder (``user_profiles``) instead. Returns the
    file."""
    key = str(profile["machine"]["key"])
    file = profile_file(root, key)
    check_profile(profile, file)
    try:
        return _write(file, profile)
    except OSError as e:
        user = user_profiles(root)
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or user is None:
            raise
    return _write(user / f"{key}.json", profile)


def _write(file: Path, profile: dict[str, Any]) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(profile, f, indent=1, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return file
