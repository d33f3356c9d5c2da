"""The two engines: ONNX Runtime (CPU, CUDA, TensorRT, OpenVINO EP) and OpenVINO (CPU, GPU, NPU, AUTO).

Both expose ``inputs`` (graph input names), ``outputs``, ``device`` (what actually runs) and
``run(feeds, output) -> np.ndarray``; ``run`` is safe to call from many threads at once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import machine
from .artifact import cache_dir, device_family
from .errors import DeviceError, MissingEngine, RuntimeStedgeError

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "ort-openvino": "OpenVINOExecutionProvider",
}


def installed_backends() -> set[str]:
    """Variant backends whose engine is importable (checked without importing it)."""
    out = set()
    if importlib.util.find_spec("onnxruntime") is not None:
        out.add("onnx")
    if importlib.util.find_spec("openvino") is not None:
        out.add("openvino")
    return out


def _import(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingEngine(module, extra) from None


def _device_index(device: str) -> int:
    _, _, idx = device.partition(":")
    try:
        return int(idx) if idx else 0
    except ValueError:
        raise DeviceError(f"device {device!r}: expected an integer index after ':' (e.g. 'cuda:1')") from None


_cuda_libraries_loaded = False


def _load_cuda_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries of pip's nvidia-* packages once, before the first CUDA/TensorRT session.

    onnxruntime-gpu's CUDA provider links against libcudart/libcublas/libcudnn but, installed by pip, finds them only
    on LD_LIBRARY_PATH or after ``import torch``; ``onnxruntime.preload_dlls`` (1.21+) loads them from the nvidia
    packages. What it prints goes to stderr, so ``--json`` output stays clean.
    """
    global _cuda_libraries_loaded
    if _cuda_libraries_loaded or not hasattr(ort, "preload_dlls"):
        return
    _cuda_libraries_loaded = True
    with contextlib.redirect_stdout(sys.stderr):
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as e:  # the session start then says which provider could not start
            print(f"onnxruntime.preload_dlls: {e}", file=sys.stderr)


def _check_options(given: dict, allowed: tuple[str, ...], engine: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise RuntimeStedgeError(f"unknown {engine} option(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")


class OrtEngine:
    """ONNX Runtime session with options chosen for varying batch shapes.

    Defaults: ``intra_op_num_threads`` = ``threads``, else the CPU quota's where a container's limit binds
    (``machine.quota_threads``), else 0 (ORT takes the physical cores), one
    inter-op thread, all graph optimizations, ``enable_mem_pattern=False`` (a memory pattern is
    planned per input shape and batches vary in shape), and the CPU memory arena on: it reuses
    buffers across ops and calls, where plain malloc page-faults fresh ones (MiniLM, 2 threads:
    +10-25% sentences/s, peak RSS 226 MB instead of 384 MB, RSS flat over 20k calls of varying length).
    On CUDA and TensorRT inputs and outputs go through IO binding and only the requested output is
    copied back to the host.
    """

    OPTIONS = (
        "graph_optimization_level",
        "enable_cpu_mem_arena",
        "enable_mem_pattern",
        "inter_op_num_threads",
        "allow_spinning",
        "provider_options",
        "session_config",
        "log_severity_level",
    )

    def __init__(
        self, file: Path, device: str, precision: str | None, threads: int | None, options: dict[str, Any]
    ) -> None:
        _check_options(options, self.OPTIONS, "onnxruntime")
        ort = _import("onnxruntime", "onnxruntime")
        self._ort = ort
        family = device_family(device)
        provider = ORT_PROVIDERS.get(family)
        available = ort.get_available_providers()
        if provider is None or provider not in available:
            raise DeviceError(
                f"device {device!r} is not available in onnxruntime: it needs {provider or 'an unknown provider'}; "
                f"installed providers: {', '.join(available)} (onnxruntime-gpu brings CUDA/TensorRT, "
                "onnxruntime-openvino the OpenVINO EP)"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or machine.quota_threads() or 0)  # ORT does not read a CPU quota
        so.inter_op_num_threads = int(options.get("inter_op_num_threads", 1))
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = options.get("graph_optimization_level", "all")
        levels = {
            "disable": "ORT_DISABLE_ALL",
            "basic": "ORT_ENABLE_BASIC",
            "extended": "ORT_ENABLE_EXTENDED",
            "all": "ORT_ENABLE_ALL",
        }
        if level not in levels:
            raise RuntimeStedgeError(f"graph_optimization_level must be one of {', '.join(levels)}, got {level!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levels[level])
        so.enable_mem_pattern = bool(options.get("enable_mem_pattern", False))
        so.enable_cpu_mem_arena = bool(options.get("enable_cpu_mem_arena", True))
        so.log_severity_level = int(options.get("log_severity_level", 3))
        if "allow_spinning" in options:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options["allow_spinning"] else "0")
        for k, v in (options.get("session_config") or {}).items():
            so.add_session_config_entry(str(k), str(v))
        self.device_id = _device_index(device) if family in ("cuda", "tensorrt") else 0
        if family in ("cuda", "tensorrt"):
            _load_cuda_libraries(ort)
        popts = dict(options.get("provider_options") or {})
        if family == "cuda":
            providers = [
                (provider, {"device_id": self.device_id, "arena_extend_strategy": "kSameAsRequested", **popts})
            ]
        elif family == "tensorrt":
            trt = {
                "device_id": self.device_id,
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(file.parent / ".trt_cache"),
                **popts,
            }
            providers = [(provider, trt), ("CUDAExecutionProvider", {"device_id": self.device_id})]
        elif family == "ort-openvino":
            sub = device.partition(":")[2].upper() or "CPU"
            providers = [(provider, {"device_type": sub, **popts})]
        else:
            providers = [(provider, popts)] if popts else [provider]
        if family != "cpu":
            providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(file), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise RuntimeStedgeError(f"{file}: onnxruntime could not load the graph ({e})") from None
        used = self.session.get_providers()
        if used[0] != provider:
            hint = ""
            if family in ("cuda", "tensorrt"):
                hint = (
                    ": it needs CUDA 12+/cuDNN 9 libraries matching onnxruntime-gpu's build, from "
                    "pip install 'onnxruntime-gpu[cuda,cudnn]', a CUDA build of torch, or LD_LIBRARY_PATH"
                )
            if family == "tensorrt":
                hint += "; TensorRT also needs its own libraries (pip install tensorrt)"
            raise DeviceError(
                f"device {device!r}: onnxruntime could not start {provider} (session uses {', '.join(used)}){hint}"
            )
        self.device = device
        self.io_binding = family in ("cuda", "tensorrt")
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run the graph and return one output as a host numpy array."""
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        if not self.io_binding:
            return self.session.run([output], feeds)[0]
        ort = self._ort
        binding = self.session.io_binding()
        on_device = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", self.device_id) for k, v in feeds.items()}
        for k, v in on_device.items():  # kept referenced until the run ends
            binding.bind_ortvalue_input(k, v)
        binding.bind_output(output, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


class OpenVINOEngine:
    """OpenVINO compiled model; one infer request per calling thread.

    Options: ``performance_hint`` (LATENCY default, THROUGHPUT, CUMULATIVE_THROUGHPUT; a throughput hint
    compiles several streams, and ``run_many`` then runs that many batches at once),
    ``cache_dir`` (compiled-model cache: faster second load; on the NPU, unless given, the runtime's cache
    folder's ``openvino``, see ``_npu_cache``; None turns it off), ``num_streams``,
    ``inference_precision`` (f32 by default for fp32 variants on CPU and AUTO, so bf16-capable
    CPUs keep fp32 accuracy; GPU/NPU keep their own default, f16), ``static_batch1`` (on the CPU, at most
    this many static-shape compilations for one-row calls: see ``_static_for``), ``static_pad`` (with
    ``static_batch1``: one-row calls are padded to a multiple of this many tokens, STATIC_PAD by default),
    ``snippets`` (CPU: False turns off the plugin's fused "snippets" kernels, SNIPPETS_MODE=DISABLE: attention
    then runs as plain MatMul/Softmax nodes, faster for short texts on some CPUs), ``snippets_above`` (CPU: N keeps the
    snippets for calls longer than N tokens per row; shorter multi-row calls run a second compilation
    without them, made on first use: see ``_compiled_for``), ``shape_cache`` (CPU: N input shapes kept prepared
    per compilation instead of RUNTIME_CACHE_SHAPES, and oneDNN's primitive cap scaled alike: a smaller,
    flatter footprint for some speed, which `stedge tune` measures for memory budgets),
    ``dynamic_quantization_group_size`` (CPU: MatMuls whose weights are int8 or int4 without a static activation
    range, such as the FFN down-projections of openvino-int8-static, quantize each token's activations to int8 at
    run time in groups of this many channels and multiply in int8; the plugin's default is 32, 0 multiplies in
    float; per token, so batch-invariant, but the vectors move a little: `stedge tune` times 0, 128 and 256
    against the default and checks the tier again), ``static_shapes`` (every call on static-shape compilations,
    made on first use: see ``_run_static``; on by default on the NPU, whose plugin compiles no dynamic shape,
    off elsewhere), ``config`` (any other OpenVINO properties).
    On the CPU the per-shape caches are capped (RUNTIME_CACHE_SHAPES, ONEDNN_CACHE_PRIMITIVES), so one
    compilation's memory levels off with texts of ever new lengths (each compilation and stream keeps its own
    shapes, so several level off later and higher); ``config`` and the environment override the caps.
    """

    OPTIONS = (
        "performance_hint",
        "cache_dir",
        "num_streams",
        "inference_precision",
        "static_batch1",
        "static_pad",
        "snippets",
        "snippets_above",
        "shape_cache",
        "dynamic_quantization_group_size",
        "static_shapes",
        "config",
    )
    STATIC_PAD = 16  # static_batch1 pads one-row calls to a multiple of this many tokens unless static_pad says
    # otherwise: finer padding switches compilations more often between queries, coarser pads more. Which is faster
    # depends on the machine, so `stedge tune` times 16 against 8 (select.STATIC_PADS).
    STATIC_MAX_TOKENS = 128  # longer one-row calls run the dynamic graph (the per-shape cost matters less there)
    SHAPES_MIN_TOKENS = 16  # static_shapes: calls are padded to a power of two tokens, at least this many
    # CPU memory per input shape. OpenVINO keeps each shape it ran prepared (CPU_RUNTIME_CACHE_CAPACITY, 5,000
    # by default) and its oneDNN keeps up to 1,024 primitives: with texts of ever new lengths an encoder's RSS
    # grew without end (bf16 MiniLM, LATENCY: 372 -> 751 MB over 2,000 varied texts). With these two caps it
    # levels off (350 MB), at no cost measured on short texts, queries or passages (runtimes/python/README.md).
    RUNTIME_CACHE_SHAPES = 200  # per compilation; config={"CPU_RUNTIME_CACHE_CAPACITY": ...} overrides it
    ONEDNN_CACHE_PRIMITIVES = 256  # per process: $ONEDNN_PRIMITIVE_CACHE_CAPACITY, when unset, while compiling

    def __init__(
        self,
        file: Path,
        device: str,
        precision: str | None,
        threads: int | None,
        options: dict[str, Any],
        max_tokens: int | None = None,
    ) -> None:
        _check_options(options, self.OPTIONS, "openvino")
        ov = _import("openvino", "openvino")
        core = ov.Core()
        family = device_family(device)
        target = device.upper()
        available = list(core.available_devices)
        if family not in ("auto",) and not any(d == target or d.split(".")[0] == target for d in available):
            raise DeviceError(
                f"device {device!r} is not available to OpenVINO; available devices: {', '.join(available)}"
            )
        config, shapes = self._plugin_config(options, family, precision, threads)
        cache = options["cache_dir"] if "cache_dir" in options else _npu_cache() if family == "npu" else None
        if cache:
            core.set_property({"CACHE_DIR": str(cache)})
        static_shapes = options.get("static_shapes")
        static_shapes = family == "npu" if static_shapes is None else static_shapes
        if not isinstance(static_shapes, bool):
            raise RuntimeStedgeError(
                f"engine option static_shapes={static_shapes!r}: expected True or False (default: True on the NPU)"
            )
        self.static_shapes = static_shapes
        # Padding stops at the artifact's max_seq_length: a model's position table may end below the next padded
        # length (a table of 24 positions and 22 tokens padded to 32 could not compile).
        self.max_tokens = max_tokens
        self._file = file
        self._buckets: dict[tuple[int, int], Any] = {}  # static_shapes: (rows, tokens) -> compiled static model
        self._static_lock = threading.Lock()
        try:
            model = _read_graph(core, file)
            # Static shapes need (batch, tokens) inputs; token outputs (batch, tokens, ...) are cut back to the call.
            ranks = [r.get_length() if r.is_static else 0 for r in (i.get_partial_shape().rank for i in model.inputs)]
            two_d = all(r == 2 for r in ranks)
            if static_shapes and not (2 in ranks and set(ranks) <= {1, 2}):
                raise RuntimeStedgeError(
                    f"{file}: engine option static_shapes needs a graph whose inputs are (batch, tokens) or (batch,); "
                    f"this one's are {[str(i.get_partial_shape()) for i in model.inputs]}"
                )
            primitives = -(-shapes * self.ONEDNN_CACHE_PRIMITIVES // self.RUNTIME_CACHE_SHAPES)  # scaled, rounded up
            self._src = (core, model, target, config)
            with _onednn_cache(primitives if family in ("cpu", "auto") else None):
                if static_shapes:  # the first bucket now, so a graph the device cannot take fails at load
                    self.compiled = self._bucket(1, self._padded(1, self.SHAPES_MIN_TOKENS))
                else:
                    self.compiled = _compile(core, model, target, config)
        except RuntimeError as e:
            raise RuntimeStedgeError(f"{file}: OpenVINO could not compile the graph for {target} ({e})") from None
        self.device = device
        self.config = config  # the properties compiled with (the plugin does not report all of them back)
        self.inputs = [i.any_name for i in self.compiled.inputs]
        self.outputs = [n for o in self.compiled.outputs for n in o.names]
        self._local = threading.local()
        static_ok = family == "cpu" and two_d and not static_shapes
        n, self.static_pad = self._static_options(options)
        self.static_batch1 = n if static_ok else 0
        cut = options.get("snippets_above") or 0
        if isinstance(cut, bool) or not isinstance(cut, int) or cut < 0:
            raise RuntimeStedgeError(
                f"engine option snippets_above={cut!r}: expected an integer, a length in tokens (0: off)"
            )
        if cut and options.get("snippets") is False:
            raise RuntimeStedgeError(
                "engine options snippets=False and snippets_above both given: snippets=False turns the snippets off "
                "for every call, snippets_above only for calls of at most that many tokens; pass one of them"
            )
        self.snippets_above = cut if family == "cpu" and not static_shapes else 0
        self._plain: Any = None  # the compilation without snippets, for calls of <= snippets_above tokens
        self._static: dict[int, Any] = {}  # padded tokens -> compiled static model for one row
        self._seen: dict[int, int] = {}
        if not (self.static_batch1 or self.snippets_above or static_shapes):
            self._src = None  # nothing compiles later: the model (its mapped weights) is not kept
        try:  # THROUGHPUT hints compile several streams: bulk calls then run that many batches at once
            self.parallel = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except (RuntimeError, TypeError, ValueError):
            self.parallel = 1
        if static_shapes:  # each batch may need another compilation: batches run one after another
            self.parallel = 1
        self._queues: dict[int, list[Any]] = {}  # id(compilation) -> the infer requests run_many shares out
        self._queue_lock = threading.Lock()

    @classmethod
    def _plugin_config(
        cls, options: dict[str, Any], family: str, precision: str | None, threads: int | None
    ) -> tuple[dict[str, Any], int]:
        """The OpenVINO properties to compile with, from the engine options (checked), and the shapes kept per
        compilation (``shape_cache``)."""
        config: dict[str, Any] = {"PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY")).upper()}
        threads = threads or (machine.quota_threads() if family == "cpu" else None)  # nor does OpenVINO
        if threads and family == "cpu":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if options.get("num_streams") is not None:
            config["NUM_STREAMS"] = str(options["num_streams"])
        prec = options.get("inference_precision", "f32" if precision == "fp32" and family in ("cpu", "auto") else None)
        if prec:
            config["INFERENCE_PRECISION_HINT"] = str(prec)
        if options.get("snippets") is False and family == "cpu":
            config["SNIPPETS_MODE"] = "DISABLE"
        shapes = options.get("shape_cache")
        shapes = cls.RUNTIME_CACHE_SHAPES if shapes is None else shapes
        if isinstance(shapes, bool) or not isinstance(shapes, int) or shapes < 1:
            raise RuntimeStedgeError(
                f"engine option shape_cache={shapes!r}: expected an integer >= 1, the input shapes "
                f"kept prepared per compilation (default {cls.RUNTIME_CACHE_SHAPES})"
            )
        if family == "cpu":
            config["CPU_RUNTIME_CACHE_CAPACITY"] = str(shapes)
        group = options.get("dynamic_quantization_group_size")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or group < 0):
            raise RuntimeStedgeError(
                f"engine option dynamic_quantization_group_size={group!r}: expected an integer >= 0, the channels per "
                "run-time int8 group of a token's activations (0: multiply in float)"
            )
        if group is not None and family == "cpu":
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = group
        config.update(options.get("config") or {})
        return config, shapes

    @classmethod
    def _static_options(cls, options: dict[str, Any]) -> tuple[int, int]:
        """The engine options ``static_batch1`` (0: off) and ``static_pad`` (STATIC_PAD by default), checked."""
        n = options.get("static_batch1") or 0
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RuntimeStedgeError(f"engine option static_batch1={n!r}: expected an integer, 0 (off) or more")
        pad = options.get("static_pad")
        pad = cls.STATIC_PAD if pad is None else pad
        if isinstance(pad, bool) or not isinstance(pad, int) or not 1 <= pad <= cls.STATIC_MAX_TOKENS:
            raise RuntimeStedgeError(
                f"engine option static_pad={pad!r}: expected an integer from 1 to {cls.STATIC_MAX_TOKENS}, the "
                "multiple of tokens one-row calls are padded to for their static compilations"
            )
        return n, pad

    def run(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run the graph and return one output (copied out of the infer request)."""
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        if self.static_shapes:
            return self._run_static(feeds, output)
        compiled, static = self._compiled_for(feeds)
        tokens = next(iter(feeds.values())).shape[1]
        if static:
            feeds = {k: _pad_tokens(v, self._static_key(tokens)) for k, v in feeds.items()}
        return self._infer(compiled, feeds, output, tokens)

    def _infer(self, compiled: Any, feeds: dict[str, np.ndarray], output: str, tokens: int) -> np.ndarray:
        """One call on this thread's infer request of ``compiled``; token outputs cut back to ``tokens``."""
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        req = requests.get(id(compiled))
        if req is None:
            req = requests[id(compiled)] = compiled.create_infer_request()
        # Inputs are copied into the request: shared inputs (share_inputs=True) corrupted the heap in a
        # `stedge tune` run that switched between engines and shapes (a crash in malloc, twice in two runs).
        out = req.infer(feeds, share_inputs=False)[compiled.output(output)]
        return np.array(out[:, :tokens] if out.ndim >= 3 else out, copy=True)

    def _run_static(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """A call on static-shape compilations only (engine option ``static_shapes``; the NPU's default).

        The tokens are padded to a power of two (at least SHAPES_MIN_TOKENS, at most max_tokens; masked, as in
        any batch, so the vectors do not change) and the rows run in parts of a power of two each, largest
        first (37 rows: 32, 4 and 1), so no row is padded and a batch size of 32 needs at most six row counts.
        Each (rows, tokens) shape is compiled the first time it comes (on the NPU its compiled-model cache,
        ``cache_dir``, keeps them for the next process) and kept: at most 6 x 5 shapes with batches of 32 and
        texts of up to 256 tokens."""
        rows, tokens = next(v for v in feeds.values() if v.ndim == 2).shape  # prompt_length is (rows,)
        padded = self._padded(tokens, max(self.SHAPES_MIN_TOKENS, 1 << max(0, tokens - 1).bit_length()))
        parts, start = [], 0
        for bit in reversed(range(rows.bit_length())):
            if rows >> bit & 1:
                n = 1 << bit
                sub = {
                    k: _pad_tokens(v[start : start + n], padded) if v.ndim == 2 else v[start : start + n]
                    for k, v in feeds.items()
                }
                parts.append(self._infer(self._bucket(n, padded), sub, output, tokens))
                start += n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _padded(self, tokens: int, padded: int) -> int:
        """``padded`` tokens for a call of ``tokens``, but no more than max_tokens (and never fewer than it has)."""
        return padded if self.max_tokens is None else max(tokens, min(padded, self.max_tokens))

    def _static_key(self, tokens: int) -> int:
        """The padded length of a one-row call on a static batch-1 compilation (a multiple of static_pad)."""
        return self._padded(tokens, tokens + (-tokens % self.static_pad))

    def _bucket(self, rows: int, tokens: int) -> Any:
        """The static compilation for (rows, tokens), made on first use (static_shapes)."""
        compiled = self._buckets.get((rows, tokens))
        if compiled is not None:
            return compiled
        with self._static_lock:
            if (rows, tokens) not in self._buckets:
                core, model, target, config = self._src
                try:
                    self._buckets[rows, tokens] = _compile(core, model, target, config, [rows, tokens])
                except RuntimeError as e:
                    raise RuntimeStedgeError(
                        f"{self._file}: OpenVINO could not compile the graph for {target} at the static shape "
                        f"[{rows}, {tokens}] ({e})"
                    ) from None
            return self._buckets[rows, tokens]

    def _compiled_for(self, feeds: dict[str, np.ndarray]) -> tuple[Any, bool]:
        """The compilation a call runs on, and whether it is a static one (its inputs then get padded).

        One-row calls may get a static compilation (``_static_for``). With ``snippets_above=N``, multi-row
        calls of at most N tokens per row run a compilation without the snippets: OpenVINO's fused attention
        kernel costs more than it saves on short rows (measured on an AMX guest, bf16 MiniLM, batches of 32:
        1.0-1.2x as fast without it up to 64 tokens, 0.85x at 256), so one engine keeps both and picks by
        length. One-row calls keep the snippets (they ran 2-5 % faster with them there).
        """
        rows, tokens = next(iter(feeds.values())).shape
        if self.static_batch1:
            compiled = self._static_for(feeds)
            if compiled is not None:
                return compiled, True
        if self.snippets_above and rows > 1 and tokens <= self.snippets_above:
            return self._plain or self._compile_plain(), False
        return self.compiled, False

    def _compile_plain(self) -> Any:
        with self._static_lock:
            if self._plain is None:
                core, model, target, config = self._src
                try:
                    self._plain = _compile(core, model, target, {**config, "SNIPPETS_MODE": "DISABLE"})
                except RuntimeError:  # a plugin that cannot compile it that way keeps the one compilation
                    self.snippets_above = 0
                    return self.compiled
            return self._plain

    def _static_for(self, feeds: dict[str, np.ndarray]) -> Any:
        """The static-shape compilation for a one-row call, or None to run the dynamic graph.

        OpenVINO's CPU plugin re-prepares its nodes whenever a dynamic graph, or the shared kernels, see
        another input shape: about 0.5 ms per call for MiniLM on 2 cores, a third of a batch-1 query's time.
        So one-row calls are padded to a multiple of ``static_pad`` tokens (masked like any batch padding), and
        the second time such a length comes it gets its own static compilation (~0.15 s, ~40 MB for MiniLM in
        bf16), up to ``static_batch1`` lengths of at most STATIC_MAX_TOKENS. Other calls, lengths seen once and
        lengths past the limits run the dynamic graph.
        """
        rows, tokens = next(iter(feeds.values())).shape
        key = self._static_key(tokens)
        if rows != 1 or key > self.STATIC_MAX_TOKENS:
            return None
        compiled = self._static.get(key)
        if compiled is not None:
            return compiled
        with self._static_lock:
            self._seen[key] = seen = self._seen.get(key, 0) + 1
            if key in self._static or seen < 2 or len(self._static) >= self.static_batch1:
                return self._static.get(key)
            core, model, target, config = self._src
            try:
                self._static[key] = _compile(core, model, target, config, [1, key])
            except RuntimeError:  # a graph that cannot take a static shape keeps running the dynamic one
                self.static_batch1 = 0
                return None
            return self._static[key]

    def run_many(self, feeds_list: Iterable[dict[str, np.ndarray]], output: str) -> list[np.ndarray]:
        """Run several batches on ``parallel`` infer requests at once (results in order).

        The batches go round-robin to the requests; a request's result is read (on this thread) before it
        takes its next batch. ``feeds_list`` may be a generator: a batch is taken from it only when a request
        is free, so only the batches in flight need to be in memory. No Python callback runs on OpenVINO's
        threads: the cyclic garbage collector, run by any thread that allocates, could otherwise free another
        engine there, and a compiled model destroyed on its own worker thread aborts the process ("Resource
        deadlock avoided").
        One caller at a time uses the shared requests; a concurrent caller runs its batches on its own
        thread's request instead, so calls from many threads stay safe. With ``snippets_above``, each run of
        consecutive batches on the same compilation (batches come sorted by length) finishes before the next
        run starts, so the two compilations never compete for the cores.
        """
        if self.parallel <= 1 or not self._queue_lock.acquire(blocking=False):
            return [self.run(f, output) for f in feeds_list]
        try:
            results: list[Any] = []
            for compiled, group in itertools.groupby(feeds_list, key=self._bulk_compiled):
                results += self._run_parallel(compiled, group, output)
            return results
        finally:
            self._queue_lock.release()

    def _bulk_compiled(self, feeds: dict[str, np.ndarray]) -> Any:
        """The compilation a batch of ``run_many`` runs on (no static ones: those are for single calls)."""
        rows, tokens = next(iter(feeds.values())).shape
        if self.snippets_above and rows > 1 and tokens <= self.snippets_above:
            return self._plain or self._compile_plain()
        return self.compiled

    def _run_parallel(self, compiled: Any, feeds_list: Iterable[dict[str, np.ndarray]], output: str) -> list[Any]:
        queue = self._queues.get(id(compiled))
        if queue is None:
            queue = self._queues[id(compiled)] = [compiled.create_infer_request() for _ in range(self.parallel)]
        port = compiled.output(output)
        results: list[Any] = []
        running: list[int | None] = [None] * len(queue)  # batch index on each request

        def collect(k: int) -> None:
            j = running[k]
            if j is not None:
                queue[k].wait()
                results[j] = np.array(queue[k].get_tensor(port).data, copy=True)
                running[k] = None

        try:
            for i, feeds in enumerate(feeds_list):
                k = i % len(queue)
                collect(k)
                results.append(None)
                queue[k].start_async({n: v for n, v in feeds.items() if n in self.inputs})
                running[k] = i
        finally:
            for k in range(len(queue)):
                collect(k)
        return results


def _npu_cache() -> Path | None:
    """The compiled-model cache an NPU gets unless ``cache_dir`` says otherwise: the runtime's cache folder
    (``artifact.cache_dir``)/openvino, so each static shape compiles once per machine, not once per process
    (compilation times on an NPU are not measured here: no NPU);
    None where that folder cannot be made."""
    folder = cache_dir() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder


def _pad_tokens(a: np.ndarray, tokens: int) -> np.ndarray:
    """``a`` (rows, n) with zeros appended up to ``tokens`` columns (itself when already that wide)."""
    if a.shape[1] == tokens:
        return a
    out = np.zeros((a.shape[0], tokens), dtype=a.dtype)  # np.pad took ~30 us per input
    out[:, : a.shape[1]] = a
    return out


_GRAPHS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (path, mtime, size) -> ov.Model
_GRAPHS_LOCK = threading.Lock()


def _read_graph(core: Any, file: Path) -> Any:
    """The OpenVINO model of ``file``, read once per process while an engine holds it.

    OpenVINO maps the weights file into memory; two engines on one file (a bulk route and a batch-1
    route with other settings) would map it twice, and every page of it counts twice in the RSS (measured:
    near-tier MiniLM at load: 341 MB RSS with two reads, 254 MB with one). Compilations only read the model;
    ``_compile`` serializes them."""
    st = file.stat()
    key = (str(file.resolve()), st.st_mtime_ns, st.st_size)
    with _GRAPHS_LOCK:
        model = _GRAPHS.get(key)
        if model is None:
            model = _GRAPHS[key] = core.read_model(str(file))
        return model


@contextlib.contextmanager
def _onednn_cache(capacity: int | None):
    """``ONEDNN_PRIMITIVE_CACHE_CAPACITY=capacity`` while OpenVINO compiles, where the caller left it unset. The
    plugin's oneDNN reads it once per process, by the end of the first compilation (measured: RSS stayed at
    the capped level with the variable removed right after the load), so it is removed again and child
    processes (the harness's peers, say) keep their own defaults."""
    name = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
    if capacity is None or name in os.environ:
        yield
        return
    os.environ[name] = str(capacity)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _compile(core: Any, model: Any, target: str, config: dict, shape: list[int] | None = None) -> Any:
    """compile_model on a shared model (``_read_graph``), one at a time; ``shape`` [rows, tokens] compiles a static
    copy (an input of one dimension, such as ``prompt_length``, gets [rows])."""
    with _GRAPHS_LOCK:
        if shape is not None:
            model = model.clone()
            model.reshape({i.any_name: shape[: i.get_partial_shape().rank.get_length()] for i in model.inputs})
        return core.compile_model(model, target, config)


def open_engine(
    backend: str,
    file: Path,
    device: str,
    precision: str | None,
    threads: int | None,
    options: dict[str, Any],
    max_tokens: int | None = None,
):
    """The engine for a variant backend ('onnx' -> OrtEngine, 'openvino' -> OpenVINOEngine). ``max_tokens``, the
    artifact's max_seq_length, caps the padding of OpenVINO's static shapes."""
    if backend == "onnx":
        return OrtEngine(file, device, precision, threads, options)
    return OpenVINOEngine(file, device, precision, threads, options, max_tokens)
