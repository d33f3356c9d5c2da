"""Model FLOPs from the config, and a GEMM peak measured in the same run at the same thread budget.

FLOPs of a transformer encoder on one text of ``n`` tokens (one multiply-add = 2 FLOPs)::

    flops(n) = L * ( 2 * n * (4*h*h + 2*h*i)      # Q, K, V, output projections + the two FFN matrices
                   + 4 * n*n * h )                 # attention: Q @ K^T and softmax(.) @ V

with ``L`` layers, hidden size ``h`` and FFN (intermediate) size ``i`` from ``config.json``. Embedding
look-ups, layer norms, softmax, biases, pooling and a small Dense head are left out (< 1 % for
MiniLM-sized models). Only real tokens count, never padding: achieved GFLOP/s is the *useful* work
per second, so padding waste shows up as a lower number. The peak is measured per precision the CPU
has (fp32; bf16 on avx512_bf16 / AMX; int8 as the better of onnxruntime's MatMulInteger and
``torch._int_mm``), and each subject's share is taken against the peak of its own precision
(``peak_for``): int8 subjects against the int8 peak, bf16 against bf16, the rest against fp32.

Batch 1 has another limit. However few its tokens, every forward pass reads all the weights of its matrix
products (``matmul_weights``), so a one-text call spends at least their bytes over the memory bandwidth on that
when they come from memory rather than cache. On the AMX guest of 2026-12-07 (OpenVINO, one 16-token row, per-node
counters) the matrix products took 2.27 ms with fp32 weights (42.5 MB), 1.32 ms in bf16 (21.2 MB), and 1.10 / 0.69
ms for the 3-layer student in fp32 / bf16 (21.2 / 10.6 MB): 39-45 us per MB (22-26 GB/s; summing 512 MB gave
21-23 GB/s in the same minutes), plus 10-15 us per product; fusing the query, key and value products into one
(36 products to 24) left the time where it was. So the CPU measurement also gives the memory read bandwidth
(``read_bandwidth``) and each subject the time its batch-1 weights take to read at it (``weights_mb``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from stedge.errors import InvalidModelError

# config.json keys per meaning, in the spellings of common architectures (BERT, DistilBERT, T5, GPT-2...).
_KEYS = {
    "hidden": ("hidden_size", "dim", "d_model", "n_embd"),
    "layers": ("num_hidden_layers", "n_layers", "num_layers", "n_layer"),
    "intermediate": ("intermediate_size", "hidden_dim", "d_ff", "ffn_dim", "n_inner"),
}


def model_dims(model_path: str | os.PathLike) -> dict[str, int]:
    """Layers, hidden and intermediate size from a model's (or artifact's) config.json."""
    root = Path(model_path)
    cands = [root / "config.json", root / "0_Transformer" / "config.json"]
    file = next((c for c in cands if c.exists()), None)
    if file is None:
        raise InvalidModelError(
            f"{root}: no config.json (looked in {', '.join(str(c) for c in cands)}); cannot count FLOPs"
        )
    cfg = json.loads(file.read_text(encoding="utf-8"))
    out = {}
    for name, keys in _KEYS.items():
        val = next((cfg[k] for k in keys if isinstance(cfg.get(k), int)), None)
        if val is None and name == "intermediate" and "hidden" in out:
            val = 4 * out["hidden"]  # the usual default when the config leaves it out
        if val is None:
            raise InvalidModelError(f"{file}: none of the fields {', '.join(keys)} is set; cannot count FLOPs")
        out[name] = int(val)
    return out


def text_flops(n_tokens: int, dims: dict[str, int]) -> float:
    """FLOPs of one forward pass over one text of ``n_tokens`` tokens (see the module docstring)."""
    h, L, n = dims["hidden"], dims["layers"], n_tokens
    return float(2 * n * matmul_weights(dims) + L * 4 * n * n * h)


def total_flops(token_counts: Sequence[int], dims: dict[str, int]) -> float:
    """Sum of text_flops over texts with the given token counts."""
    return float(sum(text_flops(n, dims) for n in token_counts))


# Bytes per weight of a matrix product at the precision an engine computes in (int8 variants may leave a few
# products float, so theirs is the least they read).
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


def matmul_weights(dims: dict[str, int]) -> int:
    """Weights of the encoder's matrix products (per layer: Q, K, V, output, the two FFN matrices), which every
    forward pass reads in full whatever its length; the embedding tables are looked up row by row, so not counted."""
    h, i, L = dims["hidden"], dims["intermediate"], dims["layers"]
    return L * (4 * h * h + 2 * h * i)


def weights_mb(dims: dict[str, int], precision: str | None) -> float | None:
    """MB (10^6 bytes) of ``matmul_weights`` at ``precision`` (BYTES_PER_WEIGHT; None for another precision)."""
    size = BYTES_PER_WEIGHT.get(str(precision))
    return None if size is None else matmul_weights(dims) * size / 1e6


# How a subject orders the items of one call before cutting them into batches that pad to their longest item.
PADDING_ORDERS = {
    "tokens": "sorted by token count (the stedge runtime)",
    "chars": "sorted by characters (sentence-transformers, stedge PyTorch)",
    "order": "in the order given (fastembed)",
}


def real_token_share(token_counts: Sequence[int], items: Sequence[Any], batch_size: int) -> dict[str, float]:
    """The share of real tokens among the tokens the engine runs when a call of ``items`` (texts, or pairs counted
    by their characters together) is cut into batches of ``batch_size`` that each pad to their longest item, for
    each order of PADDING_ORDERS. The rest is padding: compute the engine spends and GFLOP/s does not count. A
    runtime that also splits batches by a token budget pads at most this much."""
    import numpy as np
    from stedge_runtime.tokenize import batches as runtime_batches

    lengths = np.asarray(token_counts, dtype=np.int64)
    if len(lengths) != len(items):
        raise ValueError(f"{len(lengths)} token counts for {len(items)} items")
    if not len(lengths):
        return {name: 1.0 for name in PADDING_ORDERS}
    chars = np.asarray([len(t) if isinstance(t, str) else sum(len(x) for x in t) for t in items])

    def chunks(idx: np.ndarray) -> list[np.ndarray]:
        return [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]

    groups = {  # "tokens": the runtime's own grouping, with a token budget that never splits a batch
        "tokens": list(runtime_batches(lengths, batch_size, batch_size * int(lengths.max()))),
        "chars": chunks(np.argsort(-chars, kind="stable")),
        "order": chunks(np.arange(len(lengths))),
    }
    real = int(lengths.sum())
    return {name: real / sum(len(b) * int(lengths[b].max()) for b in bs) for name, bs in groups.items()}


def gemm_peak(threads: int, device: str = "cpu", size: int | None = None, seconds: float = 2.0) -> dict[str, Any]:
    """Measured GEMM GFLOP/s (best of repeated square matmuls) at ``threads`` threads.

    CPU: torch fp32 (numpy when torch is absent); bf16 (torch, where the CPU has avx512_bf16 / AMX);
    int8 through onnxruntime's MatMulInteger (what the int8 variants run) and ``torch._int_mm``; and the memory
    read bandwidth (``read_bandwidth``), what batch 1 waits on.
    CUDA: torch fp32 (TF32 off), fp16 and bf16.
    """
    out: dict[str, Any] = {"device": device, "threads": threads}
    try:
        import torch
    except ImportError:
        torch = None
    if device.startswith("cuda"):
        if torch is None or not torch.cuda.is_available():
            raise InvalidModelError(f"device {device!r}: torch sees no CUDA device; cannot measure a GPU GEMM peak")
        torch.backends.cuda.matmul.allow_tf32 = False
        n = size or 8192
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            best = _best(lambda a=a, b=b: (a @ b, torch.cuda.synchronize()), 2.0 * n**3, seconds)
            out[f"gflops_{name}"] = best
        out.update(size=n, library=f"torch {torch.__version__}")
        out["gflops"] = out["gflops_fp32"]
        return out
    n = size or 1024
    if torch is not None:
        torch.set_num_threads(threads)
        a, b = torch.randn(n, n), torch.randn(n, n)
        out["gflops"] = _best(lambda: a @ b, 2.0 * n**3, seconds)
        out["library"] = f"torch {torch.__version__}"
        out.update(_cpu_low_precision(torch, n, seconds))
    else:
        import numpy as np

        a = np.random.rand(n, n).astype(np.float32)
        b = np.random.rand(n, n).astype(np.float32)
        out["gflops"] = _best(lambda: a @ b, 2.0 * n**3, seconds)
        out["library"] = f"numpy {np.__version__}"
    out.update(read_bandwidth(threads, seconds=seconds))
    out.update(_ort_int8(threads, n, seconds))
    int8 = [out[k] for k in ("gflops_int8_ort", "gflops_int8_torch") if out.get(k)]
    if int8:
        out["gflops_int8"] = max(int8)  # the hardware's int8 peak: the better of the two libraries
    out["size"] = n
    out["gflops_fp32"] = out["gflops"]
    return out


READ_MB = 512  # the buffer read_bandwidth sums: far larger than any CPU's caches


def read_bandwidth(threads: int, mb: int = READ_MB, seconds: float = 2.0) -> dict[str, Any]:
    """Memory read bandwidth in GB/s (10^9 bytes): the best of repeated sums of an ``mb`` MB fp32 buffer at
    ``threads`` threads (torch; numpy, which sums on one thread, when torch is absent), as
    ``{"memory_read_gbs", "memory_read_mb", "memory_read_library"}``."""
    try:
        import torch
    except ImportError:
        torch = None
    n = mb * 2**20 // 4
    if torch is not None:
        torch.set_num_threads(threads)
        x = torch.ones(n)
        lib = f"torch {torch.__version__} sum, {threads} threads"
    else:
        import numpy as np

        x = np.ones(n, dtype=np.float32)
        lib = f"numpy {np.__version__} sum, 1 thread"
    bytes_read = 4.0 * n
    gbs = _best(lambda: x.sum(), bytes_read, seconds)  # "FLOPs" = bytes here: GB/s
    return {"memory_read_gbs": gbs, "memory_read_mb": mb, "memory_read_library": lib}


def _cpu_low_precision(torch: Any, n: int, seconds: float) -> dict[str, Any]:
    """bf16 GEMM (torch/oneDNN) where the CPU computes bf16 natively, and int8 (``torch._int_mm``)."""
    from stedge_runtime.machine import cpu_flags, has_bf16

    out: dict[str, Any] = {}
    flags = cpu_flags()
    if has_bf16(flags):
        a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
        out["gflops_bf16"] = _best(lambda: a @ b, 2.0 * n**3, seconds)
        out["bf16_isa"] = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16"
    if hasattr(torch, "_int_mm"):
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        try:
            out["gflops_int8_torch"] = _best(lambda: torch._int_mm(a, b), 2.0 * n**3, seconds)
        except RuntimeError:  # no CPU int8 kernel in this torch build
            pass
    return out


def _ort_int8(threads: int, n: int, seconds: float) -> dict[str, Any]:
    """int8 GEMM as the int8 variants run it: onnxruntime MatMulInteger (u8 x s8 -> s32) at ``threads`` threads."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return {}
    from stedge_runtime.machine import cpu_flags, int8_isa

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "int8_gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {
        "a": np.random.randint(0, 255, (n, n), dtype=np.uint8),
        "b": np.random.randint(-128, 127, (n, n), dtype=np.int8),
    }
    isa = "amx_int8" if "amx_int8" in cpu_flags() else int8_isa()
    return {
        "gflops_int8_ort": _best(lambda: sess.run(None, feeds), 2.0 * n**3, seconds),
        "int8_library": f"onnxruntime {ort.__version__} MatMulInteger (onnx {onnx.__version__})",
        "int8_isa": isa,
    }


def best_peaks(measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several ``gemm_peak`` results of one run as one: the first's fields with each GFLOP/s (and GB/s) figure the
    highest measured (a slow spell of a shared host only lowers a peak: on the AMX guest of 2026-12-06 one run measured
    bf16 at 484 GFLOP/s where the hour before gave 1,239, and its subjects at up to 135 % of that "peak"), and
    ``measurements``: each measurement's figures, in order."""
    out = dict(measurements[0])
    figures = [
        {k: v for k, v in m.items() if k.startswith(("gflops", "memory_read_gbs")) and isinstance(v, (int, float))}
        for m in measurements
    ]
    for f in figures:
        for k, v in f.items():
            out[k] = max(out.get(k) or 0.0, v)
    out["measurements"] = figures
    return out


def peak_for(gemm: dict[str, Any], precision: str | None) -> float | None:
    """The measured peak a subject of ``precision`` is compared with: int8 -> int8, bf16 -> bf16, else fp32."""
    key = {"int8": "gflops_int8", "bf16": "gflops_bf16", "fp16": "gflops_fp16"}.get(str(precision), "gflops_fp32")
    return gemm.get(key) or gemm.get("gflops")


def _best(fn, flops: float, seconds: float) -> float:
    fn()  # warm-up
    best = float("inf")
    end = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return round(flops / best / 1e9, 1)


if __name__ == "__main__":  # python -m stedge.bench.gemm THREADS DEVICE  (run by the runner in a clean process)
    print(json.dumps(gemm_peak(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cpu")))
