"""Informational numbers for one artifact: cold start, RSS and batch-1 latency (the harness in
benchmarks/ owns the official ones; it can call ``cold_start`` and ``batch1_latency`` directly).

    python runtimes/python/examples/bench_runtime.py ARTIFACT [--variant onnx-fp32] [--threads 1]
        [--texts file.txt] [--repeats 5] [--calls 1000] [--idle-ms 50]

Cold start = a new Python process from spawn to the first vector of
``Encoder.load(P).encode(['hi'])``; RSS is that process's resident set after the first vector
(VmRSS) and its peak (VmHWM); ``cold_start_cpu_s`` is its CPU time (user + sys), which a busy
machine inflates less than wall time. Linux only (reads /proc). ``--idle-ms`` also times batch-1 calls
that each come after that long asleep, as an interactive app's queries do (``p50_after_idle_ms``): back-to-back
calls find the engine's threads awake and its weights in cache, and after a pause a machine may need several
times as long (see the runtime README, "Speed notes").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COLD = r"""
import sys
from stedge_runtime import Encoder
e = Encoder.load(sys.argv[1], variant=sys.argv[2] or None, threads=int(sys.argv[3]) or None)
e.encode(['hi'])
vm = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('Vm')}
print(vm['VmRSS'] // 1024, vm['VmHWM'] // 1024)
"""

SHORT_QUERIES = [
    "how do I reset my password",
    "best pizza near me",
    "what is the capital of France",
    "symptoms of the flu",
    "cheap flights to Tokyo",
    "a man is playing a guitar",
]


def cold_start(path: str, variant: str | None = None, threads: int | None = None, repeats: int = 5) -> dict:
    """Median wall time (s) of a new process to the first vector, and its RSS / peak RSS (MB)."""
    import resource

    times, cpu, rss, peak = [], [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [sys.executable, "-c", COLD, path, variant or "", str(threads or 0)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - t)
        c2 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(c2.ru_utime + c2.ru_stime - c.ru_utime - c.ru_stime)
        r, p = map(int, out.stdout.split()[-2:])
        rss.append(r)
        peak.append(p)
    return {
        "cold_start_s": statistics.median(times),
        "cold_start_min_s": min(times),
        "cold_start_cpu_s": statistics.median(cpu),
        "rss_mb": statistics.median(rss),
        "peak_rss_mb": statistics.median(peak),
    }


def batch1_latency(
    path: str,
    texts: list[str],
    variant: str | None = None,
    threads: int | None = None,
    calls: int = 1000,
    idle_ms: float = 0.0,
) -> dict:
    """p50 / p90 / mean of encode([text]) in ms over ``calls`` calls cycling through ``texts`` (after 50
    warm-up calls). ``p50_cpu_ms`` is the calling thread's CPU time per call: with threads=1 ONNX
    Runtime computes in the calling thread, so it estimates the latency on an idle core even when
    the machine is busy. With ``idle_ms`` > 0, also p50 / p90 of min(calls, 100) calls each made after
    sleeping that long (``p50_after_idle_ms``)."""
    from stedge_runtime import Encoder

    enc = Encoder.load(path, variant=variant, threads=threads)
    for t in texts[:50]:
        enc.encode([t])
    lat, cpu = _timed_calls(enc, texts, calls)
    out = {
        "variant": enc.variant,
        "p50_ms": lat[len(lat) // 2],
        "p90_ms": lat[int(len(lat) * 0.9)],
        "mean_ms": statistics.fmean(lat),
        "p50_cpu_ms": cpu[len(cpu) // 2],
    }
    if idle_ms > 0:
        idle, _ = _timed_calls(enc, texts, min(calls, 100), idle_ms / 1000)
        out.update(
            idle_ms=idle_ms, p50_after_idle_ms=idle[len(idle) // 2], p90_after_idle_ms=idle[int(len(idle) * 0.9)]
        )
    return out


def _timed_calls(enc, texts: list[str], calls: int, idle_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Sorted wall and calling-thread CPU milliseconds of ``calls`` one-text calls cycling through ``texts``,
    each after ``idle_s`` asleep (0: back to back)."""
    lat, cpu = [], []
    for i in range(calls):
        if idle_s:
            time.sleep(idle_s)
        t, c = time.perf_counter(), time.thread_time()
        enc.encode([texts[i % len(texts)]])
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return sorted(lat), sorted(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--variant")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--texts", help="a text file, one query per line (default: a few short queries)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--idle-ms", type=float, default=0.0, help="also time calls each made after this long idle")
    a = ap.parse_args()
    texts = SHORT_QUERIES
    if a.texts:
        with open(a.texts, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    res = {
        **cold_start(a.artifact, a.variant, a.threads, a.repeats),
        **batch1_latency(a.artifact, texts, a.variant, a.threads, a.calls, a.idle_ms),
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
