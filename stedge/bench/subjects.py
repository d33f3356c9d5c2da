"""What gets measured: one class per kind of subject.

A subject is described by a small JSON-able ``spec`` (the parent builds it, the worker rebuilds the
subject from it with :func:`from_spec`). In the parent, ``unavailable()`` says why a subject cannot
run here (missing library, no GPU, missing artifact variant) and ``size_bytes()`` gives what it
loads from disk; in the worker, ``load(threads)`` returns an ``encode(texts, batch_size)`` callable
that gives float32 numpy embeddings in input order. A subject of task ``reranking`` (a cross-encoder
model) gets (query, passage) pairs instead of texts and returns one score per pair (the activation applied):
stedge's ``CrossEncoder``, ``stedge_runtime.Reranker``, sentence-transformers' ``CrossEncoder`` and
fastembed's ``TextCrossEncoder`` in place of the embedding classes, the same kinds otherwise.

Kinds:

* ``stedge-torch``: ``stedge.SentenceEncoder`` in fp32; fp16 / bf16 with the weights cast on CUDA, bf16 autocast on CPU.
* ``runtime``: ``stedge_runtime.Encoder`` over one variant of an artifact (ONNX Runtime on cpu / cuda /
  tensorrt, OpenVINO on cpu).
* ``st``: sentence-transformers' own ``SentenceTransformer`` with backend torch, onnx or openvino (the peers).
* ``fastembed``: fastembed's ``TextEmbedding`` over the artifact's onnx-fp32 graph (a peer).
* ``runtime`` with ``variant="auto:<tier>"``: what ``Encoder.load(path, tier=...)`` picks on this machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np

EncodeFn = Callable[[list[Any], int], np.ndarray]

TASKS = ("embedding", "reranking")  # as stedge.hub.detect_task and the manifest name them

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def with_tokenize(encode: EncodeFn, tokenize: Callable[[list[Any]], Any]) -> EncodeFn:
    """``encode`` with ``tokenize`` attached: the subject's own tokenization of a list of texts (pairs for a
    reranker), run as its encode call runs it; the worker times it on the batch-1 queries so a run says what
    share of a query's latency is tokenizing (worker.run_job, step 3)."""
    encode.tokenize = tokenize  # type: ignore[attr-defined]
    return encode


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _device_family(device: str) -> str:
    from stedge_runtime.artifact import device_family

    return device_family(device)


def _cuda_problem(device: str) -> str | None:
    """Why a CUDA device cannot be used (None when it can, or when ``device`` is not CUDA)."""
    if _device_family(device) not in ("cuda", "tensorrt"):
        return None
    from .machine import cuda_available

    return None if cuda_available() else f"device {device!r} needs a CUDA GPU; torch.cuda.is_available() is False here"


def _ort_provider_problem(device: str) -> str | None:
    family = _device_family(device)
    need = {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }.get(family)
    if need is None:
        return None
    from .machine import ort_providers

    have = ort_providers()
    return (
        None
        if need in have
        else f"onnxruntime has no {need} (installed: {', '.join(have) or 'none'}; pip install onnxruntime-gpu)"
    )


def engine_problem(variant: str, device: str) -> str | None:
    """Why no engine installed here can run the artifact variant named ``variant`` on ``device`` (None when one
    can): onnxruntime and its provider for the device for ``onnx-*``, OpenVINO on the CPU for ``openvino-*``."""
    backend = variant.split("-", 1)[0]
    if backend == "onnx":
        if not _have("onnxruntime"):
            return "onnxruntime is not installed"
        return _cuda_problem(device) or _ort_provider_problem(device)
    if backend == "openvino":
        if not _have("openvino"):
            return "openvino is not installed"
        if _device_family(device) != "cpu":
            return f"OpenVINO variants are measured on the CPU only (device {device!r})"
    return None


def _weights_size(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        if f.name in WEIGHT_FILES or (f.suffix == ".safetensors" and f.is_file()):
            total += f.stat().st_size
    return total


def graph_files(file: Path) -> list[Path]:
    """A graph file and the weights that go with it (OpenVINO .bin, ONNX external data)."""
    files = [file]
    if file.suffix == ".xml":
        files.append(file.with_suffix(".bin"))
    for ext in ("_data", ".data"):
        cand = file.with_name(file.name + ext)
        if cand.exists():
            files.append(cand)
    return [f for f in files if f.exists()]


class Subject:
    """Base class: a thing that embeds texts and can be measured."""

    kind = ""
    is_peer = False
    is_reference = False
    python: str | None = None  # the interpreter its worker runs in (None: the harness's own, sys.executable)

    def __init__(self, model: str, path: str, device: str = "cpu", task: str = "embedding") -> None:
        if task not in TASKS:
            raise ValueError(f"subject task must be one of {', '.join(TASKS)}, got {task!r}")
        self.model = model  # the suite's name for the model
        self.path = str(path)  # model or artifact folder
        self.device = device
        self.task = task  # reranking: the items are (query, passage) pairs and the outputs scores

    # -------------------------------------------------------------- parent side
    @property
    def label(self) -> str:
        """Short name used in tables and plots."""
        raise NotImplementedError

    @property
    def id(self) -> str:
        """Unique key within a run: model/label@device."""
        return f"{self.model}/{self.label}@{self.device}"

    def facts(self) -> dict[str, Any]:
        """Backend, precision and optimization for the results row."""
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """Why this subject cannot run on this machine, or None."""
        return None

    def size_bytes(self) -> int:
        """Bytes loaded from disk (weights or graph files)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """JSON-able description the worker rebuilds the subject from."""
        task = {} if self.task == "embedding" else {"task": self.task}
        spec = {"kind": self.kind, "model": self.model, "path": self.path, "device": self.device}
        return {**spec, **task, **self._extra()}

    def _extra(self) -> dict[str, Any]:
        return {}

    # -------------------------------------------------------------- worker side
    def load(self, threads: int) -> EncodeFn:
        """Load the model (in the worker process) and return its encode function."""
        raise NotImplementedError


class StedgeTorch(Subject):
    """stedge's PyTorch SentenceEncoder; fp16/bf16: weights cast to that dtype on CUDA, bf16 autocast on the CPU.
    A reranker: stedge's CrossEncoder, fp32 only (its ``predict`` takes no compute dtype)."""

    kind = "stedge-torch"

    def __init__(
        self, model: str, path: str, device: str = "cpu", precision: str = "fp32", task: str = "embedding"
    ) -> None:
        super().__init__(model, path, device, task)
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"stedge-torch precision must be fp32, fp16 or bf16, got {precision!r}")
        self.precision = precision

    @property
    def is_reference(self) -> bool:  # type: ignore[override]
        return self.precision == "fp32"

    @property
    def label(self) -> str:
        return f"stedge torch {self.precision}"

    def facts(self) -> dict[str, Any]:
        return {"backend": "torch", "precision": self.precision, "optimization": None, "engine": "torch"}

    def _extra(self) -> dict[str, Any]:
        return {"precision": self.precision}

    def unavailable(self) -> str | None:
        if not _have("torch"):
            return "torch is not installed"
        if self.task == "reranking" and self.precision != "fp32":
            return f"stedge's CrossEncoder runs in fp32 only (its predict has no compute dtype), not {self.precision}"
        if self.precision == "fp16" and _device_family(self.device) == "cpu":
            return "fp16 autocast needs a GPU"
        return _cuda_problem(self.device)

    def size_bytes(self) -> int:
        return _weights_size(Path(self.path))

    def load(self, threads: int) -> EncodeFn:
        import torch

        torch.set_num_threads(threads)
        if self.task == "reranking":
            return self._load_cross_encoder()
        from stedge import SentenceEncoder

        enc = SentenceEncoder(self.path, device=self.device)
        dtype: str | None = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.precision]
        cuda = _device_family(self.device) == "cuda"
        if cuda and self.precision != "fp32":  # on a GPU the weights themselves go to fp16 / bf16 (as
            enc.to(getattr(torch, dtype))  # sentence-transformers' .half()): autocast ran 0.77x fp32 at bs 128
            dtype = None

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            out = enc.encode(texts, batch_size=batch_size, dtype=dtype, show_progress_bar=False)
            if cuda:
                torch.cuda.synchronize()
            return out

        return with_tokenize(encode, enc.tokenize)

    def _load_cross_encoder(self) -> EncodeFn:
        """stedge's CrossEncoder in fp32: ``predict(pairs, batch_size)`` -> float32 scores (activation applied)."""
        import torch

        from stedge.models import CrossEncoder

        model = CrossEncoder(self.path, device=self.device)
        cuda = _device_family(self.device) == "cuda"

        def predict(pairs: list[Any], batch_size: int) -> np.ndarray:
            out = model.predict([(a, b) for a, b in pairs], batch_size=batch_size)
            if cuda:
                torch.cuda.synchronize()
            return np.asarray(out, dtype=np.float32)

        return with_tokenize(predict, lambda pairs: model.tokenize([(a, b) for a, b in pairs]))


def parse_auto(spec: str) -> tuple[str, float | None]:
    """A suite's ``auto`` entry: ``"<tier>"`` or ``"<tier>@<MB>"`` (Encoder.load's ``max_memory_mb``) ->
    (tier, MB or None). Raises ValueError saying what is expected."""
    from stedge_runtime.select import TIERS

    tier, at, mb = str(spec).partition("@")
    try:
        budget = float(mb) if at else None
    except ValueError:
        budget = -1.0
    if tier not in TIERS or (budget is not None and not budget > 0):
        raise ValueError(
            f"auto entry {spec!r}: expected a tier ({', '.join(TIERS)}), optionally with a memory budget in MB "
            "after '@' (near@300)"
        )
    return tier, budget


class RuntimeVariant(Subject):
    """One variant of an artifact through the torch-free stedge_runtime.Encoder (a reranker's: Reranker).

    ``variant="auto:<tier>"`` measures what ``Encoder.load(path, tier=<tier>)`` chooses on this machine
    (the tuning profile, else the rule; see stedge_runtime.select); the label names the chosen variant.
    ``"auto:<tier>@<MB>"`` adds ``max_memory_mb=<MB>`` (the fastest configuration that peaked within it in
    `stedge tune`'s memory probe).
    """

    kind = "runtime"

    def __init__(
        self, model: str, path: str, device: str = "cpu", variant: str = "onnx-fp32", task: str = "embedding"
    ) -> None:
        super().__init__(model, path, device, task)
        self.variant = variant

    @property
    def tier(self) -> str | None:
        """The tier of an auto subject (None for a named variant)."""
        return parse_auto(self.variant[5:])[0] if self.variant.startswith("auto:") else None

    @property
    def max_memory_mb(self) -> float | None:
        """The memory budget of an auto subject (None: none, or a named variant)."""
        return parse_auto(self.variant[5:])[1] if self.variant.startswith("auto:") else None

    def _manifest(self) -> Any:
        """The artifact's typed manifest (None when it cannot be read)."""
        from stedge_runtime.artifact import Manifest
        from stedge_runtime.errors import ArtifactError

        try:
            return Manifest.read(self.path)
        except ArtifactError:
            return None

    def selection(self) -> dict[str, Any] | None:
        """What Encoder.load chooses for an auto subject on this machine (the parent's view), else None."""
        if self.tier is None or not _have("stedge_runtime"):
            return None
        from stedge_runtime.engines import installed_backends
        from stedge_runtime.errors import RuntimeStedgeError
        from stedge_runtime.select import select_variant

        m = self._manifest()
        if m is None:
            return {"error": f"{self.path}: no readable stedge.json"}
        try:
            return select_variant(
                m.variants,
                _device_family(self.device),
                None,
                installed_backends(),
                self.path,
                tier=self.tier,
                max_memory_mb=self.max_memory_mb,
            ).to_dict()
        except RuntimeStedgeError as e:
            return {"error": str(e)}

    def _name(self) -> str | None:
        if self.tier is None:
            return self.variant
        return (self.selection() or {}).get("variant")

    def _manifest_variant(self) -> dict[str, Any] | None:
        name, m = self._name(), self._manifest()
        v = None if name is None or m is None else m.variants.get(name)
        return v.to_dict() if v else None

    @property
    def label(self) -> str:
        where = "" if _device_family(self.device) == "cpu" else f" ({_device_family(self.device)})"
        if self.tier is not None:
            sel = self.selection() or {}
            chosen = sel.get("variant") or "none"
            if sel.get("latency_variant"):
                chosen += f", bs=1: {sel['latency_variant']}"
            budget = "" if self.max_memory_mb is None else f" <= {self.max_memory_mb:g} MB"
            return f"stedge auto {self.tier}{budget} ({chosen}){where}"
        inv = invariance_of(self._manifest_variant())
        flag = " (not batch-invariant)" if inv is not None and inv < 0.999 else ""
        return f"stedge {self.variant}{where}{flag}"

    def facts(self) -> dict[str, Any]:
        v = self._manifest_variant() or {}
        name = self._name() or self.variant
        backend = v.get("backend") or name.split("-", 1)[0]
        engine = "onnxruntime" if backend == "onnx" else backend
        ver = v.get("verification") or {}
        out = {
            "backend": backend,
            "precision": v.get("precision"),
            "optimization": v.get("optimization"),
            "quantization": v.get("quantization"),
            "engine": engine,
            "verification": v.get("verification"),
            "variant": name,
            "tier": ver.get("tier"),
            "batch_invariance_min_cos": invariance_of(v),
        }
        if self.tier is not None:
            sel = self.selection()
            out.update(auto_tier=self.variant[5:], selection=sel)  # "near", or "near@300" with a budget
            m, route = self._manifest(), (sel or {}).get("latency_variant")
            v = m.variants.get(route) if m is not None and route else None
            if v is not None:  # batch-1 calls run another variant: they read its weights, at its precision
                out["batch1_precision"] = v.precision
        return out

    def _extra(self) -> dict[str, Any]:
        return {"variant": self.variant}

    def unavailable(self) -> str | None:
        if not _have("stedge_runtime"):
            return "stedge_runtime is not installed (pip install -e runtimes/python)"
        if self.tier is not None:
            if _device_family(self.device) != "cpu":  # the runtime runs ONNX graphs there: its provider first
                why = _cuda_problem(self.device) or _ort_provider_problem(self.device)
                if why:
                    return why
            sel = self.selection() or {}
            return f"nothing to choose at tier {self.tier}: {sel['error']}" if "error" in sel else None
        why = engine_problem(self.variant, self.device)
        if why:
            return why
        v = self._manifest_variant()
        if v is None:
            return f"{self.path}/stedge.json has no variant {self.variant!r}"
        devices = [str(d).lower() for d in v.get("devices") or []]
        if devices and _device_family(self.device) not in devices:
            return f"the manifest lists variant {self.variant!r} for {', '.join(devices)} only, not {self.device!r}"
        return None

    def size_bytes(self) -> int:
        v = self._manifest_variant() or {}
        if not v.get("file"):
            return 0
        return sum(f.stat().st_size for f in graph_files(Path(self.path) / v["file"]))

    def load(self, threads: int) -> EncodeFn:
        import warnings

        from stedge_runtime.encoder import Encoder, Reranker

        cls = Reranker if self.task == "reranking" else Encoder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            if self.tier is not None:
                enc = cls.load(
                    self.path, tier=self.tier, device=self.device, threads=threads, max_memory_mb=self.max_memory_mb
                )
            else:
                enc = cls.load(self.path, variant=self.variant, device=self.device, threads=threads)
        run = enc.predict if self.task == "reranking" else enc.encode
        engine = enc._latency_engine or enc._engine  # what a one-text call runs on (Encoder._run)
        type_ids = "token_type_ids" in engine.inputs

        def encode(texts: list[Any], batch_size: int) -> np.ndarray:
            return run(texts, batch_size=batch_size)

        def tokenize(items: list[Any]) -> Any:  # the runtime's one-text path for one item, its batch path else
            return enc._tok.one(items[0], type_ids) if len(items) == 1 else enc._tok.tokens(items, type_ids)

        encode.info = {
            "selection": enc.selection.to_dict(),  # type: ignore[attr-defined]
            "max_batch_tokens": enc.max_batch_tokens,  # type: ignore[attr-defined]  (named: the device default)
            "warnings": [str(w.message) for w in caught],
        }
        return with_tokenize(encode, tokenize)


def invariance_of(v: dict[str, Any] | None) -> float | None:
    """``verification.batch_invariance_min_cos`` of a manifest variant (None: not measured)."""
    val = ((v or {}).get("verification") or {}).get("batch_invariance_min_cos")
    return float(val) if isinstance(val, (int, float)) else None


class FastEmbedPeer(Subject):
    """fastembed's TextEmbedding over the artifact's onnx-fp32 graph (pooling and Normalize inside it).

    Registered with ``TextEmbedding.add_custom_model(pooling=DISABLED, normalization=False,
    output_name="sentence_embedding")`` and loaded from the artifact folder (``specific_model_path``);
    its tokenizer truncates at the artifact's ``max_seq_length`` like every other subject.

    A reranker: fastembed's ``TextCrossEncoder`` over the same graph (``add_custom_model``, ``specific_model_path``,
    ``rerank_pairs``). It reads the graph's first output, the raw ``logits``, and applies no activation, so the
    artifact's activation (sigmoid or none) is applied to its scores here, as a user comparing scores would.
    """

    kind = "fastembed"
    is_peer = True
    FILE = "onnx/model.onnx"

    @property
    def label(self) -> str:
        return "fastembed onnx"

    def facts(self) -> dict[str, Any]:
        return {"backend": "onnx", "precision": "fp32", "optimization": None, "engine": "onnxruntime (fastembed)"}

    def unavailable(self) -> str | None:
        if not _have("fastembed"):
            return "fastembed is not installed (pip install 'stedge[bench]')"
        if _device_family(self.device) != "cpu":
            return "the fastembed peer is measured on the CPU only"
        if not (Path(self.path) / self.FILE).exists():
            return f"{self.path} has no {self.FILE} (the suite needs the onnx-fp32 variant for fastembed)"
        if self.task == "reranking":
            from stedge_runtime.artifact import Manifest

            m = Manifest.read(self.path)
            if int(m.num_labels or 1) != 1 or m.activation not in (None, "sigmoid"):
                return (
                    f"fastembed's TextCrossEncoder reads one raw logit per pair; {self.path} has {m.num_labels} "
                    f"label(s) and activation {m.activation!r} (only one label, sigmoid or none, compares)"
                )
        return None

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in graph_files(Path(self.path) / self.FILE))

    def load(self, threads: int) -> EncodeFn:
        if self.task == "reranking":
            return self._load_cross_encoder(threads)
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType
        from stedge_runtime.artifact import Manifest

        m = Manifest.read(self.path)
        name = f"stedge-bench/{Path(self.path).name}"
        if name.lower() not in {d["model"].lower() for d in TextEmbedding.list_supported_models()}:
            TextEmbedding.add_custom_model(
                name,
                pooling=PoolingType.DISABLED,
                normalization=False,
                sources=ModelSource(hf=name),
                dim=int(m.dimension or 0),
                model_file=self.FILE,
                output_name="sentence_embedding",
            )
        model = TextEmbedding(name, specific_model_path=self.path, threads=threads, local_files_only=True)
        model.model.tokenizer.enable_truncation(max_length=int(m.max_seq_length or 512))

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            return np.stack(list(model.embed(texts, batch_size=batch_size))).astype(np.float32, copy=False)

        return with_tokenize(encode, model.model.tokenizer.encode_batch)

    def _load_cross_encoder(self, threads: int) -> EncodeFn:
        """fastembed's TextCrossEncoder over the artifact's onnx-fp32 graph: ``rerank_pairs`` -> scores, the artifact's
        activation applied (fastembed returns the graph's raw logits)."""
        from fastembed.common.model_description import ModelSource
        from fastembed.rerank.cross_encoder import TextCrossEncoder
        from stedge_runtime.artifact import Manifest

        m = Manifest.read(self.path)
        name = f"stedge-bench/{Path(self.path).name}"
        if name.lower() not in {d["model"].lower() for d in TextCrossEncoder.list_supported_models()}:
            TextCrossEncoder.add_custom_model(name, sources=ModelSource(hf=name), model_file=self.FILE)
        model = TextCrossEncoder(name, specific_model_path=self.path, threads=threads, local_files_only=True)
        model.model.tokenizer.enable_truncation(max_length=int(m.max_seq_length or 512))
        sigmoid = m.activation == "sigmoid"

        def predict(pairs: list[Any], batch_size: int) -> np.ndarray:
            logits = np.fromiter(model.rerank_pairs([(a, b) for a, b in pairs], batch_size=batch_size), np.float32)
            return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32) if sigmoid else logits

        return with_tokenize(predict, lambda pairs: model.model.tokenizer.encode_batch([(a, b) for a, b in pairs]))


class STPeer(Subject):
    """sentence-transformers' SentenceTransformer with backend torch, onnx or openvino.

    ``path`` is the model folder; for onnx/openvino it must hold the exported graph
    (``onnx/model.onnx`` or ``openvino/openvino_model.xml``), which the runner prepares once with
    sentence-transformers' own export (see runner.prepare_peer) so loading never re-exports.
    ``python`` (``stedge bench --peer-python``) runs the subject in another interpreter: availability is
    that interpreter's probe (stedge.bench.peer), and the label and facts name the versions it has.
    A reranker: sentence-transformers' ``CrossEncoder`` with the same backends and files (``predict`` -> scores).
    """

    kind = "st"
    is_peer = True
    FILES = {"onnx": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}

    def __init__(
        self,
        model: str,
        path: str,
        device: str = "cpu",
        backend: str = "torch",
        precision: str = "fp32",
        python: str | None = None,
        task: str = "embedding",
    ) -> None:
        super().__init__(model, path, device, task)
        if backend not in ("torch", "onnx", "openvino"):
            raise ValueError(f"sentence-transformers backend must be torch, onnx or openvino, got {backend!r}")
        self.backend = backend
        self.precision = precision
        self.python = python

    def _probe(self) -> dict[str, Any] | None:
        """The peer interpreter's probe for this backend (None without a peer interpreter)."""
        if self.python is None:
            return None
        from .peer import probe

        return probe(self.python, self.backend)

    @property
    def label(self) -> str:
        extra = "" if self.precision == "fp32" else f" {self.precision}"
        from .peer import short_version

        ver = short_version(((self._probe() or {}).get("versions") or {}).get("sentence-transformers"))
        return f"sentence-transformers{' ' + ver if ver else ''} {self.backend}{extra}"

    def facts(self) -> dict[str, Any]:
        engine = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}[self.backend]
        out: dict[str, Any] = {
            "backend": self.backend,
            "precision": self._arithmetic(),
            "optimization": None,
            "engine": engine,
        }
        pr = self._probe()
        if pr is not None:
            out.update(python=self.python, python_version=pr.get("python_version"), peer_versions=pr.get("versions"))
        return out

    def _arithmetic(self) -> str:
        """The precision the engine computes in: OpenVINO's CPU plugin runs an fp32 model in bf16 by default
        where the CPU has avx512_bf16 or AMX (so its share of the GEMM peak is against the bf16 peak)."""
        if self.backend == "openvino" and self.precision == "fp32" and _device_family(self.device) == "cpu":
            from stedge_runtime.machine import has_bf16

            if has_bf16():
                return "bf16"
        return self.precision

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"backend": self.backend, "precision": self.precision}
        if self.python is not None:
            extra["python"] = self.python
        return extra

    def unavailable(self) -> str | None:
        pr = self._probe()
        if pr is not None and not pr["ok"]:
            return pr["reason"]
        if pr is None and not _have("sentence_transformers"):
            return "sentence-transformers is not installed"
        fam = _device_family(self.device)
        if self.backend == "onnx":
            if pr is None and not (_have("onnxruntime") and _have("optimum")):
                return "sentence-transformers' ONNX backend needs optimum-onnx and onnxruntime"
            if pr is not None:
                return self._peer_device_problem(pr, fam)
            return _cuda_problem(self.device) or _ort_provider_problem(self.device)
        if self.backend == "openvino":
            if fam != "cpu":  # whatever is installed: the device rules it out first
                return "the OpenVINO peer is measured on the CPU only"
            if pr is None and not _have("optimum.intel"):
                return "sentence-transformers' OpenVINO backend needs optimum-intel"
            return None
        if self.precision == "fp16" and fam == "cpu":
            return "fp16 needs a GPU"
        return self._peer_device_problem(pr, fam) if pr is not None else _cuda_problem(self.device)

    def _peer_device_problem(self, pr: dict[str, Any], fam: str) -> str | None:
        """A CUDA device the peer interpreter cannot use (its torch / onnxruntime, as probed)."""
        if fam not in ("cuda", "tensorrt"):
            return None
        if not pr.get("cuda"):
            return f"device {self.device!r} needs a CUDA GPU; torch in peer python {self.python} sees none"
        if self.backend == "onnx" and "CUDAExecutionProvider" not in (pr.get("providers") or []):
            return f"onnxruntime in peer python {self.python} has no CUDAExecutionProvider"
        return None

    def size_bytes(self) -> int:
        p = Path(self.path)
        if self.backend == "torch":
            return _weights_size(p)
        return sum(f.stat().st_size for f in graph_files(p / self.FILES[self.backend]))

    def load(self, threads: int) -> EncodeFn:
        import torch

        torch.set_num_threads(threads)
        from sentence_transformers import CrossEncoder, SentenceTransformer

        kwargs: dict[str, Any] = {}
        fam = _device_family(self.device)
        if self.backend == "onnx":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            kwargs = {
                "file_name": self.FILES["onnx"],
                "session_options": so,
                "provider": "CUDAExecutionProvider" if fam == "cuda" else "CPUExecutionProvider",
            }
        elif self.backend == "openvino":
            kwargs = {"file_name": self.FILES["openvino"], "ov_config": {"INFERENCE_NUM_THREADS": threads}}
        device = self.device if self.backend == "torch" or fam == "cuda" else "cpu"
        cls = CrossEncoder if self.task == "reranking" else SentenceTransformer
        model = cls(self.path, backend=self.backend, device=device, model_kwargs=kwargs or None, local_files_only=True)
        if self.precision == "fp16":
            model.half()
        elif self.precision == "bf16":
            model.bfloat16()
        cuda = fam == "cuda" and self.backend == "torch"
        opts = {"convert_to_numpy": True, "show_progress_bar": False}
        reranking = self.task == "reranking"

        def encode(texts: list[Any], batch_size: int) -> np.ndarray:
            if reranking:  # scores of (query, passage) pairs, the model's activation applied
                out = model.predict([(a, b) for a, b in texts], batch_size=batch_size, **opts)
            else:
                out = model.encode(texts, batch_size=batch_size, **opts)
            if cuda:
                torch.cuda.synchronize()
            return np.asarray(out, dtype=np.float32)

        prepare = getattr(model, "preprocess", None) or model.tokenize  # what encode / predict call per batch

        def tokenize(items: list[Any]) -> Any:
            return prepare([(a, b) for a, b in items] if reranking else items)

        return with_tokenize(encode, tokenize)


KINDS: dict[str, type[Subject]] = {c.kind: c for c in (StedgeTorch, RuntimeVariant, STPeer, FastEmbedPeer)}


def from_spec(spec: dict[str, Any]) -> Subject:
    """Rebuild a subject from ``Subject.spec()``."""
    spec = dict(spec)
    cls = KINDS[spec.pop("kind")]
    return cls(**spec)
