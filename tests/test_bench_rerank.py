"""The harness on a reranker: a cross-encoder entry is measured on (query, passage) pairs, beside an embedding model.

One end-to-end run on a tiny random cross-encoder (stedge torch fp32, a runtime variant, the auto tier, the
sentence-transformers CrossEncoder peer and fastembed's TextCrossEncoder) and a tiny sentence encoder in the same
suite: the reranker rows count pairs, carry the Spearman of their scores and their score agreement with the stedge
PyTorch fp32 scores, and the report reads them as such. Speed itself is never asserted, only that it is sane.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stedge.errors import StedgeError

SUITE = """
name = "rerank-smoke"
device = "cpu"
threads = 1
batch_sizes = [1, 8]
headline_batch_size = 8
repetitions = 1
interleave_cycles = 2
interleave_batch_sizes = [1, 8]
warmup = 1
timeout_s = 300
texts = "stsb/test.tsv.gz"
num_texts = 16
num_texts_batch1 = 4
queries = "ir/scifact/queries.jsonl.gz"
num_queries = 6
idle_gap_ms = 10
accuracy = "stsb/test.tsv.gz"
accuracy_pairs = 24
passages = "ir/scifact/corpus.jsonl.gz"
num_passages = 8
tune_budget_s = 2

[[models]]
name = "tiny-reranker"
ref = "{reranker}"
artifact = "{artifact}"
task = "reranking"
torch = ["fp32"]
variants = ["onnx-fp32"]
auto = ["near"]
peers = ["torch", "fastembed"]

[[models]]
name = "tiny-encoder"
ref = "{encoder}"
artifact = "{encoder_artifact}"
torch = []
variants = ["onnx-fp32"]
auto = []
"""


@pytest.fixture(scope="module")
def rerank_results(tiny_cross_encoder, tiny_model, shared_data, tmp_path_factory):
    """`stedge bench` on a suite holding a tiny cross-encoder (task set explicitly) and a tiny sentence encoder."""
    from typer.testing import CliRunner

    from stedge.cli import app

    root = tmp_path_factory.mktemp("bench-rerank")
    suite = root / "rerank.toml"
    suite.write_text(
        SUITE.format(
            reranker=tiny_cross_encoder,
            artifact=root / "artifact",
            encoder=tiny_model,
            encoder_artifact=root / "encoder-artifact",
        ),
        encoding="utf-8",
    )
    out = root / "out"
    res = CliRunner().invoke(app, ["bench", str(suite), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out


def test_reranker_rows_count_pairs_and_carry_score_accuracy(rerank_results):
    from stedge.bench.report import validate

    results, out = rerank_results
    validate(results)
    rows = [r for r in results["rows"] if r["model"] == "tiny-reranker"]
    assert {r["kind"] for r in rows} == {"stedge-torch", "runtime", "st", "fastembed"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["task"] == "reranking" and r["dimension"] == 1  # one score per pair
        a = r["accuracy"]
        assert a["agreement"] == "score" and a["pairs"] == 24 and -100 <= a["spearman"] <= 100
        # every subject runs the same fp32 weights: the scores agree with stedge PyTorch fp32's, pair by pair
        assert a["min_cosine"] > 0.99 and a["mean_cosine"] >= a["min_cosine"] and 0 <= a["max_abs_diff"] < 1e-3
        assert set(r["throughput"]) == {"1", "8"} and r["headline_sentences_per_s"] > 0
        for bs, t in r["throughput"].items():
            assert t["texts"] == (4 if bs == "1" else 16)  # pairs per pass: num_texts_batch1 at batch 1
            assert t["tokens_per_s"] > 10 * t["sentences_per_s"] > 0  # a pair is two sentences' tokens
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] and r["latency_ms"]["n"] == 6
        assert r["latency_after_idle_ms"]["n"] == 6 and r["latency_after_idle_ms"]["gap_ms"] == 10
        tok = r["tokenize_ms"]  # the pair's tokenizing alone, as each subject's batch-1 call runs it
        assert tok["n"] == 6 and 0 < tok["p50"] < r["latency_ms"]["p50"], (r["label"], tok, r["latency_ms"])
        assert set(r["passages"]) == {"8"} and r["headline_passages_per_s"] > 0
        assert r["cold_start_s"] > 0 and r["peak_rss_mb"] > 0 and r["size_mb"] > 0
        inter = r["interleaved"]
        assert inter["cycles"] == 2 and set(inter["throughput"]) == {"1", "8"} and inter["speedup_vs_best_peer"] > 0
    ref = next(r for r in rows if r["reference"])
    assert ref["accuracy"]["max_abs_diff"] == 0.0 and ref["accuracy"]["min_cosine"] == pytest.approx(1.0)
    assert ref["speedup_vs_torch"] == pytest.approx(1.0)
    st = next(r for r in rows if r["kind"] == "st")  # sentence-transformers' CrossEncoder is the best (only) peer
    assert st["best_peer"] == st["label"] and st["speedup_vs_best_peer"] == pytest.approx(1.0)
    auto = next(r for r in rows if r.get("auto_tier"))
    assert auto["label"].startswith("stedge auto near (onnx-fp32") and auto["subject_info"]["selection"]["source"] == (
        "profile"
    )  # the reranker artifact was tuned first, as an embedding artifact is
    fe = next(r for r in rows if r["kind"] == "fastembed")
    assert set(auto["speedup_vs_fastembed"]) == {"1", "8"} and fe["accuracy"]["max_abs_diff"] < 1e-3


def test_reranker_inputs_are_pairs_beside_an_embedding_models_texts(rerank_results):
    results, _ = rerank_results
    models = {m["name"]: m for m in results["models"]}
    rr, enc = models["tiny-reranker"], models["tiny-encoder"]
    assert rr["task"] == "reranking" and enc["task"] == "embedding"
    assert rr["mean_tokens_per_text"] > 1.5 * enc["mean_tokens_per_text"]  # STS pairs against single sentences
    assert rr["mean_tokens_per_passage"] > rr["mean_tokens_per_text"]  # a query and an abstract
    pairs = results["data"]["reranking"]
    assert pairs["num_pairs"] == 16 and pairs["num_query_pairs"] == 6 and pairs["num_passage_pairs"] == 8
    (e,) = [r for r in results["rows"] if r["model"] == "tiny-encoder"]
    assert e["status"] == "ok" and e["task"] == "embedding" and e["dimension"] == 32
    assert "agreement" not in e["accuracy"] and e["accuracy"]["min_cosine"] > 0.99


def test_reranker_report_reads_pairs_and_score_agreement(rerank_results):
    results, out = rerank_results
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| pairs/s bs=1 | pairs/s bs=8 |" in md and "| min score agr. | max abs Δ score |" in md
    assert "| sent/s bs=1 | sent/s bs=8 |" in md and "| min cos | mean cos |" in md  # the embedding model's table
    assert "- Reranker pairs: 16 STS pairs from `stsb/test.tsv.gz`" in md and "tokens/pair" in md
    assert "pairs/s at batch 8" in md  # the summary against the sentence-transformers CrossEncoder peer
    header = next(line for line in md.splitlines() if "| pairs/s bs=1 |" in line)
    rows = [line for line in md.splitlines() if line.startswith("| tiny-reranker |")]
    assert len(rows) == 5 and {line.count("|") for line in rows} == {header.count("|")}  # no cell splits a column
    from stedge.bench.report import summary

    entry = next(s for s in summary(results) if s["model"] == "tiny-reranker")
    assert entry["task"] == "reranking" and entry["best_peer"]["label"].startswith("sentence-transformers")
    assert entry["fastest_fp32_accurate"] is not None
    assert (out / "speedup_vs_accuracy.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- no run
def test_task_is_detected_and_a_wrong_one_names_the_field(tiny_cross_encoder, tiny_model, tmp_path):
    from stedge.bench.runner import ModelEntry, load_suite, with_task

    assert with_task(ModelEntry(name="r", ref="r"), tiny_cross_encoder, "s.toml").task == "reranking"
    assert with_task(ModelEntry(name="e", ref="e"), tiny_model, "s.toml").task == "embedding"
    with pytest.raises(StedgeError, match=r"s\.toml: models 'r': task = 'embedding', but .* is a reranking model"):
        with_task(ModelEntry(name="r", ref="r", task="embedding"), tiny_cross_encoder, "s.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nref = "m"\ntask = "rerank"\n', encoding="utf-8")
    with pytest.raises(StedgeError, match=r"models\[0\]\.task must be one of embedding, reranking"):
        load_suite(bad)


def test_reranker_subjects_round_trip_and_embedding_specs_are_unchanged(tmp_path):
    from stedge.bench.subjects import RuntimeVariant, StedgeTorch, STPeer, from_spec
    from stedge.bench.worker import task_job

    for s in (
        StedgeTorch("m", str(tmp_path), "cpu", "fp32", "reranking"),
        RuntimeVariant("m", str(tmp_path), "cpu", "auto:near", "reranking"),
        STPeer("m", str(tmp_path), "cpu", "openvino", task="reranking"),
    ):
        spec = json.loads(json.dumps(s.spec()))
        assert spec["task"] == "reranking" and from_spec(spec).task == "reranking"
    assert "task" not in StedgeTorch("m", str(tmp_path)).spec()  # embedding jobs read as before
    assert "fp32 only" in StedgeTorch("m", str(tmp_path), "cpu", "bf16", "reranking").unavailable()
    job = {"texts": "t.json", "by_task": {"reranking": {"texts": "pairs.json"}}}
    assert task_job({**job, "subject": {"task": "reranking"}})["texts"] == "pairs.json"
    assert task_job({**job, "subject": {}})["texts"] == "t.json"


def test_peer_export_takes_the_task(capsys):
    from stedge.bench.peer_export import main

    assert main(["m", "onnx", "out", "classification"]) == 2
    assert "[embedding|reranking]" in capsys.readouterr().err


def test_bundled_rerank_suite_parses():
    from stedge.bench.runner import load_suite

    s = load_suite("cpu-rerank")
    (m,) = s.models
    assert m.task == "reranking" and m.ref == "models/minilm-reranker-stsb" and set(m.auto) >= {"exact", "near"}
    assert {"torch", "onnx", "openvino"} <= set(m.peers) and Path(s.file).name == "cpu-rerank.toml"
