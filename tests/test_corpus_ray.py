"""embed-corpus on Ray Data: one local Ray instance (2 CPUs) for the module; same vectors and shards as the
local engine, resume across engines, errors from workers and bad addresses."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from stedge.corpus import embed_corpus, read_corpus
from stedge.errors import StedgeError

pytestmark = pytest.mark.filterwarnings("ignore:.*batch-invariance", "ignore::DeprecationWarning")
TEXTS = [f"text number {i} " + "lorem ipsum " * (i % 9) for i in range(300)]


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("ray[data] is missing under CI=true: pip install 'stedge[ray]' (the dev extra has it)")
        pytest.skip("ray[data] is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    from stedge.export import export_model

    return Path(export_model(str(tiny_model), tmp_path_factory.mktemp("ray_art") / "art", backend="onnx").path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("ray_in")
    (d / "a.jsonl").write_text("".join(json.dumps({"k": f"a{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:180])))
    (d / "b.jsonl").write_text("".join(json.dumps({"k": f"b{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[180:])))
    return [str(d / "a.jsonl"), str(d / "b.jsonl")]


@pytest.fixture(scope="module")
def local_run(artifact, inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray_local") / "out"
    embed_corpus(str(artifact), inputs, out, id_column="k", shard_rows=70, chunk_rows=32)
    return out


def test_ray_two_workers_equal_the_local_engine(ray_local, artifact, inputs, local_run, tmp_path):
    out = tmp_path / "ray"
    s = embed_corpus(str(artifact), inputs, out, id_column="k", shard_rows=70, chunk_rows=32, engine="ray", workers=2)
    assert (s["engine"], s["rows"], s["shards"], s["done"]) == ("ray", 300, 5, True)
    ray_m = json.loads((out / "corpus.json").read_text())
    local_m = json.loads((local_run / "corpus.json").read_text())
    assert [(e["rows"], e["start"], e["end"]) for e in ray_m["shards"]] == [
        (e["rows"], e["start"], e["end"]) for e in local_m["shards"]
    ]
    a, b = read_corpus(local_run), read_corpus(out)
    assert a[0] == b[0] == [f"a{i}" for i in range(180)] + [f"b{i}" for i in range(120)]
    np.testing.assert_allclose(b[1], a[1], atol=1e-5)


# A run that dies after its third shard, in a process of its own: a crashed run is a process that ended, and a Ray
# pipeline abandoned mid-run in this process cancels its tasks in flight, which can abort the process on a race inside
# Ray itself (ray 2.60: "Check failed: it != submissible_tasks_.end() Tried to complete task that was not pending", a
# RAY_CHECK, as in ray-project/ray#54527): it ended a whole pytest run once.
CRASHING_RUN = """
import sys
from stedge.corpus import embed_corpus

def crash(entry):
    if entry["file"] == "shard-00002.parquet":
        sys.stdout.flush()
        raise SystemExit(3)

art, out, engine, *inputs = sys.argv[1:]
embed_corpus(art, inputs, out, id_column="k", shard_rows=70, chunk_rows=32, engine=engine, on_shard=crash)
"""


def test_ray_resumes_a_crashed_run_of_either_engine(ray_local, artifact, inputs, local_run, tmp_path):
    import subprocess
    import sys

    for first in ("local", "ray"):
        out = tmp_path / first
        run = [sys.executable, "-c", CRASHING_RUN, str(artifact), str(out), first, *inputs]
        died = subprocess.run(run, capture_output=True, text=True, timeout=300)
        assert died.returncode != 0, died.stdout + died.stderr  # 3, or Ray's abort after it
        s = embed_corpus(str(artifact), inputs, out, id_column="k", shard_rows=70, chunk_rows=32, engine="ray")
        assert s["resumed_from_row"] == 210 and s["rows"] == 300
        a, b = read_corpus(local_run), read_corpus(out)
        assert a[0] == b[0]
        np.testing.assert_allclose(b[1], a[1], atol=1e-5)


def test_a_bad_row_in_a_worker_names_file_and_line(ray_local, artifact, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": None}) + "\n")
    with pytest.raises(StedgeError, match=r"bad.jsonl:2: 'text' is null \(pass --skip-bad-rows"):
        embed_corpus(str(artifact), [str(bad)], tmp_path / "o", engine="ray")
    s = embed_corpus(str(artifact), [str(bad)], tmp_path / "o", engine="ray", skip_bad_rows=True)
    assert (s["rows"], s["skipped_rows"]) == (1, 1)


def test_an_address_that_does_not_answer_is_named(artifact, inputs, tmp_path):
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StedgeError, match=f"Ray address 127.0.0.1:{port} does not answer"):
        embed_corpus(str(artifact), inputs, tmp_path / "o", engine="ray", address=f"127.0.0.1:{port}")
    assert not (tmp_path / "o").exists()
    with pytest.raises(StedgeError, match="--address 'nonsense'"):
        embed_corpus(str(artifact), inputs, tmp_path / "o", engine="ray", address="nonsense")


def test_ray_stores_quantized_vectors_as_the_local_engine(ray_local, artifact, inputs, tmp_path):
    """--precision on Ray: the driver quantizes what the actors return with the same ranges as locally."""
    import pyarrow.parquet as pq

    for precision, cal in (("ubinary", None), ("int8", inputs[1])):
        runs = {}
        for engine in ("local", "ray"):
            out = tmp_path / f"{precision}-{engine}"
            kw = {"engine": engine, "workers": 2} if engine == "ray" else {}
            s = embed_corpus(
                str(artifact), inputs, out, id_column="k", shard_rows=100, precision=precision, calibration=cal, **kw
            )
            assert (s["rows"], s["precision"]) == (300, precision)
            runs[engine] = (json.loads((out / "corpus.json").read_text()), sorted(out.glob("*.parquet")))
        (m_local, f_local), (m_ray, f_ray) = runs["local"], runs["ray"]
        assert m_ray["ranges"] == m_local["ranges"] and m_ray["width"] == m_local["width"]
        for a, b in zip(f_local, f_ray, strict=True):
            ta, tb = pq.read_table(a), pq.read_table(b)
            assert ta.column("id").to_pylist() == tb.column("id").to_pylist()
            va = np.asarray(ta.column("vector").to_pylist(), dtype=np.int64)
            vb = np.asarray(tb.column("vector").to_pylist(), dtype=np.int64)
            # the same codes, up to a value sitting on a bucket edge (float sums differ in the last bit)
            assert np.mean(va != vb) < 0.002 and np.abs(va - vb).max() <= 1
