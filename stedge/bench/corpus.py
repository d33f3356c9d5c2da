"""The corpus benchmark: rows/s and peak memory of `stedge embed-corpus` on SciFact-like passages, beside
the runtime's own bulk ``Encoder.encode`` and sentence-transformers' ``SentenceTransformer.encode`` of the
same texts in one process.

A suite with ``kind = "corpus"`` (``stedge bench corpus``) runs it. Passages are made by recombining
SciFact corpus sentences (title of one document, 3-6 sentences of others; seeded), so any number of
distinct passage-length texts can be generated from the shared data. Each subject runs in its own
process with the suite's thread budget; peak RSS is the high-water mark of the subject's whole process
tree (Ray's raylet and workers included), sampled every 50 ms.

    stedge bench corpus                 # 100k passages: long on a small CPU
    stedge bench corpus --quick         # 2,000 passages: a look
"""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomllib

from ..errors import StedgeError

SUBJECTS = ("runtime-encode", "corpus-local", "corpus-ray", "st-encode")


@dataclass
class CorpusSuite:
    """A corpus benchmark suite (``kind = "corpus"`` in the TOML)."""

    name: str
    file: str
    model: str = "all-MiniLM-L6-v2"
    variant: str = "onnx-fp32"
    passages: int = 100_000
    source: str = "ir/scifact/corpus.jsonl.gz"
    threads: int = 0
    batch_size: int = 32
    ray_workers: int = 2
    subjects: list[str] = field(default_factory=lambda: list(SUBJECTS))
    timeout_s: int = 7200
    models_dir: str = "models"
    description: str = ""
    kind: str = "corpus"


def is_corpus_suite(path: Path) -> bool:
    """True when the suite file says ``kind = "corpus"``."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")).get("kind") == "corpus"
    except (OSError, tomllib.TOMLDecodeError):
        return False


def load_corpus_suite(path: Path) -> CorpusSuite:
    """Read a corpus suite; unknown keys and subjects are errors naming them."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    allowed = set(CorpusSuite.__dataclass_fields__) - {"name", "file"}
    name = str(data.pop("name", path.stem))
    unknown = set(data) - allowed
    if unknown:
        raise StedgeError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    suite = CorpusSuite(name=name, file=str(path), **data)
    bad = [s for s in suite.subjects if s not in SUBJECTS]
    if bad:
        raise StedgeError(f"{path}: unknown subject(s) {', '.join(bad)}; known: {', '.join(SUBJECTS)}")
    return suite


def make_passages(source: Path, n: int, out: Path, seed: int = 0) -> Path:
    """Write ``n`` distinct SciFact-like passages (JSONL with ``id`` and ``text``) to ``out`` (cached)."""
    if out.is_file() and sum(1 for _ in open(out, encoding="utf-8")) == n:
        return out
    docs = [json.loads(line) for line in gzip.open(source, "rt", encoding="utf-8")]
    sentences = [s for d in docs for s in re.split(r"(?<=[.!?])\s+", d.get("text") or "") if len(s) > 20]
    titles = [d.get("title") or "" for d in docs]
    rng = random.Random(seed)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            body = " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"id": f"p{i}", "text": f"{rng.choice(titles)}. {body}"}) + "\n")
    tmp.replace(out)
    return out


def _peak_tree_rss(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for ``proc`` while sampling the RSS of its process tree; return the highest sum seen."""
    import psutil

    peak = 0
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise StedgeError(f"a corpus benchmark subject ran past timeout_s={timeout:g}")
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    return peak


WORKER = r"""
import json, sys, time
kind, target, passages, threads, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
texts = [json.loads(l)["text"] for l in open(passages, encoding="utf-8")]
t0 = time.perf_counter()
if kind == "runtime-encode":
    from stedge_runtime import Encoder
    enc = Encoder.load(target, variant=sys.argv[6], threads=threads, route=False)
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    enc.encode(texts, batch_size=batch)
else:
    import torch
    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(target, device="cpu")
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.encode(texts, batch_size=batch)
seconds = time.perf_counter() - t1
print(json.dumps({"rows": len(texts), "seconds": seconds, "load_s": load}))
"""


def _command(
    subject: str, suite: CorpusSuite, model_path: Path, artifact: Path, passages: Path, work: Path, threads: int
) -> list[str]:
    if subject in ("runtime-encode", "st-encode"):
        target = artifact if subject == "runtime-encode" else model_path
        return [
            sys.executable,
            "-c",
            WORKER,
            subject,
            str(target),
            str(passages),
            str(threads),
            str(suite.batch_size),
            suite.variant,
        ]
    out = work / f"out-{subject}"
    cmd = [
        sys.executable,
        "-m",
        "stedge.cli",
        "embed-corpus",
        str(artifact),
        str(passages),
        "--id-column",
        "id",
        "-o",
        str(out),
        "--overwrite",
        "--json",
        "--variant",
        suite.variant,
        "--batch-size",
        str(suite.batch_size),
    ]
    if subject == "corpus-ray":
        per = max(1, threads // suite.ray_workers)
        return cmd + ["--engine", "ray", "--workers", str(suite.ray_workers), "--threads", str(per)]
    return cmd + ["--threads", str(threads)]


def run_subject(subject: str, cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one subject's process; its rows/s (the job's own timing), wall time and peak tree RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = _peak_tree_rss(proc, timeout)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"subject": subject, "status": "error", "reason": (stderr.strip().splitlines() or ["?"])[-1]}
    data = json.loads(stdout[stdout.index("{") :])
    rows, seconds = int(data["rows"]), float(data["seconds"])
    return {
        "subject": subject,
        "status": "ok",
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
    }


def run_corpus_suite(
    suite: CorpusSuite,
    out_dir: Path,
    threads: int | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every subject of a corpus suite and write results.json / results.md to ``out_dir``."""
    from stedge.data import resolve_data_path
    from stedge.hub import resolve_model

    from . import work_root
    from .build import build_variants
    from .machine import machine_facts
    from .runner import resolve_threads, thread_env

    n = min(suite.passages, 2000) if quick else suite.passages
    threads = resolve_threads(suite.threads if threads is None else threads)
    work = work_root() / suite.models_dir / f"bench-{suite.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    passages = make_passages(resolve_data_path(suite.source), n, work / f"passages-{n}.jsonl")
    model_path = resolve_model(suite.model)
    artifact = build_variants(
        model_path, work_root() / suite.models_dir / f"{Path(suite.model).name}-bench", [suite.variant], log=log
    )
    env = thread_env(threads)
    rows = []
    for subject in suite.subjects:
        log(f"{subject}: {n} passages, {threads} threads")
        cmd = _command(subject, suite, model_path, artifact, passages, work, threads)
        rows.append(run_subject(subject, cmd, env, suite.timeout_s))
        log(f"  {json.dumps(rows[-1])}")
    base = next((r for r in rows if r["subject"] == "runtime-encode" and r["status"] == "ok"), None)
    st = next((r for r in rows if r["subject"] == "st-encode" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] == "ok":
            r["x_runtime_encode"] = round(r["rows_per_s"] / base["rows_per_s"], 3) if base else None
            r["x_sentence_transformers"] = round(r["rows_per_s"] / st["rows_per_s"], 3) if st else None
    results = {
        "suite": suite.name,
        "kind": "corpus",
        "passages": n,
        "threads": threads,
        "variant": suite.variant,
        "model": suite.model,
        "machine": machine_facts(with_gpu=False),
        "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(corpus_table(results) + "\n")
    return results


def corpus_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = [
        f"{results['passages']} SciFact-like passages, {results['model']} {results['variant']}, "
        f"{results['threads']} threads, {results['date']}",
        "",
        "| subject | rows/s | x runtime encode | x sentence-transformers | wall s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['subject']} | failed: {r['reason']} | | | | |")
            continue
        lines.append(
            f"| {r['subject']} | {r['rows_per_s']:.1f} | {r['x_runtime_encode'] or '-'} | "
            f"{r['x_sentence_transformers'] or '-'} | {r['wall_s']} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)
