"""One subject, measured in its own process: ``python -m stedge.bench.worker JOB.json``.

The parent (runner.py) writes the job, starts this process and times it from process start to the
``FIRST_VECTOR`` line on stdout (cold start). Then, in order:

1. accuracy texts: embeds the STS texts once and saves them as ``embeddings.npy`` (the parent computes
   Spearman and cosine to the PyTorch fp32 reference; scipy never enters this process); a reranker scores the
   STS pairs instead (its inputs, pairs for texts everywhere, are the job's ``by_task`` files: task_job);
2. throughput: for each batch size, a warm-up pass over a slice, then ``repetitions`` timed passes over
   all throughput texts; then the same on passage-length texts (SciFact abstracts) at the bulk batch sizes;
3. latency: batch-1 calls on short queries after two warm-up passes over them (p50 / p95 / p99); then the
   subject's tokenizing alone on the same queries, where the subject exposes it (``tokenize_ms``); then,
   when the job sets ``idle_gap_ms``, the same queries again with the process idle that long before each call
   (an interactive app's queries: threads asleep, caches cooled);
4. memory: peak RSS of this process (VmHWM on Linux, else ``resource.getrusage``).

Lines ``STAGE <what>`` on stdout let the parent show progress. The result goes to ``result.json``.
Only numpy and the subject's own engine are imported here, so memory and cold start are the subject's.

``python -m stedge.bench.worker JOB.json --serve`` is the interleaved phase's worker (interleave.py): it
loads the subject, warms it up at the job's ``serve_batch_sizes``, prints ``READY`` and then answers each
``PASS <bs> ...`` line on stdin with one timed pass per batch size over the throughput texts (the first
``num_texts_batch1`` at batch size 1, as above; ``p<bs>``: over the passages), ``SECONDS <s> ...``, until
``QUIT``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return None


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process (stedge_runtime.machine.peak_rss_bytes)."""
    from stedge_runtime.machine import peak_rss_bytes

    return peak_rss_bytes()


def _batch1_ms(encode, queries: list[str], idle_s: float = 0.0) -> list[float]:
    """Milliseconds of ``encode([q], 1)`` for each query, each call after ``idle_s`` asleep (0: back to back)."""
    out = []
    for q in queries:
        if idle_s:
            time.sleep(idle_s)
        t = time.perf_counter()
        encode([q], 1)
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def _latency_figures(ms: list[float]) -> dict[str, float]:
    """p50 / p95 / p99, mean and count of per-call milliseconds."""
    return {**_percentiles(ms, (50, 95, 99)), "mean": float(sum(ms) / len(ms)), "n": len(ms)}


def _stage(what: str) -> None:
    print(f"STAGE {what}", flush=True)


def _percentiles(values: list[float], qs: tuple[float, ...]) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(values)
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one subject as the job says; returns the result dict (also written by main)."""
    import numpy as np

    from .subjects import from_spec

    threads = int(job["threads"])
    subject = from_spec(job["subject"])
    work = Path(job["work_dir"])
    t0 = time.perf_counter()
    encode = subject.load(threads)
    t_loaded = time.perf_counter()
    first = encode([job.get("first_text") or "hello world"], 1)
    t_first = time.perf_counter()
    print("FIRST_VECTOR", flush=True)
    result: dict[str, Any] = {
        "dimension": int(np.asarray(first).shape[-1]),
        "in_process": {"import_s": t0 - T_START, "load_s": t_loaded - t0, "first_encode_s": t_first - t_loaded},
        "rss_after_first_vector_mb": (_rss_bytes() or _peak_rss_bytes()) / 2**20,
    }
    if getattr(encode, "info", None):
        result["subject_info"] = encode.info

    # 1. accuracy texts (also a warm-up at the default batch size)
    acc_texts = json.loads(Path(job["accuracy_texts"]).read_text(encoding="utf-8"))
    _stage("accuracy")
    t = time.perf_counter()
    emb = np.asarray(encode(acc_texts, int(job.get("accuracy_batch_size", 32))), dtype=np.float32)
    result["accuracy_encode_s"] = time.perf_counter() - t
    np.save(work / "embeddings.npy", emb)

    # 2. throughput per batch size
    texts = json.loads(Path(job["texts"]).read_text(encoding="utf-8"))
    reps = int(job["repetitions"])
    through: dict[str, Any] = {}
    n1 = int(job.get("num_texts_batch1") or 0)
    for bs in job["batch_sizes"]:
        _stage(f"throughput bs={bs}")
        pass_texts = _pass_texts(texts, bs, n1)
        for _ in range(int(job.get("warmup", 1))):
            encode(pass_texts[: max(2 * bs, 16)], bs)
        through[str(bs)] = {"seconds": _timed_passes(encode, pass_texts, bs, reps)}
    result["throughput_raw"] = through

    # 2b. passage-length texts at the bulk batch sizes the job names (fewer texts, same protocol)
    if job.get("passages"):
        passages = json.loads(Path(job["passages"]).read_text(encoding="utf-8"))
        pthrough: dict[str, Any] = {}
        for bs in job.get("passage_batch_sizes") or []:
            _stage(f"passages bs={bs}")
            encode(passages[: max(bs, 8)], bs)
            pthrough[str(bs)] = {"seconds": _timed_passes(encode, passages, bs, reps)}
        result["passage_throughput_raw"] = pthrough

    # 3. batch-1 latency on short queries
    queries = json.loads(Path(job["queries"]).read_text(encoding="utf-8"))
    _stage("latency")
    warmup = (queries * 2)[: int(job.get("latency_warmup", 2 * len(queries)))]
    for q in warmup:  # twice over: a runtime may compile a query length the second time it sees it
        encode([q], 1)
    lat = [ms for _ in range(int(job.get("latency_rounds", 1))) for ms in _batch1_ms(encode, queries)]
    result["latency_ms"] = _latency_figures(lat)
    tokenize = getattr(encode, "tokenize", None)
    if tokenize is not None:  # 3a. the subject's tokenizing alone, on the same queries: its share of the p50
        tok = _batch1_ms(lambda items, _bs: tokenize(items), queries)
        result["tokenize_ms"] = _latency_figures(tok)
    gap_ms = float(job.get("idle_gap_ms") or 0)
    if gap_ms > 0:  # 3b. the same queries, each after the process sat idle: what an interactive app sees
        _stage(f"latency after {gap_ms:g} ms idle")
        idle = _batch1_ms(encode, queries, gap_ms / 1000.0)
        result["latency_after_idle_ms"] = {**_latency_figures(idle), "gap_ms": gap_ms}

    result["peak_rss_mb"] = _peak_rss_bytes() / 2**20
    return result


def serve(job: dict[str, Any]) -> None:
    """The interleaved phase's loop: load, warm up at every batch size, ``READY``; then ``PASS <bs> ...`` ->
    ``SECONDS <s> ...`` (one timed pass per batch size named, in that order; ``p<bs>`` is a pass over the
    passages), ``QUIT`` ends."""
    from .subjects import from_spec

    encode = from_spec(job["subject"]).load(int(job["threads"]))
    texts = json.loads(Path(job["texts"]).read_text(encoding="utf-8"))
    passages = json.loads(Path(job["passages"]).read_text(encoding="utf-8")) if job.get("passages") else []
    n1 = int(job.get("num_texts_batch1") or 0)

    def pass_of(size: str) -> tuple[list[str], int]:  # "32": short texts at batch size 32; "p32": passages
        if not size.startswith("p"):
            return _pass_texts(texts, int(size), n1), int(size)
        if not passages:
            raise ValueError(f"job {job['work_dir']}: pass {size!r} is over the passages, but the job has none")
        return passages, int(size[1:])

    for size in job["serve_batch_sizes"]:  # a whole warm-up pass: every shape the timed passes meet (batch 1
        for _ in range(2 if str(size) == "1" else 1):  # twice: a runtime may compile a length on its second sight)
            encode(*pass_of(str(size)))
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "PASS":
            secs = [_timed_passes(encode, *pass_of(size), 1)[0] for size in words[1:]]
            print("SECONDS " + " ".join(repr(x) for x in secs), flush=True)
        elif words == ["QUIT"]:
            break


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m stedge.bench.worker JOB.json [--serve]``; writes result.json into the job's
    work_dir (``--serve``: the interleaved phase's loop, see serve)."""
    args = sys.argv[1:] if argv is None else argv
    job = task_job(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    if "--serve" in args[1:]:
        serve(job)
        return 0
    work = Path(job["work_dir"])
    try:
        res = run_job(job)
        res["status"] = "ok"
    except Exception as e:  # reported in the results row; the parent decides what to do
        import traceback

        res = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    tmp = work / "result.json.tmp"
    tmp.write_text(json.dumps(res), encoding="utf-8")
    os.replace(tmp, work / "result.json")
    return 0 if res["status"] == "ok" else 1


def task_job(job: dict[str, Any]) -> dict[str, Any]:
    """The job as its subject's task reads it: a reranker's inputs, (query, passage) pairs, replace the texts
    (``by_task["reranking"]``: texts, queries, accuracy_texts, passages, first_text)."""
    task = job["subject"].get("task", "embedding")
    return {**job, **(job.get("by_task") or {}).get(task, {})}


def _pass_texts(texts: list[str], bs: int, n1: int) -> list[str]:
    """The texts of one throughput pass: the first ``n1`` at batch size 1 (when set), else all."""
    return texts[:n1] if bs == 1 and n1 else texts


def _timed_passes(encode, texts: list[str], bs: int, reps: int) -> list[float]:
    """Seconds of ``reps`` full passes of ``encode(texts, bs)``."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        encode(texts, bs)
        times.append(time.perf_counter() - t)
    return times


if __name__ == "__main__":
    sys.exit(main())
