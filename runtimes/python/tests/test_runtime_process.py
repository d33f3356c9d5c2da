"""Threads, memory over many calls, and the torch-free import (both in subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from stedge_runtime import Encoder, Reranker


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the a man woman dog plays guitar runs quickly across green field tomato kitchen".split()
    return [" ".join(rng.choice(words, int(k))) for k in rng.integers(0, 60, n)]


@pytest.mark.parametrize("variant", ["onnx-fp32", "openvino-fp32"])
def test_eight_threads_equal_one(tiny_artifact, variant):
    enc = Encoder.load(tiny_artifact, variant=variant, threads=1)
    jobs = [_texts(40, seed) for seed in range(16)]
    single = [enc.encode(t, batch_size=8) for t in jobs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda t: enc.encode(t, batch_size=8), jobs))
    for a, b in zip(single, threaded):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_reranker_threads(tiny_ce_artifact):
    rr = Reranker.load(tiny_ce_artifact)
    jobs = [[("query", d) for d in _texts(20, seed)] for seed in range(8)]
    single = [rr.predict(p) for p in jobs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(rr.predict, jobs))
    for a, b in zip(single, threaded):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _run(code: str, *args: str) -> str:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


RSS_CODE = r"""
import json, sys
import numpy as np
from stedge_runtime import Encoder

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

enc = Encoder.load(sys.argv[1], variant=sys.argv[2], threads=1)
words = "the a man woman dog plays guitar runs quickly across green field tomato kitchen".split()
rng = np.random.default_rng(0)
texts = [" ".join(rng.choice(words, int(k))) for k in rng.integers(0, 80, 500)]
calls, warm = 20000, 2000
for i in range(calls):
    enc.encode([texts[i % 500]] if i % 4 else texts[i % 97 : i % 97 + 1 + i % 13])
    if i == warm:
        start = rss_mb()
print(json.dumps({"start": start, "end": rss_mb()}))
"""


@pytest.mark.parametrize("variant", ["onnx-fp32", pytest.param("openvino-fp32", marks=pytest.mark.slow)])
def test_rss_flat_over_20k_calls(tiny_artifact, variant):
    res = json.loads(_run(RSS_CODE, str(tiny_artifact), variant))
    assert res["end"] <= res["start"] * 1.10, res


TORCH_FREE_CODE = r"""
import json, sys
from stedge_runtime import Encoder, Reranker
e = Encoder.load(sys.argv[1], variant=sys.argv[3])
e.encode(["hi", ""]); e.similarity(e.encode(["a"]), e.encode(["b"]))
Reranker.load(sys.argv[2], variant=sys.argv[3]).rank("q", ["a", "b"])
heavy = ("torch", "transformers", "sentence_transformers")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


@pytest.mark.parametrize("variant", ["onnx-fp32", "openvino-fp32"])
def test_torch_free(tiny_artifact, tiny_ce_artifact, variant):
    assert json.loads(_run(TORCH_FREE_CODE, str(tiny_artifact), str(tiny_ce_artifact), variant)) == []


def test_bench_runtime_example_times_calls_after_idle(tiny_artifact):
    """examples/bench_runtime.py, which the runtime README gives for measuring on one's own machine: cold start, RSS
    and batch-1 latency back to back and, with --idle-ms, after each pause."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "bench_runtime.py"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    args = [str(tiny_artifact), "--variant", "onnx-fp32", "--threads", "1", "--repeats", "1", "--calls", "12"]
    out = subprocess.run(
        [sys.executable, str(script), *args, "--idle-ms", "5"], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["variant"] == "onnx-fp32" and res["cold_start_s"] > 0 and res["rss_mb"] > 0
    assert 0 < res["p50_ms"] <= res["p90_ms"] and res["idle_ms"] == 5.0
    assert 0 < res["p50_after_idle_ms"] <= res["p90_after_idle_ms"]
