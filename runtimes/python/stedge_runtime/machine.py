"""This machine as the variant choice sees it: CPU model, ISA flags, cores, engine versions and a key for them.

The one owner of CPU detection in stedge: the exporter (int8 ISA), the tuner (profile key), the
selection rule (bf16 / AMX / VNNI) and the benchmark harness (results folder per CPU) all ask here.
Linux reads ``/proc/cpuinfo``, macOS asks ``sysctl`` (the chip's name, its features, its cores), Windows the
registry (the CPU's name) and kernel32 (physical cores, peak memory). Where neither /proc/cpuinfo nor sysctl gives
flags (Windows), numpy's own run-time CPU detection does (CPUID and the OS's register support, the same checks
that pick numpy's SIMD kernels): AVX2, AVX-512, VNNI, bf16, fp16, but no AMX, which numpy does not report.
Nothing here imports an engine: versions come from the installed package metadata.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import platform
import re
import struct
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any, Iterable

# ISA flags that decide which kernels the engines pick (as /proc/cpuinfo spells them).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)
# Engines whose version changes the timings a tuning profile holds.
ENGINES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "openvino")


@lru_cache(maxsize=1)
def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# macOS: sysctl in place of /proc/cpuinfo. Apple's names for the features the rule and the key care about.
_DARWIN_FLAGS = {
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.neon": "asimd",
    "hw.optional.AdvSIMD": "asimd",
}
_DARWIN_X86 = {"sse4.2": "sse4_2", "avx1.0": "avx", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}


@lru_cache(maxsize=1)
def _darwin() -> dict[str, str]:
    """macOS: what ``sysctl`` says of the CPU (brand, x86 feature lists, core counts, ``hw.optional.*``), as
    name -> value; empty elsewhere or where sysctl fails."""
    if sys.platform != "darwin":
        return {}
    names = ["machdep.cpu.brand_string", "machdep.cpu.features", "machdep.cpu.leaf7_features"]
    try:  # an unknown name is an error on stderr; the others still print
        out = subprocess.run(
            ["sysctl", *names, "hw.physicalcpu", "hw.nperflevels", "hw.perflevel0.physicalcpu", "hw.optional"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def _darwin_flags(info: dict[str, str]) -> set[str]:
    """The ISA flags in /proc/cpuinfo's spelling from macOS sysctl output (``_darwin``)."""
    flags = {flag for name, flag in _DARWIN_FLAGS.items() if info.get(name, "").strip() == "1"}
    for name in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):  # Intel Macs: "SSE4.2 AVX1.0 AVX2 ..."
        flags |= {_DARWIN_X86.get(f, f) for f in info.get(name, "").lower().split()}
    return flags


# Elsewhere: numpy's names for its run-time CPU features (``__cpu_features__``, what ``numpy.show_runtime()``
# prints), in /proc/cpuinfo's spelling. A numpy too old to know a name leaves that flag out.
_NUMPY_FLAGS = {
    "SSE42": "sse4_2",
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA3": "fma",
    "F16C": "f16c",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BF16": "avx512_bf16",
    "AVX512FP16": "avx512_fp16",
    "ASIMD": "asimd",
    "ASIMDDP": "asimddp",
    "SVE": "sve",
}


@lru_cache(maxsize=1)
def _numpy_features() -> dict[str, bool]:
    """numpy's run-time CPU features (name -> present); empty where this numpy does not expose them."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features  # numpy 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features  # numpy 1.x
        except ImportError:
            return {}
    return {str(k): bool(v) for k, v in dict(features).items()}


def _numpy_flags(features: dict[str, bool]) -> set[str]:
    """The ISA flags in /proc/cpuinfo's spelling from numpy's run-time CPU features (``_numpy_features``)."""
    return {flag for name, flag in _NUMPY_FLAGS.items() if features.get(name)}


@lru_cache(maxsize=1)
def _windows_cpu_name() -> str:
    """Windows: the CPU's name from the registry (``ProcessorNameString``, such as "Intel(R) Xeon(R) Platinum
    8480+"; ``platform.processor()`` says only "Intel64 Family 6 Model 143 ..."); empty elsewhere or unread."""
    if sys.platform != "win32":
        return ""
    try:
        import winreg

        path = r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path) as key:
            return " ".join(str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).split())
    except (ImportError, OSError):
        return ""


def _core_classes(raw: bytes) -> list[int]:
    """The efficiency class of each physical core in a buffer GetLogicalProcessorInformationEx filled for
    RelationProcessorCore: records of (relationship u32, size u32, flags u8, efficiency class u8, ...), one per
    core however many hardware threads it runs; a higher class is a faster core (Windows 10 on; 0 before, and
    on CPUs with one kind of core). A truncated record ends the list."""
    classes, at = [], 0
    while at + 10 <= len(raw):
        relationship, size, _flags, efficiency = struct.unpack_from("<IIBB", raw, at)
        if size < 10 or at + size > len(raw):
            break
        if relationship == 0:
            classes.append(efficiency)
        at += size
    return classes


@lru_cache(maxsize=1)
def _windows_core_classes() -> tuple[int, ...]:
    """Windows: the efficiency class of each physical core, every processor group (kernel32
    GetLogicalProcessorInformationEx); empty elsewhere or when the call fails."""
    if sys.platform != "win32":
        return ()
    try:
        kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
        size = ctypes.c_ulong(0)
        kernel32.GetLogicalProcessorInformationEx(0, None, ctypes.byref(size))  # fails, and says the size it needs
        buf = ctypes.create_string_buffer(size.value)
        if not size.value or not kernel32.GetLogicalProcessorInformationEx(0, buf, ctypes.byref(size)):
            return ()
        return tuple(_core_classes(buf.raw[: size.value]))
    except (AttributeError, OSError):
        return ()


class _MemoryCounters(ctypes.Structure):
    """Windows' PROCESS_MEMORY_COUNTERS: cb, PageFaultCount, then eight sizes, PeakWorkingSetSize first."""

    _fields_ = [("cb", ctypes.c_uint32), ("faults", ctypes.c_uint32), ("sizes", ctypes.c_size_t * 8)]


def _windows_peak_rss() -> int:
    """Windows: this process's peak working set (kernel32 K32GetProcessMemoryInfo), in bytes; 0 when unread."""
    try:
        kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
        kernel32.GetCurrentProcess.restype = ctypes.c_void_p
        get = kernel32.K32GetProcessMemoryInfo
        get.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MemoryCounters), ctypes.c_uint32]
        counters = _MemoryCounters(cb=ctypes.sizeof(_MemoryCounters))
        ok = get(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb)
        return int(counters.sizes[0]) if ok else 0
    except (AttributeError, OSError):
        return 0


def _first_block(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
        elif not line.strip() and out:
            break  # the first processor block is enough
    return out


def _flags_and_source() -> tuple[set[str], str]:
    info = _first_block(_cpuinfo_text())
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if flags:
        return flags, "/proc/cpuinfo"
    flags = _darwin_flags(_darwin())
    if flags:
        return flags, "sysctl"
    flags = _numpy_flags(_numpy_features())
    return flags, "numpy" if flags else ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags: Linux /proc/cpuinfo; macOS sysctl; elsewhere (Windows) numpy's run-time CPU
    detection, without AMX (``_NUMPY_FLAGS``); always in /proc/cpuinfo's spelling."""
    return _flags_and_source()[0]


def flags_source() -> str:
    """Where ``cpu_flags`` read this CPU's flags: "/proc/cpuinfo", "sysctl", "numpy" (no AMX there), or ""."""
    return _flags_and_source()[1]


# Arm Linux names no model in /proc/cpuinfo (or one as vague as "ARMv7 Processor rev 4 (v7l)"): each core's
# implementer and part codes do. Names for the common ones; others are named by their codes, which still tell
# CPUs apart (a Cortex-A53 and a Cortex-A72 board have the same flags and core count).
_ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2",
}


def _arm_cpu_name(text: str) -> str:
    """The cores of an Arm /proc/cpuinfo by implementer and part, each kind once in order ("Cortex-A55 +
    Cortex-A76" for a big.LITTLE chip), with the board's ``Model`` line where the kernel gives one (Raspberry
    Pi); empty where no core names its part."""
    parts: list[str] = []
    for block in text.split("\n\n"):
        info = _first_block(block)
        code = (info.get("CPU implementer", "").lower(), info.get("CPU part", "").lower())
        if all(code):
            name = _ARM_PARTS.get(code) or f"Arm {code[0]}/{code[1]}"
            parts += [name] if name not in parts else []
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    board = next((v.strip() for k, v in fields if k.strip() == "Model"), "")
    return " + ".join(parts) + (f" ({board})" if parts and board else "")


def cpu_model() -> str:
    """A human name for the CPU (``model name`` of /proc/cpuinfo, on Arm Linux its cores' part names
    (``_arm_cpu_name``), macOS's ``machdep.cpu.brand_string`` such as "Apple M2 Pro", Windows'
    ``ProcessorNameString``, else what ``platform`` says)."""
    text = _cpuinfo_text()
    info = _first_block(text)
    brand = _darwin().get("machdep.cpu.brand_string", "").strip() or _windows_cpu_name()
    return (
        _arm_cpu_name(text)
        or info.get("model name")
        or info.get("Model")
        or brand
        or platform.processor()
        or platform.machine()
        or "unknown"
    )


def logical_cores() -> int:
    """CPUs this process may run on (its affinity mask; a container's limit shows here; on Windows and macOS
    ``os.process_cpu_count`` where Python has it, 3.13 on, else every CPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = getattr(os, "process_cpu_count", os.cpu_count)
        return count() or 1


def _core_ids(only: set[int] | None = None) -> set[tuple[str, str]]:
    """(package, core) of each logical CPU in /proc/cpuinfo this process may use (and in ``only`` when given)."""
    allowed: set[int] | None
    try:
        allowed = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = None
    cores = set()
    for block in _cpuinfo_text().split("\n\n"):
        info = _first_block(block)
        if "processor" not in info:
            continue
        try:
            cpu = int(info["processor"])
        except ValueError:
            continue
        if (allowed is not None and cpu not in allowed) or (only is not None and cpu not in only):
            continue
        cores.add((info.get("physical id", "0"), info.get("core id", str(cpu))))
    return cores


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (SMT siblings counted once; on macOS and Windows all
    the machine's, there being no affinity mask to read)."""
    darwin = _darwin().get("hw.physicalcpu", "").strip()
    windows = len(_windows_core_classes())
    return len(_core_ids()) or (int(darwin) if darwin.isdigit() else 0) or windows or logical_cores()


def _sysfs(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def _cpu_list(text: str) -> set[int]:
    """A Linux CPU list ("0-3,8,10-11") as a set of CPU numbers; empty where it does not parse."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return set()
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


FAST_CAPACITY = 0.8  # a core at this share of the highest cpu_capacity or more counts as a fast one


def _fast_cpus() -> set[int]:
    """Linux: the logical CPUs of the fast kind where the CPU has slower cores beside them (Intel's P-cores,
    ``/sys/devices/cpu_core/cpus`` beside ``cpu_atom``; elsewhere, Arm big.LITTLE, the CPUs whose
    ``cpu_capacity`` is within FAST_CAPACITY of the highest); empty where all cores are alike or it is unknown."""
    p_cores = _cpu_list(_sysfs("/sys/devices/cpu_core/cpus"))
    if p_cores and _cpu_list(_sysfs("/sys/devices/cpu_atom/cpus")):
        return p_cores
    base = "/sys/devices/system/cpu"
    try:
        names = [n for n in os.listdir(base) if n[3:].isdigit() and n.startswith("cpu")]
    except OSError:
        return set()
    caps = {int(n[3:]): _sysfs(f"{base}/{n}/cpu_capacity") for n in names}
    caps_n = {cpu: int(v) for cpu, v in caps.items() if v.isdigit()}
    if not caps_n or len(set(caps_n.values())) < 2:
        return set()
    top = max(caps_n.values())
    return {cpu for cpu, v in caps_n.items() if v >= FAST_CAPACITY * top}


def performance_cores() -> int:
    """Physical cores of the fast kind on a CPU that also has slower ones (Intel P-cores beside E-cores, Arm big
    cores beside LITTLE ones, Apple's performance cores: ``hw.perflevel0.physicalcpu``), among those this process
    may use; Windows: the cores of the highest efficiency class; 0 where all cores are alike or it is unknown. A
    thread pool spread over fast and slow cores waits for the slow ones at every step, so `stedge tune` times this
    many threads too."""
    darwin = _darwin()
    if darwin.get("hw.nperflevels", "").strip() not in ("", "1"):
        value = darwin.get("hw.perflevel0.physicalcpu", "").strip()
        return int(value) if value.isdigit() and int(value) < physical_cores() else 0
    classes = _windows_core_classes()
    if classes:
        return classes.count(max(classes)) if len(set(classes)) > 1 else 0
    fast = _fast_cpus()
    n = len(_core_ids(fast)) if fast else 0
    return n if 0 < n < physical_cores() else 0


def _cgroup_folders(controller: str) -> list[tuple[str, str]]:
    """(cgroup version, folder) of every cgroup folder whose ``controller`` limits may bind this process: its own
    folder and each one above it, in the v2 hierarchy and in the v1 one that holds ``controller`` (mounted under
    its controller list, such as ``cpu,cpuacct``). Inside a container's own namespace the path is "/", and the
    hierarchy's root holds the container's limits."""
    out = []
    for line in _sysfs("/proc/self/cgroup").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            version, roots = "v2", ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        elif controller in controllers.split(","):
            version, roots = "v1", [f"/sys/fs/cgroup/{controllers}", f"/sys/fs/cgroup/{controller}"]
        else:
            continue
        parts = [p for p in path.split("/") if p]
        out += [(version, "/".join([r, *parts[:i]])) for r in dict.fromkeys(roots) for i in range(len(parts), -1, -1)]
    return out


def _quota_in(folder: str, version: str) -> float | None:
    """The CPU quota of one cgroup folder in CPUs (v2 ``cpu.max`` "200000 100000" -> 2.0, "max ..." -> None; v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, -1 -> None); None where the files are missing or odd."""
    if version == "v2":
        quota, _, period = _sysfs(f"{folder}/cpu.max").partition(" ")
    else:
        quota, period = _sysfs(f"{folder}/cpu.cfs_quota_us"), _sysfs(f"{folder}/cpu.cfs_period_us")
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_quota() -> float | None:
    """The CPU time per second, in CPUs, that this process's cgroup and the ones above it allow (Docker
    ``--cpus``, a Kubernetes CPU limit: cgroup v2 ``cpu.max``, v1 CFS quota), the tightest; None without a limit,
    off Linux, or where it cannot be read. The engines do not read it: sized to the host's cores, their thread
    pools are throttled in such a container (see ``quota_threads``)."""
    quotas = [q for version, folder in _cgroup_folders("cpu") if (q := _quota_in(folder, version)) is not None]
    return min(quotas) if quotas else None


def memory_limit_mb() -> float | None:
    """The memory this process's cgroup and the ones above it allow, in MB (a container's memory limit: v2
    ``memory.max``, v1 ``memory.limit_in_bytes``), the tightest; None without a limit, off Linux, or unread. A
    process past it is killed, which a choice's measured peak can be checked against (``select``)."""
    limits = []
    for version, folder in _cgroup_folders("memory"):
        text = _sysfs(f"{folder}/memory.max" if version == "v2" else f"{folder}/memory.limit_in_bytes")
        if text.isdigit() and 0 < int(text) < 2**60:  # v1 says "no limit" with a number near 2**63
            limits.append(int(text) / 2**20)
    return min(limits) if limits else None


def quota_threads() -> int | None:
    """Threads for an engine whose thread count is not set, where a CPU quota (``cpu_quota``) allows fewer CPUs
    than the physical cores it would otherwise take: the quota rounded up; None where no quota binds. Measured on
    a 2-core guest (MiniLM, batches of 32): under a 1-CPU quota one thread beat two by 1.15-1.33x, under 1.5 CPUs
    two beat one by 1.16-1.30x, so a fraction of a CPU is worth a thread (runtimes/python/README.md)."""
    quota = cpu_quota()
    if quota is None:
        return None
    n = max(1, math.ceil(quota - 1e-6))
    return n if n < physical_cores() else None


def usable_cores() -> int:
    """The thread count `stedge tune` and the harness start from: the physical cores this process may use, or
    fewer where a CPU quota binds (``quota_threads``)."""
    return quota_threads() or physical_cores()


def int8_isa(flags: set[str] | None = None) -> str:
    """The dynamic-int8 ISA of this CPU (``onnx-int8-<isa>``): arm64, avx512_vnni, avx512 or avx2."""
    mach = platform.machine().lower()
    if mach in ("aarch64", "arm64") or mach.startswith("arm"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    return "avx2"


def cpu_class(flags: set[str] | None = None) -> str:
    """What the selection rule knows about the CPU's matrix units, best first:

    ``amx`` (amx_bf16 / amx_int8: Intel Sapphire Rapids and later), ``avx512_bf16`` (bf16 dot products
    without AMX: AMD Zen 4/5, Intel Cooper Lake), ``vnni`` (int8 dot products: avx512_vnni or avx_vnni),
    ``arm64``, or ``plain`` (AVX2-class x86).
    """
    flags = cpu_flags() if flags is None else flags
    if {"amx_bf16", "amx_int8"} & flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if {"avx512_vnni", "avx512vnni", "avx_vnni"} & flags:
        return "vnni"
    if int8_isa(flags) == "arm64":
        return "arm64"
    return "plain"


def has_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively (avx512_bf16 or AMX; Arm bf16)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process.

    Linux: VmHWM from /proc/self/status (reset by exec, unlike getrusage's ru_maxrss, which a child
    started by fork+exec inherits from its parent). Windows: the peak working set (kernel32). Elsewhere:
    ru_maxrss (0 where even that is missing).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return _windows_peak_rss() if sys.platform == "win32" else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """Versions of the installed packages among ``names`` (package metadata; nothing is imported)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def engine_versions() -> dict[str, str]:
    """Installed engine versions (package metadata; nothing is imported)."""
    return installed_versions(ENGINES)


def slug(text: str, limit: int = 48) -> str:
    """Lower-case ``a-z0-9-`` form of a name, for folder and file names."""
    s = re.sub(r"\(r\)|\(tm\)|\bcpu\b|@.*$", "", text.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s[:limit].rstrip("-") or "unknown-cpu"


def isa_tag(flags: set[str] | None = None) -> str:
    """The matrix-unit class of the CPU as a folder-name part: ``amx``, ``avx512-bf16``, ``avx512-vnni``,
    ``avx-vnni``, ``avx512``, ``avx2`` or ``arm64``. CPU model names alone do not tell machines apart
    (a KVM guest says ``AMD EPYC`` on Zen 3 and Zen 4 alike), and these are what change the fastest variant."""
    flags = cpu_flags() if flags is None else flags
    cls = cpu_class(flags)
    if cls == "vnni":
        return "avx512-vnni" if {"avx512_vnni", "avx512vnni"} & flags else "avx-vnni"
    if cls == "plain":
        return int8_isa(flags)
    return cls.replace("_", "-")


def cpu_slug(flags: set[str] | None = None, model: str | None = None) -> str:
    """Folder name for this CPU's benchmark results: model name and ISA class, slugged
    (``amd-epyc-avx512-bf16`` for a Zen 4 guest, ``amd-epyc-avx2`` for a Zen 3 one)."""
    return f"{slug(model or cpu_model())}-{isa_tag(flags)}"


def machine_facts() -> dict[str, Any]:
    """The facts a tuning profile is keyed by: CPU model, arch, ISA flags, cores, engine versions (and, outside
    the key, where the flags came from, the fast cores and a container's CPU quota)."""
    flags, source = _flags_and_source()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "isa_flags": sorted(f for f in ISA_FLAGS if f in flags),
        "isa_flags_from": source,  # not part of the key
        "cpu_class": cpu_class(flags),
        "int8_isa": int8_isa(flags),
        "cores_physical": physical_cores(),
        "cpu_quota": cpu_quota(),  # in the key only where there is one
        "cores_performance": performance_cores(),  # not part of the key
        "cores_logical": logical_cores(),
        "engines": engine_versions(),
    }


def machine_key(facts: dict[str, Any] | None = None) -> str:
    """A file-name key for these facts: ``<cpu slug>-<cores>c-<hash of all facts>``.

    Two machines share a key only when CPU model, arch, ISA flags, core counts, engine versions and a
    container's CPU quota (where there is one) all agree, so a profile measured elsewhere (or before an engine
    upgrade, or under another CPU limit) is never read as this one's.
    """
    facts = machine_facts() if facts is None else facts
    keyed = {k: facts.get(k) for k in ("cpu", "arch", "isa_flags", "cores_physical", "cores_logical", "engines")}
    if facts.get("cpu_quota"):  # a container's CPU limit changes every timing (absent: keys stay as they were)
        keyed["cpu_quota"] = round(float(facts["cpu_quota"]), 2)
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug(str(facts.get('cpu') or 'unknown'), 32)}-{facts.get('cores_logical')}c-{digest}"
