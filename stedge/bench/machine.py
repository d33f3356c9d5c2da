"""Facts about the machine a run happened on: CPU model and ISA flags, cores, GPU, load, library versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

# ISA flags that decide which kernels the engines pick (as /proc/cpuinfo spells them).
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm",
)
LIBRARIES = (
    "stedge", "stedge-runtime", "torch", "transformers", "tokenizers", "sentence-transformers", "onnx",
    "onnxruntime", "onnxruntime-gpu", "optimum", "optimum-onnx", "optimum-intel", "openvino", "nncf", "numpy",
)


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
                elif not line.strip() and out:
                    break  # the first processor block is enough
    except OSError:
        pass
    return out


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    """A human name for the CPU."""
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def int8_isa(flags: set[str] | None = None) -> str:
    """The dynamic-int8 ISA variant suffix for this CPU (``onnx-int8-<isa>``): avx512_vnni > avx512 > avx2 > arm64.

    The same rule as stedge.export.quantize.detect_isa, so the suite names the variant the export builds.
    """
    flags = cpu_flags() if flags is None else flags
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    return "avx2"


def gpu_info() -> dict[str, Any] | None:
    """Name, memory, CUDA and driver of the first CUDA device, or None when there is none.

    Uses torch when it is installed, else ``nvidia-smi``; never initialises CUDA in a process that
    has not imported torch already, except through this call.
    """
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {
                "name": p.name, "count": torch.cuda.device_count(), "memory_gb": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
            }
    except ImportError:
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip().splitlines()
            if out:
                name, mem, driver = [x.strip() for x in out[0].split(",")]
                return {"name": name, "count": len(out), "memory": mem, "driver": driver}
        except (subprocess.SubprocessError, ValueError):
            return None
    return None


def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def ort_providers() -> list[str]:
    """ONNX Runtime execution providers this install offers ([] without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that matter for the numbers."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_facts(with_gpu: bool = True) -> dict[str, Any]:
    """Everything the results JSON records about the machine."""
    import psutil

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "isa_flags": sorted(f for f in ISA_FLAGS if f in flags),
        "int8_isa": int8_isa(flags),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu_info() if with_gpu else None,
        "ort_providers": ort_providers(),
        "libraries": library_versions(),
    }
