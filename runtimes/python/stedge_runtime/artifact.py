"""The artifact contract: ``stedge.json`` read, validated and written in one place.

Everything that reads or writes an artifact goes through this module: the export stage writes the
manifest with :func:`write_manifest`, the runtime, the CLI, training, compression and the harness read
it with :meth:`Manifest.read`. Both directions run the same validation (:meth:`Manifest.from_dict`),
which names the field at fault. The module also owns variant naming, the files a variant consists
of, paths kept inside the artifact, device fit, variant selection and the sha256 checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from .errors import ArtifactError, DeviceError

MANIFEST = "stedge.json"
MANIFEST_LIMIT = 16 << 20  # a manifest is a few kB; reading more is never right (a link to /dev/zero would not end)
FORMAT_VERSION = 1
TASKS = ("embedding", "reranking")
BACKENDS = ("onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
OPTIMIZATIONS = ("O1", "O2", "O3", "O4")
DEVICES = ("cpu", "cuda", "tensorrt", "gpu", "npu", "auto")
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "prompt_length")
GRAPH_OUTPUTS = ("sentence_embedding", "last_hidden_state", "logits", "scores")
SIMILARITY_FNS = ("cosine", "dot", "euclidean", "manhattan")
TIERS = ("exact", "near", "compressed")  # precision tiers, best first (see stedge.export.verify)
_VERIFICATION_NUMBERS = ("mean_cosine", "min_cosine", "spearman", "reference_spearman", "batch_invariance_min_cos")

# Device families and the engine (variant backend) that serves them.
ONNX_DEVICES = ("cpu", "cuda", "tensorrt", "ort-openvino")
OPENVINO_DEVICES = ("cpu", "gpu", "npu", "auto")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_]+$")


# --------------------------------------------------------------------------- field checks
class _Fields:
    """Typed access to one JSON object; every error names ``where`` and the dotted field."""

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: {prefix.rstrip('.') or 'the manifest'} must be a JSON object")
        self.data, self.where, self.prefix = data, where, prefix

    def fail(self, key: str, expected: str) -> ArtifactError:
        got = self.data.get(key, "<missing>")
        return ArtifactError(
            f"{self.where}: field '{self.prefix}{key}' is {got!r}, expected {expected}; "
            "re-export the model with this stedge, or fix the field"
        )

    def get(self, key: str, types: tuple, expected: str, default: Any = ..., choices: Iterable | None = None) -> Any:
        if key not in self.data or (self.data[key] is None and default is not ... and type(None) not in types):
            if default is ...:
                raise self.fail(key, expected)
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in types:  # bool is an int in Python: never accept it as one
            raise self.fail(key, expected)
        if not isinstance(value, types) or (choices is not None and value is not None and value not in choices):
            raise self.fail(key, expected)
        return value

    def text(self, key: str, default: Any = ..., choices: Iterable | None = None, nullable: bool = False) -> Any:
        kinds = (str, type(None)) if nullable else (str,)
        what = f"one of {', '.join(map(str, choices))}" if choices else "a string"
        return self.get(key, kinds, what + (" or null" if nullable else ""), default, choices)

    def integer(self, key: str, default: Any = ..., minimum: int = 0, nullable: bool = False) -> Any:
        value = self.get(key, (int, type(None)) if nullable else (int,), f"an integer >= {minimum}", default)
        if isinstance(value, int) and value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return value

    def obj(self, key: str, default: Any = ..., nullable: bool = False) -> Any:
        return self.get(key, (dict, type(None)) if nullable else (dict,), "an object", default)

    def strings(self, key: str, choices: Iterable, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, (list,), "a list", default)
        allowed = tuple(choices)
        if any(not isinstance(x, str) or x not in allowed for x in value):
            raise self.fail(key, f"a list of {', '.join(allowed)}")
        return tuple(value)


def check_relpath(rel: Any, field_name: str, where: str) -> str:
    """A manifest path must be relative, forward-slashed and stay inside the artifact (no ``..``)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise ArtifactError(f"{where}: field '{field_name}' is {rel!r}, expected a relative path inside the artifact")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel.startswith("~"):
        raise ArtifactError(
            f"{where}: field '{field_name}' is {rel!r}: paths in {MANIFEST} must stay inside the artifact folder "
            "(no absolute paths, no '..'); this artifact is damaged or hostile, do not run it"
        )
    return rel


def artifact_path(root: Path, rel: str, field_name: str) -> Path:
    """``root / rel`` after checking it resolves inside ``root`` (symlinks out of the artifact are refused)."""
    check_relpath(rel, field_name, str(root / MANIFEST))
    path = root / rel
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise ArtifactError(
            f"{path} ({MANIFEST} {field_name}) resolves to {real}, outside the artifact folder {real_root}: "
            "links out of an artifact are refused; copy the file into the artifact instead"
        )
    return path


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Verification:
    """How a variant compares with PyTorch fp32 at export (``passed`` gates automatic selection).

    ``tier``: the best precision tier reached (exact / near / compressed, None when none; absent in artifacts
    exported before tiers). ``batch_invariance_min_cos``: min cosine of a text's vector alone vs inside a mixed
    batch of 32 (None when not measured). Both are written by ``stedge.export.verify``."""

    passed: bool
    mean_cosine: float | None = None
    min_cosine: float | None = None
    spearman: float | None = None
    reference_spearman: float | None = None
    tier: str | None = None
    batch_invariance_min_cos: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str, prefix: str) -> Verification | None:
        if data is None:
            return None
        f = _Fields(data, where, prefix)
        num = (int, float, type(None))
        values = {k: f.get(k, num, "a number or null", None) for k in _VERIFICATION_NUMBERS}
        passed = f.get("passed", (bool,), "true or false")
        tier = f.text("tier", default=None, choices=TIERS, nullable=True)
        known = {"passed", "tier", *values}
        return cls(passed=passed, tier=tier, **values, extra={k: v for k, v in data.items() if k not in known})

    def get(self, key: str, default: Any = None) -> Any:
        """Any recorded figure by name (typed fields first, then the rest of the record)."""
        if key in {f.name for f in fields(self)} and key != "extra":
            return getattr(self, key)
        return self.extra.get(key, default)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in _VERIFICATION_NUMBERS if k != "batch_invariance_min_cos"}
        out.update(self.extra)
        if self.tier is not None or self.batch_invariance_min_cos is not None:  # format-1 records without them
            out["tier"] = self.tier
            out["batch_invariance_min_cos"] = self.batch_invariance_min_cos
        out["passed"] = self.passed
        return out


@dataclass(frozen=True)
class VariantRecord:
    """One runnable graph of the artifact, as ``stedge.json`` ``variants.<name>`` describes it."""

    name: str
    file: str
    backend: str
    precision: str
    devices: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    sha256: Mapping[str, str] = field(default_factory=dict)  # relative path -> hex digest, graph first
    size_bytes: int | None = None
    optimization: str | None = None
    quantization: Mapping[str, Any] | None = None
    verification: Verification | None = None
    note: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str) -> VariantRecord:
        prefix = f"variants.{name}."
        f = _Fields(data, where, prefix)
        file = check_relpath(f.text("file"), prefix + "file", where)
        digests = data.get("sha256")
        if isinstance(digests, str):  # one-file variants of format 1 store the graph's hash alone
            digests = {file: digests}
        if digests is None:
            digests = {}
        if not isinstance(digests, dict):
            raise f.fail("sha256", "an object mapping each file of the variant to its sha256")
        for rel, digest in digests.items():
            check_relpath(rel, f"{prefix}sha256 key", where)
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise ArtifactError(f"{where}: field '{prefix}sha256.{rel}' is not a sha256 hex digest")
        known = {
            "file",
            "backend",
            "precision",
            "devices",
            "inputs",
            "outputs",
            "sha256",
            "size_bytes",
            "optimization",
            "quantization",
            "verification",
            "note",
        }
        return cls(
            name=name,
            file=file,
            backend=f.text("backend", choices=BACKENDS),
            precision=f.text("precision", default="fp32", choices=PRECISIONS),
            devices=f.strings("devices", DEVICES, default=[]),
            inputs=f.strings("inputs", GRAPH_INPUTS, default=[]),
            outputs=f.strings("outputs", GRAPH_OUTPUTS, default=[]),
            sha256=digests,
            size_bytes=f.integer("size_bytes", default=None, minimum=1, nullable=True),
            optimization=f.text("optimization", default=None, choices=OPTIMIZATIONS, nullable=True),
            quantization=f.obj("quantization", default=None, nullable=True),
            verification=Verification.from_dict(data.get("verification"), where, prefix + "verification."),
            note=f.text("note", default=None, nullable=True),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict:
        out = {
            "file": self.file,
            "backend": self.backend,
            "precision": self.precision,
            "optimization": self.optimization,
            "quantization": self.quantization,
            "devices": list(self.devices),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "sha256": dict(self.sha256),
            "size_bytes": self.size_bytes,
            "verification": self.verification.to_dict() if self.verification else None,
        }
        out.update(self.extra)
        if self.note:
            out["note"] = self.note
        return out

    @property
    def passed(self) -> bool:
        """Verification passed at export."""
        return bool(self.verification and self.verification.passed)

    def files(self) -> list[str]:
        """The files this variant consists of, relative to the artifact: the graph first, then its weights
        (OpenVINO ``.bin``, ONNX external data), as the sha256 map records them."""
        out = [self.file]
        if self.backend == "openvino":
            out.append(str(PurePosixPath(self.file).with_suffix(".bin")))
        out += [rel for rel in self.sha256 if rel not in out]
        return out

    def fits(self, family: str) -> bool:
        """Whether this variant can run on a device family (see :func:`device_family`)."""
        if self.backend not in backends_for(family):
            return False
        # 'auto' and the ORT OpenVINO EP run whatever their backend reads; otherwise trust the list.
        return not self.devices or family in ("auto", "ort-openvino") or family in self.devices


@dataclass(frozen=True)
class EmbeddingCalibration:
    """``embedding_calibration``: the int8/uint8 output ranges saved with an embedding artifact
    (``stedge calibrate`` / ``stedge export --calibration``; read by stedge_runtime.quantization)."""

    file: str  # relative path of the float32 .npy of shape (2, dimension)
    sha256: str
    texts: int | None = None  # how many calibration texts the ranges come from
    variant: str | None = None  # the variant that embedded them (None: the PyTorch model at export)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EmbeddingCalibration:
        f = _Fields(data, where, "embedding_calibration.")
        digest = f.text("sha256")
        if not _HEX64.match(digest):
            raise f.fail("sha256", "64 lowercase hex digits")
        known = {fl.name for fl in fields(cls)} - {"extra"}
        return cls(
            file=check_relpath(f.text("file"), "embedding_calibration.file", where),
            sha256=digest,
            texts=f.integer("texts", default=None, minimum=1, nullable=True),
            variant=f.text("variant", default=None, nullable=True),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict:
        out = {"file": self.file, "sha256": self.sha256, "texts": self.texts, "variant": self.variant}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Manifest:
    """The typed ``stedge.json``. ``extra`` keeps fields this version does not know, so they survive."""

    task: str
    variants: Mapping[str, VariantRecord]
    tokenizer: str = "tokenizer.json"
    max_seq_length: int = 512
    do_lower_case: bool = False
    dimension: int | None = None
    pooling: Mapping[str, Any] | None = None
    normalize: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    num_labels: int | None = None
    activation: str | None = None
    default_variant: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    created_with: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    embedding_calibration: EmbeddingCalibration | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- reading
    @classmethod
    def read(cls, folder: str | os.PathLike, task: str | None = None) -> Manifest:
        """Read and validate ``folder/stedge.json``; ``task`` (embedding / reranking) must match when given."""
        root = Path(folder)
        file = root / MANIFEST
        if not root.is_dir():
            raise ArtifactError(f"{root} is not a folder: pass an artifact folder written by `stedge export`")
        try:
            st = file.stat()
            if not stat.S_ISREG(st.st_mode) or st.st_size > MANIFEST_LIMIT:
                raise ArtifactError(
                    f"{file} is not a regular file of at most {MANIFEST_LIMIT} bytes (a folder, a device "
                    "or a link to one): this artifact is damaged or hostile; re-export the model"
                )
            raw = file.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                f"{file} is missing: {root} is not a stedge artifact (run `stedge export` on the model)"
            ) from None
        except OSError as e:
            raise ArtifactError(f"{file} cannot be read ({e.strerror or e})") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ArtifactError(f"{file} is not valid JSON ({e}): re-export the model") from None
        m = cls.from_dict(data, str(file))
        if task is not None and m.task != task:
            other = "Reranker" if task == "embedding" else "Encoder"
            raise ArtifactError(f"{file}: field 'task' is {m.task!r}, expected {task!r} (load it with {other})")
        return m

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """The one validation, for reading and writing: a clear ArtifactError names the first bad field."""
        f = _Fields(data, where)
        version = f.integer("format_version", minimum=1)
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {version} is newer than this stedge_runtime reads ({FORMAT_VERSION}): "
                "upgrade stedge-runtime (pip install -U stedge-runtime)"
            )
        task = f.text("task", default="embedding", choices=TASKS)
        raw_variants = f.obj("variants")
        if not raw_variants:
            raise f.fail("variants", "at least one variant")
        variants = {}
        for name, v in raw_variants.items():
            parse_variant_name(name, where)
            variants[name] = VariantRecord.from_dict(name, v, where)
        default = f.text("default_variant", default=None, nullable=True)
        if default is not None and default not in variants:
            raise f.fail("default_variant", f"one of the variants ({', '.join(variants)})")
        if task == "embedding":
            dimension = f.integer("dimension", minimum=1)
        else:
            dimension = f.integer("dimension", default=None, minimum=1, nullable=True)
        prompts = f.obj("prompts", default={})
        if any(not isinstance(v, str) for v in prompts.values()):
            raise f.fail("prompts", "an object of prompt name -> prompt text")
        known = {fl.name for fl in fields(cls)} - {"extra"}
        return cls(
            format_version=version,
            task=task,
            variants=variants,
            tokenizer=check_relpath(f.text("tokenizer", default="tokenizer.json"), "tokenizer", where),
            max_seq_length=f.integer("max_seq_length", default=512, minimum=1),
            do_lower_case=f.get("do_lower_case", (bool,), "true or false", False),
            dimension=dimension,
            pooling=f.obj("pooling", default=None, nullable=True),
            normalize=f.get("normalize", (bool,), "true or false", False),
            prompts=prompts,
            default_prompt_name=f.text("default_prompt_name", default=None, nullable=True),
            similarity_fn_name=f.text(
                "similarity_fn_name",
                default=None,
                nullable=True,
                choices=SIMILARITY_FNS + ("cos_sim", "dot_product", "dot_score"),
            ),
            num_labels=f.integer("num_labels", default=None, minimum=1, nullable=True),
            activation=f.text("activation", default=None, nullable=True),
            default_variant=default,
            source=f.obj("source", default={}),
            created_with=f.obj("created_with", default={}),
            embedding_calibration=_calibration(f, where),
            extra={k: v for k, v in data.items() if k not in known},
        )

    # ---------------------------------------------------------------- writing
    def to_dict(self) -> dict:
        """The JSON form (what :func:`write_manifest` writes)."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "task": self.task,
            "source": dict(self.source),
            "tokenizer": self.tokenizer,
            "max_seq_length": self.max_seq_length,
            "do_lower_case": self.do_lower_case,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "dimension": self.dimension,
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
        }
        if self.task == "reranking":
            out["num_labels"] = self.num_labels
            out["activation"] = self.activation
        if self.embedding_calibration is not None:
            out["embedding_calibration"] = self.embedding_calibration.to_dict()
        out.update(self.extra)
        out["default_variant"] = self.default_variant
        out["variants"] = {n: v.to_dict() for n, v in self.variants.items()}
        out["created_with"] = dict(self.created_with)
        return out

    def with_variants(self, variants: Mapping[str, VariantRecord], default_variant: str | None = None) -> Manifest:
        """A copy holding ``variants`` (and ``default_variant`` when given, else the old one if still present)."""
        default = default_variant if default_variant is not None else self.default_variant
        return replace(self, variants=dict(variants), default_variant=default if default in variants else None)

    def variant(self, name: str, where: Path | str = MANIFEST) -> VariantRecord:
        """The variant called ``name``, or a clear error listing the ones there are."""
        if name not in self.variants:
            raise ArtifactError(f"{where}: unknown variant {name!r}; this artifact has: {', '.join(self.variants)}")
        return self.variants[name]


def _calibration(f: _Fields, where: str) -> EmbeddingCalibration | None:
    raw = f.obj("embedding_calibration", default=None, nullable=True)
    return None if raw is None else EmbeddingCalibration.from_dict(raw, where)


def _json_safe(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_manifest(folder: str | os.PathLike, manifest: Manifest | Mapping[str, Any]) -> Path:
    """Validate (the same check reading uses) and write ``folder/stedge.json`` atomically."""
    path = Path(folder) / MANIFEST
    data = _json_safe(manifest.to_dict() if isinstance(manifest, Manifest) else manifest)
    m = Manifest.from_dict(data, str(path))
    if m.default_variant is None:
        raise ArtifactError(f"{path}: field 'default_variant' is missing: name one of {', '.join(m.variants)}")
    unhashed = [n for n, v in m.variants.items() if not v.sha256 or v.file not in v.sha256]
    if unhashed:
        raise ArtifactError(
            f"{path}: variants {', '.join(unhashed)} carry no sha256 of their files; every variant "
            "written must, so that apps can check them"
        )
    text = json.dumps(_json_safe(m.to_dict()), indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{MANIFEST}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_artifact(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a valid stedge.json (never raises)."""
    try:
        Manifest.read(path)
        return True
    except (ArtifactError, OSError):
        return False


def has_manifest(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with a stedge.json file, valid or not (to route it to the runtime)."""
    return (Path(path) / MANIFEST).is_file()


# --------------------------------------------------------------------------- naming
@dataclass(frozen=True)
class VariantName:
    """``<backend>-<precision>[-<qualifier>][-O<n>]``: onnx-fp32-O3, onnx-int8-avx512_vnni, openvino-int8-static."""

    backend: str
    precision: str
    qualifier: str | None = None
    optimization: str | None = None

    def __str__(self) -> str:
        return variant_name(self.backend, self.precision, self.optimization, self.qualifier)


def variant_name(backend: str, precision: str, optimization: str | None = None, qualifier: str | None = None) -> str:
    """Build a variant name; :func:`parse_variant_name` reads it back."""
    if backend not in BACKENDS or precision not in PRECISIONS:
        raise ArtifactError(
            f"variant name: backend {backend!r} / precision {precision!r} unknown "
            f"(backends {', '.join(BACKENDS)}; precisions {', '.join(PRECISIONS)})"
        )
    if optimization is not None and optimization not in OPTIMIZATIONS:
        raise ArtifactError(f"variant name: optimization {optimization!r} is not one of {', '.join(OPTIMIZATIONS)}")
    if qualifier is not None and not all(_NAME_PART.match(p) for p in qualifier.split("-")):
        raise ArtifactError(f"variant name: qualifier {qualifier!r} may hold letters, digits, '_' and '-' only")
    return "-".join(p for p in (backend, precision, qualifier, optimization) if p)


def parse_variant_name(name: str, where: str = "variant name") -> VariantName:
    """Split a variant name into backend, precision, qualifier and optimization (clear error when malformed)."""
    parts = name.split("-") if isinstance(name, str) else []
    if (
        len(parts) < 2
        or parts[0] not in BACKENDS
        or parts[1] not in PRECISIONS
        or not all(map(_NAME_PART.match, parts))
    ):
        raise ArtifactError(
            f"{where}: variant {name!r} is not <backend>-<precision>[-<qualifier>][-O<n>] "
            f"(backend {' / '.join(BACKENDS)}, precision {' / '.join(PRECISIONS)}), e.g. onnx-fp32-O3, onnx-int8-static"
        )
    rest = parts[2:]
    opt = rest.pop() if rest and rest[-1] in OPTIMIZATIONS else None
    return VariantName(parts[0], parts[1], "-".join(rest) or None, opt)


# --------------------------------------------------------------------------- devices and selection
def device_family(device: str) -> str:
    """'cuda:1' -> 'cuda', 'GPU.1' -> 'gpu', 'AUTO:GPU,CPU' -> 'auto'."""
    d = device.strip().lower()
    for sep in (":", "."):
        d = d.split(sep, 1)[0]
    return d


def known_device_family(device: Any) -> str:
    """The family of ``device`` (``device_family``), or DeviceError naming the devices the runtime knows."""
    known = tuple(dict.fromkeys(ONNX_DEVICES + OPENVINO_DEVICES))
    family = device_family(device) if isinstance(device, str) else None
    if family not in known:
        raise DeviceError(
            f"device {device!r} is not one stedge_runtime knows; use one of: {', '.join(known)} (':N' / '.N' "
            "picks an index)"
        )
    return family


def backends_for(family: str) -> tuple[str, ...]:
    """Variant backends that can serve a device family (onnx first on the CPU)."""
    out = []
    if family in ONNX_DEVICES:
        out.append("onnx")
    if family in OPENVINO_DEVICES:
        out.append("openvino")
    return tuple(out)


def choose_variant(
    m: Manifest,
    family: str,
    name: str | None,
    installed: set[str],
    where: Path | str = MANIFEST,
    tier: str | None = None,
) -> str:
    """The variant to run on a device family: ``name`` when given (checked to fit), else the fastest variant
    of precision ``tier`` for this machine. The rule (tiers, batch invariance, this machine's tuning profile,
    CPU flags) is ``stedge_runtime.select.select_variant``; this returns only the name."""
    from .select import select_variant

    root = Path(where).parent if str(where).endswith(MANIFEST) else Path(where)
    file = root / MANIFEST
    return select_variant(m.variants, family, name, installed, root, tier=tier, where=str(file)).variant


# --------------------------------------------------------------------------- integrity
_cache_lock = threading.Lock()
_verified: set[tuple] = set()


def cache_dir() -> Path:
    """The runtime's folder in the user's cache: $STEDGE_RUNTIME_CACHE, else $XDG_CACHE_HOME/stedge-runtime, else
    %LOCALAPPDATA%\\stedge-runtime on Windows, else ~/.cache/stedge-runtime (the sha256 cache; tuning profiles of
    read-only artifacts, stedge_runtime.profile)."""
    if os.environ.get("STEDGE_RUNTIME_CACHE"):
        return Path(os.environ["STEDGE_RUNTIME_CACHE"])
    local = os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else None
    return Path(os.environ.get("XDG_CACHE_HOME") or local or os.path.expanduser("~/.cache"), "stedge-runtime")


def _cache_file() -> Path:
    return cache_dir() / "sha256.json"


def _sha256(path: Path, limit: int | None) -> str:
    h = hashlib.sha256()
    read = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            read += len(block)
            if limit is not None and read > limit:
                raise ArtifactError(f"{path}: larger than the {limit} bytes its manifest records; re-export the model")
            h.update(block)
    return h.hexdigest()


def check_variant_files(root: Path, v: VariantRecord, verify: bool | str = "cached") -> list[Path]:
    """Check that every file of ``v`` is a regular file inside the artifact and (unless ``verify=False``)
    matches its sha256; return the files, graph first.

    ``verify="cached"`` hashes a file once and then trusts it while its path, size, inode, mtime
    and ctime are unchanged (remembered in sha256.json in ``cache_dir()``, which
    $STEDGE_RUNTIME_CACHE moves). The kernel sets ctime on every write and no program can set it back,
    so rewriting a file, even one that restores its mtime, makes the next load hash it again.
    ``True`` always hashes; ``False`` skips the hashes (paths are still confined to the artifact).
    """
    where = f"{MANIFEST} variants.{v.name}"
    files = []
    for rel in v.files():
        label = f"{where}.file" if rel == v.file else f"{where}.sha256"
        path = artifact_path(root, rel, label)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ArtifactError(f"{path} is missing ({label}): re-export the model or restore the file") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} ({where}) is not a regular file: restore it from the export")
        files.append(path)
    if not verify:
        return files
    if not v.sha256:
        raise ArtifactError(
            f"{root / MANIFEST}: variants.{v.name}.sha256 is missing, so its files cannot be checked; re-export the "
            "model, or load with verify=False (CLI: --no-verify) to run it unchecked"
        )
    limit = v.size_bytes
    for rel, expected in v.sha256.items():
        path = artifact_path(root, rel, f"{where}.sha256")
        if not path.is_file():
            raise ArtifactError(f"{path} is missing ({where}.sha256): re-export the model or restore the file")
        _check_one(path, expected, f"{where}.sha256", verify, limit)
    return files


def check_calibration_file(root: Path, cal: EmbeddingCalibration, verify: bool | str = "cached") -> Path:
    """The embedding calibration file, kept inside the artifact and (unless ``verify=False``) checked
    against its sha256 like the variant files; a missing file is a clear error."""
    label = f"{MANIFEST} embedding_calibration.file"
    path = artifact_path(root, cal.file, "embedding_calibration.file")
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing ({label}): run `stedge calibrate {root} --texts FILE` again or restore the file"
        )
    if verify:
        _check_one(path, cal.sha256, f"{MANIFEST} embedding_calibration.sha256", verify, None)
    return path


def _check_one(path: Path, expected: str, field_name: str, verify: bool | str, limit: int | None) -> None:
    st = path.stat()
    if limit is not None and st.st_size > limit:
        raise ArtifactError(
            f"{path}: {st.st_size} bytes, more than all files of {field_name} together ({limit}): "
            "the file changed after export; export the model again or restore the file"
        )
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, expected)
    cache_key = "|".join(map(str, key))
    if verify == "cached":
        if key in _verified:
            return
        try:
            if json.loads(_cache_file().read_text()).get(cache_key):
                _verified.add(key)
                return
        except (OSError, ValueError):
            pass
    actual = _sha256(path, limit)
    if actual != expected:
        raise ArtifactError(
            f"{path}: sha256 {actual[:16]}... does not match {field_name} ({expected[:16]}...): the file changed "
            "after export; export the model again or restore the file"
        )
    _verified.add(key)
    if verify == "cached":
        _remember(cache_key)


def _remember(cache_key: str) -> None:
    file = _cache_file()
    with _cache_lock:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                data = {}
            data[cache_key] = True
            if len(data) > 500:  # keep the cache small: drop the oldest entries
                data = dict(list(data.items())[-500:])
            fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".sha256-")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, file)
        except OSError:  # a read-only home only costs a re-hash next time
            pass
