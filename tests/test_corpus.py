"""embed-corpus, local engine: formats, shards, resume after a crash or kill -9, bad input, flat memory."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stedge.corpus import embed_corpus, read_corpus
from stedge.errors import StedgeError

pytestmark = pytest.mark.filterwarnings("ignore:.*batch-invariance")
REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    f"document {i}: " + " ".join(["alpha", "beta", "gamma", "delta", "epsilon"][: 1 + i % 5] * (1 + i % 7))
    for i in range(230)
]


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    from stedge.export import export_model

    return Path(export_model(str(tiny_model), tmp_path_factory.mktemp("corpus_art") / "art", backend="onnx").path)


@pytest.fixture(scope="module")
def reference(artifact) -> np.ndarray:
    from stedge_runtime import Encoder

    return Encoder.load(artifact).encode(TEXTS)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _docs(tmp_path: Path, name: str = "docs.jsonl") -> Path:
    return _jsonl(tmp_path / name, [{"doc_id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])


def _run(artifact, inputs, out, **kw):
    return embed_corpus(str(artifact), [str(i) for i in inputs], out, **kw)


# --------------------------------------------------------------------------- formats and layout
def test_every_format_gives_the_runtime_vectors(artifact, reference, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    _docs(tmp_path, "b.jsonl")
    with gzip.open(tmp_path / "c.tsv.gz", "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["doc_id", "text"])
        w.writerows([f"d{i}", t] for i, t in enumerate(TEXTS))
    with open(tmp_path / "d.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["doc_id", "text"])
        w.writerows([f"d{i}", t] for i, t in enumerate(TEXTS))
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS}), tmp_path / "e.parquet")
    for name in ("a.txt", "b.jsonl", "c.tsv.gz", "d.csv", "e.parquet"):
        id_col = None if name.endswith(".txt") else "doc_id"
        out = tmp_path / f"out-{name}"
        s = _run(artifact, [tmp_path / name], out, id_column=id_col, shard_rows=100, chunk_rows=64)
        assert (s["rows"], s["shards"], s["done"]) == (len(TEXTS), 3, True), name
        ids, vec = read_corpus(out)
        want = [str(i + 1) for i in range(len(TEXTS))] if id_col is None else [f"d{i}" for i in range(len(TEXTS))]
        assert ids == want
        np.testing.assert_allclose(vec, reference, atol=1e-5, err_msg=name)


def test_shard_schema_manifest_and_float16(artifact, reference, tmp_path):
    import hashlib

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    s = _run(artifact, [_docs(tmp_path)], out, id_column="doc_id", shard_rows=100, dtype="float16")
    m = json.loads((out / "corpus.json").read_text())
    assert (m["dtype"], m["precision"], m["dimension"], m["done"]) == ("float16", "float16", reference.shape[1], True)
    assert [sh["rows"] for sh in m["shards"]] == [100, 100, 30]
    assert [sh["row_start"] for sh in m["shards"]] == [0, 100, 200] and m["shards"][-1]["end"] == [0, len(TEXTS)]
    assert m["model"]["variant"] == "onnx-fp32" and m["model"]["sha256"] and m["inputs"][0]["size"] > 0
    t = pq.read_table(out / "shard-00001.parquet")
    assert str(t.schema.field("vector").type) == f"fixed_size_list<element: halffloat>[{reference.shape[1]}]"
    assert t.column("text_sha256")[0].as_py() == hashlib.sha256(TEXTS[100].encode()).hexdigest()
    ids, vec = read_corpus(out)
    assert vec.dtype == np.float16 and s["dtype"] == "float16"
    np.testing.assert_allclose(vec.astype(np.float32), reference, atol=2e-3)


def test_many_files_and_globs_keep_order_and_prefix_line_ids(artifact, reference, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p1.txt").write_text("\n".join(TEXTS[:100]), encoding="utf-8")
    (tmp_path / "in" / "p2.txt").write_text("\n".join(TEXTS[100:]), encoding="utf-8")
    out = tmp_path / "out"
    s = _run(artifact, [tmp_path / "in" / "p*.txt"], out, shard_rows=64)
    ids, vec = read_corpus(out)
    assert s["rows"] == len(TEXTS) and ids[0].endswith("p1.txt:1") and ids[100].endswith("p2.txt:1")
    np.testing.assert_allclose(vec, reference, atol=1e-5)


def test_reader_with_absolute_paths_keeps_ids_and_names(tmp_path, monkeypatch):
    from stedge.corpus.reader import CorpusReader

    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_text("one\ntwo\n")
    Path("b.txt").write_text("three\n\n")
    reader = CorpusReader([Path("a.txt"), Path("b.txt")])
    moved = reader.absolute()
    assert moved.files[0].is_absolute()
    rows = [(r[2], r[4]) for fi in range(2) for r in reader.records(fi)]
    assert rows == [(r[2], r[4]) for fi in range(2) for r in moved.records(fi)]
    assert rows == [("a.txt:1", None), ("a.txt:2", None), ("b.txt:1", None), ("b.txt:2", "'text' is empty")]


def test_plain_model_through_torch(tiny_model, tmp_path):
    from stedge.models import SentenceEncoder

    out = tmp_path / "out"
    s = embed_corpus(str(tiny_model), [str(_docs(tmp_path))], out, shard_rows=1000, normalize=True)
    assert s["variant"] is None and json.loads((out / "corpus.json").read_text())["model"]["kind"] == "model"
    ref = SentenceEncoder(str(tiny_model), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(read_corpus(out)[1], ref, atol=1e-5)


def test_a_memory_budget_reaches_each_encoder(artifact, tiny_model, tmp_path):
    """--max-memory-mb is Encoder.load's budget per encoder: here, with no tuning profile, it says it was not
    checked; on a torch model it is refused."""
    docs = _docs(tmp_path)
    with pytest.warns(RuntimeWarning, match="max_memory_mb=50 was not checked"):
        s = embed_corpus(str(artifact), [str(docs)], tmp_path / "out", max_memory_mb=50)
    assert s["rows"] == len(TEXTS) and s["variant"] == "onnx-fp32"
    with pytest.raises(StedgeError, match="--max-memory-mb apply to exported artifacts only"):
        embed_corpus(str(tiny_model), [str(docs)], tmp_path / "plain", max_memory_mb=50)


def test_warns_when_the_variant_is_not_known_to_be_batch_invariant(artifact, tmp_path):
    import shutil
    import warnings

    docs = _docs(tmp_path)
    for value, warns in ((None, True), (1.0, False)):
        art = tmp_path / f"art-{value}"
        shutil.copytree(artifact, art)
        manifest = json.loads((art / "stedge.json").read_text())
        ver = manifest["variants"]["onnx-fp32"]["verification"]
        ver.pop("batch_invariance_min_cos", None)
        if value is not None:
            ver["batch_invariance_min_cos"] = value
        (art / "stedge.json").write_text(json.dumps(manifest))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            embed_corpus(str(art), [str(docs)], tmp_path / f"out-{value}")
        msgs = [str(w.message) for w in seen if "batch-invariance" in str(w.message)]
        assert bool(msgs) == warns, msgs
        if warns:
            assert "onnx-fp32" in msgs[0] and "--variant" in msgs[0]


# --------------------------------------------------------------------------- resume
def test_crash_midway_then_resume_equals_an_uninterrupted_run(artifact, tmp_path):
    docs = _docs(tmp_path)
    full = tmp_path / "full"
    _run(artifact, [docs], full, id_column="doc_id", shard_rows=40, chunk_rows=16)

    class Crash(Exception):
        pass

    def crash_after_two(entry):
        if entry["file"] == "shard-00002.parquet":
            raise Crash

    part = tmp_path / "part"
    with pytest.raises(Crash):
        _run(artifact, [docs], part, id_column="doc_id", shard_rows=40, chunk_rows=16, on_shard=crash_after_two)
    m = json.loads((part / "corpus.json").read_text())
    assert len(m["shards"]) == 3 and not m["done"]
    assert not [p for p in part.iterdir() if p.name.startswith(".")], "the shard being written is dropped"
    s = _run(artifact, [docs], part, id_column="doc_id", shard_rows=40, chunk_rows=16)
    assert s["resumed_from_row"] == 120 and s["rows_this_run"] == len(TEXTS) - 120
    a, b = read_corpus(full), read_corpus(part)
    assert a[0] == b[0] and len(set(b[0])) == len(TEXTS)
    assert np.array_equal(a[1], b[1])
    again = _run(artifact, [docs], part, id_column="doc_id", shard_rows=40)
    assert again["already_complete"] and again["rows_this_run"] == 0


def test_kill_9_midway_then_resume(artifact, tmp_path):
    """A real `kill -9` of the CLI while it writes; the same command finishes the job, equal to one run."""
    n = 20_000
    docs = _jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": f"passage {i} " + "word " * (i % 13)} for i in range(n)])
    cmd = [
        sys.executable,
        "-m",
        "stedge.cli",
        "embed-corpus",
        str(artifact),
        str(docs),
        "--id-column",
        "id",
        "--shard-rows",
        "500",
        "--batch-size",
        "16",
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "runtimes" / "python")])}
    part = tmp_path / "part"
    proc = subprocess.Popen([*cmd, "-o", str(part)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads((part / "corpus.json").read_text())["shards"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = json.loads((part / "corpus.json").read_text())
    assert not m["done"] and 2 <= len(m["shards"]) < n // 500, "the kill must land midway"
    done = subprocess.run([*cmd, "-o", str(part), "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["resumed_from_row"] == 500 * len(m["shards"]) and s["rows"] == n
    full = tmp_path / "full"
    _run(artifact, [docs], full, id_column="id", shard_rows=500, batch_size=16)
    a, b = read_corpus(full), read_corpus(part)
    assert a[0] == b[0] == [str(i) for i in range(n)]
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_changed_input_or_model_is_refused_unless_overwrite(artifact, tiny_model, tmp_path):
    docs = _docs(tmp_path)
    out = tmp_path / "out"
    _run(artifact, [docs], out, shard_rows=100)
    original = docs.read_bytes()
    _jsonl(docs, [{"text": t + " changed"} for t in TEXTS])
    with pytest.raises(StedgeError, match="docs.jsonl changed since the shards were written.*--overwrite"):
        _run(artifact, [docs], out, shard_rows=100)
    docs.write_bytes(original)
    with pytest.raises(StedgeError, match="model's path changed.*--overwrite"):
        embed_corpus(str(tiny_model), [str(docs)], out, shard_rows=100)
    with pytest.raises(StedgeError, match="settings changed"):
        _run(artifact, [docs], out, shard_rows=50)
    s = _run(artifact, [docs], out, shard_rows=100, overwrite=True)
    assert s["rows"] == len(TEXTS) and s["resumed_from_row"] is None


# --------------------------------------------------------------------------- bad input
def test_bad_rows_name_file_and_line_and_can_be_skipped(artifact, tmp_path):
    docs = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": t}).encode() for t in TEXTS[:50]]
    lines[9] = b'{"text": "caf\xe9 latin-1"}'
    lines[19] = json.dumps({"text": ""}).encode()
    lines[29] = json.dumps({"text": None}).encode()
    lines[39] = b'{"text": broken'
    lines[44] = json.dumps({"title": "no text"}).encode()
    docs.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(StedgeError, match=r"docs.jsonl:10: not UTF-8 \(byte 0xe9.*--skip-bad-rows"):
        _run(artifact, [docs], tmp_path / "o1")
    assert not (tmp_path / "o1").exists(), "a run that failed before its first shard leaves nothing"
    s = _run(artifact, [docs], tmp_path / "o2", skip_bad_rows=True, shard_rows=20)
    assert (s["rows"], s["skipped_rows"]) == (45, 5)
    m = json.loads((tmp_path / "o2" / "corpus.json").read_text())
    reasons = [b["where"].rsplit(":", 1)[1] + " " + b["reason"] for sh in m["shards"] for b in sh["bad_rows"]]
    assert reasons == [
        "10 not UTF-8 (byte 0xe9 at column 14)",
        "20 'text' is empty",
        "30 'text' is null",
        "40 not valid JSON (Expecting value at column 10)",
        "45 no field 'text'",
    ]
    ids, _ = read_corpus(tmp_path / "o2")
    assert "10" not in ids and ids[:3] == ["1", "2", "3"] and len(ids) == 45


def test_bad_files(artifact, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(StedgeError, match="empty.jsonl: empty file"):
        embed_corpus(str(artifact), [tmp_path / "empty.jsonl"], tmp_path / "o")
    (tmp_path / "t.csv").write_text("title,body\nx,y\n")
    with pytest.raises(StedgeError, match="t.csv: no column 'text' \\(columns: title, body\\)"):
        embed_corpus(str(artifact), [tmp_path / "t.csv"], tmp_path / "o", text_column="text")
    with pytest.raises(StedgeError, match="t.csv: no text column found.*--text-column"):
        embed_corpus(str(artifact), [str(tmp_path / "t.csv")], tmp_path / "o")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
    with pytest.raises(StedgeError, match="ints.parquet: column 'text' holds int64, expected strings"):
        embed_corpus(str(artifact), [tmp_path / "ints.parquet"], tmp_path / "o")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "other.parquet")
    with pytest.raises(StedgeError, match="other.parquet: no column 'text' in the Parquet schema"):
        embed_corpus(str(artifact), [tmp_path / "other.parquet"], tmp_path / "o", text_column="text")
    with pytest.raises(StedgeError, match="input .*missing.jsonl not found"):
        embed_corpus(str(artifact), [str(tmp_path / "missing.jsonl")], tmp_path / "o")
    with pytest.raises(StedgeError, match="--dtype must be one of float32, float16"):
        embed_corpus(str(artifact), [str(tmp_path / "t.csv")], tmp_path / "o", dtype="int4")


def test_output_folder_of_someone_else_is_refused(artifact, tmp_path):
    docs = _docs(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(StedgeError, match="holds files embed-corpus did not write \\(e.g. notes.txt\\)"):
            embed_corpus(str(artifact), [str(docs)], theirs, overwrite=overwrite)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    ours = tmp_path / "ours"
    _run(artifact, [docs], ours)
    (ours / "stray.bin").write_text("x")
    with pytest.raises(StedgeError, match="e.g. stray.bin"):
        embed_corpus(str(artifact), [str(docs)], ours)


def test_cli_json_summary_and_errors(artifact, tmp_path):
    from typer.testing import CliRunner

    from stedge.cli import app

    docs = _docs(tmp_path)
    r = CliRunner().invoke(
        app,
        [
            "embed-corpus",
            str(artifact),
            str(docs),
            "-o",
            str(tmp_path / "o"),
            "--json",
            "--shard-rows",
            "100",
            "--id-column",
            "doc_id",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["rows"], s["shards"], s["engine"], s["variant"]) == (len(TEXTS), 3, "local", "onnx-fp32")


# --------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import json, sys
from stedge.corpus import embed_corpus

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

marks = []
embed_corpus(sys.argv[1], [sys.argv[2]], sys.argv[3], shard_rows=20000, id_column="id",
             on_shard=lambda entry: marks.append(rss_mb()))
print(json.dumps(marks))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_memory_stays_flat_over_200k_rows(artifact, tmp_path):
    with open(tmp_path / "big.jsonl", "w", encoding="utf-8") as f:
        for i in range(200_000):
            f.write(json.dumps({"id": f"r{i}", "text": f"row {i} of a generated corpus, word {i % 977}"}) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "runtimes" / "python")])}
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(artifact), str(tmp_path / "big.jsonl"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    marks = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(marks) == 10
    growth = max(marks) - marks[0]
    print(f"RSS after each of 10 shards of 20k rows: {marks}")
    assert growth <= 50, f"RSS grew by {growth:.1f} MB over 200k rows (after each shard: {marks})"


# --------------------------------------------------------------------------- benchmark suite
def test_corpus_benchmark_suite_and_passages(shared_data, tmp_path):
    from stedge.bench.corpus import load_corpus_suite, make_passages
    from stedge.bench.runner import find_suite

    suite = load_corpus_suite(find_suite("corpus"))
    assert suite.passages == 100_000 and "corpus-ray" in suite.subjects
    a = make_passages(shared_data / suite.source, 300, tmp_path / "a.jsonl")
    b = make_passages(shared_data / suite.source, 300, tmp_path / "b.jsonl")
    rows = [json.loads(line) for line in open(a, encoding="utf-8")]
    assert a.read_bytes() == b.read_bytes() and len({r["text"] for r in rows}) == 300
    assert sum(len(r["text"]) for r in rows) / 300 > 400, "passage-length texts"
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "corpus"\nsubjects = ["nope"]\n')
    with pytest.raises(StedgeError, match="unknown subject.*nope"):
        load_corpus_suite(bad)
