"""Facts about the machine a run happened on: CPU model and ISA flags, cores, GPU, load, library versions.

CPU detection itself lives in the runtime (``stedge_runtime.machine``, one owner); this adds what only
the harness needs (GPU, memory, load, every library's version).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from stedge_runtime.machine import (
    ISA_FLAGS,
    cpu_class,
    cpu_flags,
    cpu_model,
    cpu_quota,
    cpu_slug,
    installed_versions,
    int8_isa,
    machine_key,
)

__all__ = [
    "ISA_FLAGS",
    "cpu_flags",
    "cpu_model",
    "cpu_slug",
    "int8_isa",
    "machine_facts",
    "gpu_info",
    "gpu_slug",
    "cuda_available",
    "ort_providers",
    "library_versions",
    "load_average",
]

LIBRARIES = (
    "stedge",
    "stedge-runtime",
    "torch",
    "transformers",
    "tokenizers",
    "sentence-transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "optimum",
    "optimum-onnx",
    "optimum-intel",
    "openvino",
    "nncf",
    "numpy",
)


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
                "name": p.name,
                "count": torch.cuda.device_count(),
                "memory_gb": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}",
                "cuda": torch.version.cuda,
            }
    except ImportError:
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=True,
                )
                .stdout.strip()
                .splitlines()
            )
            if out:
                name, mem, driver = [x.strip() for x in out[0].split(",")]
                return {"name": name, "count": len(out), "memory": mem, "driver": driver}
        except (subprocess.SubprocessError, ValueError):
            return None
    return None


def gpu_slug() -> str | None:
    """The first GPU's name as a folder name (``NVIDIA H200`` -> ``nvidia-h200``), None without a GPU."""
    import re

    name = (gpu_info() or {}).get("name")
    if not name:
        return None
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or None


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
    return installed_versions(LIBRARIES)


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
        "cpu_class": cpu_class(flags),
        "cpu_slug": cpu_slug(),
        "machine_key": machine_key(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "cpu_quota": cpu_quota(),  # a container's CPU limit, in CPUs (None: none); the thread budget follows it
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu_info() if with_gpu else None,
        "ort_providers": ort_providers(),
        "libraries": library_versions(),
    }
