"""Embedding quantization (stedge_runtime.quantization) and quantized search (stedge_runtime.search)."""

from __future__ import annotations

import numpy as np
import pytest
from stedge_runtime import InputError, search
from stedge_runtime.quantization import (
    OUTPUT_PRECISIONS,
    bytes_per_vector,
    calibration_ranges,
    dequantize,
    load_ranges,
    quantize_embeddings,
    ranges_bytes,
    save_ranges,
    unpack_bits,
)

ST_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def _emb(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ST_PRECISIONS)
def test_same_numbers_as_sentence_transformers_on_random_data(precision):
    st_q = pytest.importorskip("sentence_transformers.util.quantization")
    emb, cal = _emb(200, 64, 1), _emb(500, 64, 2)
    ours = quantize_embeddings(emb, precision, calibration_embeddings=cal)
    theirs = st_q.quantize_embeddings(emb, precision, calibration_embeddings=cal)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if precision.endswith("int8"):  # the same through saved ranges
        np.testing.assert_array_equal(quantize_embeddings(emb, precision, ranges=calibration_ranges(cal)), theirs)


def test_shapes_dtypes_and_storage():
    emb = _emb(5, 384)
    r = calibration_ranges(_emb(100, 384, 3))
    for p, (dtype, width) in {
        "float32": (np.float32, 384),
        "int8": (np.int8, 384),
        "uint8": (np.uint8, 384),
        "binary": (np.int8, 48),
        "ubinary": (np.uint8, 48),
    }.items():
        q = quantize_embeddings(emb, p, ranges=r)
        assert q.dtype == dtype and q.shape == (5, width)
        assert bytes_per_vector(p, 384) == q[0].nbytes
    assert set(OUTPUT_PRECISIONS) == set(ST_PRECISIONS)


def test_binary_bits_round_trip_and_dequantize_is_close():
    emb = _emb(20, 64)
    for p in ("binary", "ubinary"):
        np.testing.assert_array_equal(unpack_bits(quantize_embeddings(emb, p), p), (emb > 0).astype(np.uint8))
    r = calibration_ranges(emb)
    for p in ("int8", "uint8"):
        back = dequantize(quantize_embeddings(emb, p, ranges=r), p, r)
        step = (r[1] - r[0]) / 255
        assert np.all(np.abs(back - emb) <= step / 2 + 1e-6)


def test_bad_input_is_a_clear_error():
    emb = _emb(4, 16)
    with pytest.raises(InputError, match="precision must be one of"):
        quantize_embeddings(emb, "int4")
    with pytest.raises(InputError, match="needs calibration ranges"):
        quantize_embeddings(emb, "int8")
    with pytest.raises(InputError, match="not a multiple of 8"):
        quantize_embeddings(_emb(4, 12), "binary")
    with pytest.raises(InputError, match=r"shape \(2, 16\)"):
        quantize_embeddings(emb, "uint8", ranges=np.zeros((2, 8), np.float32))
    with pytest.raises(InputError, match="already quantized"):
        quantize_embeddings(quantize_embeddings(emb, "ubinary"), "ubinary")


def test_ranges_saved_same_bytes_and_reused(tmp_path):
    cal = _emb(300, 32, 5)
    r = calibration_ranges(cal)
    h1 = save_ranges(tmp_path / "a.npy", r)
    h2 = save_ranges(tmp_path / "b.npy", calibration_ranges(cal.copy()))
    assert h1 == h2 and (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes() == ranges_bytes(r)
    loaded = load_ranges(tmp_path / "a.npy", 32)
    emb = _emb(10, 32, 6)
    np.testing.assert_array_equal(
        quantize_embeddings(emb, "int8", ranges=loaded), quantize_embeddings(emb, "int8", calibration_embeddings=cal)
    )
    np.save(tmp_path / "bad.npy", np.zeros((3, 32)))
    with pytest.raises(Exception, match=r"expected float32 ranges of shape \(2, 32\)"):
        load_ranges(tmp_path / "bad.npy", 32)


# --------------------------------------------------------------------------- search
def _brute(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ c.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, axis=1)


def test_float32_search_matches_brute_force_across_chunks():
    q, c = _emb(7, 32, 1), _emb(300, 32, 2)
    res = search(q, c, "float32", top_k=5, chunk_size=64)
    idx, vals = _brute(q, c, 5)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.scores, vals, rtol=1e-5)
    assert res.to_lists()[0][0]["corpus_id"] == int(idx[0, 0])


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_hamming_search_matches_brute_force(precision):
    q, c = _emb(6, 128, 3), _emb(257, 128, 4)
    cq = quantize_embeddings(c, precision)
    res = search(q, cq, precision, top_k=10, chunk_size=50)
    qb, cb = (q > 0).astype(np.int32), (c > 0).astype(np.int32)
    ham = (qb[:, None, :] != cb[None, :, :]).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(257), ham.shape), ham), axis=1)[:, :10]
    np.testing.assert_array_equal(res.indices, order)
    np.testing.assert_array_equal(-res.scores, np.take_along_axis(ham, order, axis=1))
    # quantized queries give the same hits as float queries
    np.testing.assert_array_equal(search(quantize_embeddings(q, precision), cq, precision, top_k=10).indices, order)


def test_rescoring_binary_uses_float_query_against_bits():
    q, c = _emb(5, 64, 7), _emb(200, 64, 8)
    cq = quantize_embeddings(c, "ubinary")
    res = search(q, cq, "ubinary", top_k=4, rescore_multiplier=3)
    cand = search(q, cq, "ubinary", top_k=12).indices
    bits = (c > 0).astype(np.float32)
    for i in range(len(q)):
        s = bits[cand[i]] @ q[i]
        best = cand[i][np.argsort(-s, kind="stable")[:4]]
        assert set(res.indices[i]) == set(best)
        np.testing.assert_allclose(np.sort(res.scores[i])[::-1], np.sort(s)[::-1][:4], rtol=1e-5)


@pytest.mark.parametrize("precision,dim", [("int8", 32), ("uint8", 32), ("int8", 1032)])
def test_int8_search_dot_product_and_rescoring(precision, dim):
    q, c = _emb(6, dim, 9), _emb(150, dim, 10)
    r = calibration_ranges(c)
    cq = quantize_embeddings(c, precision, ranges=r)
    res = search(q, cq, precision, top_k=5, ranges=r)
    for i in range(2):  # one query at a time takes the einsum path: the same hits
        np.testing.assert_array_equal(search(q[i], cq, precision, top_k=5, ranges=r).indices[0], res.indices[i])
    qi = quantize_embeddings(q, "int8", ranges=r).astype(np.int32)
    ci = quantize_embeddings(c, "int8", ranges=r).astype(np.int32)
    idx, vals = _brute(qi.astype(np.float64), ci.astype(np.float64), 5)
    np.testing.assert_array_equal(np.sort(res.scores, axis=1), np.sort(vals, axis=1))
    # rescoring the whole corpus = float query against dequantized corpus, which is close to float search
    full = search(q, cq, precision, top_k=5, ranges=r, rescore_multiplier=30)
    exp_idx, _ = _brute(q, dequantize(cq, precision, r), 5)
    np.testing.assert_array_equal(full.indices, exp_idx)


def test_search_bad_input_is_a_clear_error():
    q, c = _emb(2, 64), _emb(10, 64)
    cb = quantize_embeddings(c, "ubinary")
    with pytest.raises(InputError, match="dimension 32, the corpus has 64"):
        search(_emb(2, 32), cb, "ubinary")
    with pytest.raises(InputError, match="dimension 32, the corpus has 64"):
        search(_emb(2, 32), c, "float32")
    with pytest.raises(InputError, match="precision 'binary' stores int8"):
        search(q, cb, "binary")
    with pytest.raises(InputError, match="needs the ranges"):
        search(q, quantize_embeddings(c, "int8", calibration_embeddings=c), "int8")
    with pytest.raises(InputError, match="rescoring needs float query"):
        search(quantize_embeddings(q, "ubinary"), cb, "ubinary", rescore_multiplier=2)
    with pytest.raises(InputError, match="precision must be one of"):
        search(q, c, "fp32")
    with pytest.raises(InputError, match="top_k"):
        search(q, c, top_k=0)


# --------------------------------------------------------------------------- models, artifacts, CLI (tiny model)
TEXTS = [
    f"sentence number {i} about {w}"
    for i, w in enumerate(
        ["cats", "dogs", "rain", "the stock market", "football", "guitars", "pasta", "planes", "books", "the sun"] * 3
    )
]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from stedge.models import SentenceEncoder

    return SentenceEncoder(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def calibrated_artifact(tiny_model, tmp_path_factory):
    """The tiny model exported to ONNX fp32 with embedding calibration texts."""
    from stedge.export import export_model

    folder = tmp_path_factory.mktemp("cal")
    (folder / "cal.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = folder / "tiny-stedge"
    export_model(str(tiny_model), out, calibration=str(folder / "cal.txt"))
    return out


@pytest.mark.parametrize("precision", ST_PRECISIONS)
def test_sentence_encoder_output_precision(tiny, precision):
    st_q = pytest.importorskip("sentence_transformers.util.quantization")
    floats = tiny.encode(TEXTS)
    got = tiny.encode(TEXTS, precision=precision, calibration_embeddings=floats)
    np.testing.assert_array_equal(got, st_q.quantize_embeddings(floats, precision, calibration_embeddings=floats))
    one = tiny.encode(TEXTS[0], precision=precision, ranges=calibration_ranges(floats), convert_to="torch")
    alone = quantize_embeddings(tiny.encode([TEXTS[0]]), precision, ranges=calibration_ranges(floats))
    np.testing.assert_array_equal(one.numpy(), alone[0])


def test_sentence_encoder_precision_and_dtype_names(tiny):
    from stedge.errors import StedgeError

    ref = tiny.encode(TEXTS[:3])
    old = tiny.encode(TEXTS[:3], precision="bfloat16")  # the old meaning: compute dtype, float32 out
    new = tiny.encode(TEXTS[:3], dtype="bfloat16")
    assert old.dtype == np.float32 and np.array_equal(old, new) and np.abs(old - ref).max() < 0.05
    with pytest.raises(StedgeError, match="conflicts with dtype"):
        tiny.encode(TEXTS[:3], precision="bfloat16", dtype="float32")
    with pytest.raises(StedgeError, match="precision must be one of"):
        tiny.encode(TEXTS[:3], precision="int4")
    with pytest.raises(StedgeError, match="needs calibration ranges"):
        tiny.encode(TEXTS[:3], precision="uint8")
    with pytest.raises(StedgeError, match="dtype float16 needs a GPU"):
        tiny.encode(TEXTS[:3], dtype="float16", device="cpu")


def test_export_calibration_saved_and_used_by_the_runtime(calibrated_artifact, tiny, tmp_path):
    import json

    from stedge_runtime import Encoder

    from stedge.export import manifest as mf
    from stedge.export.calibration import calibrate_artifact

    m = mf.read(calibrated_artifact)  # validates against the schema
    cal = m["embedding_calibration"]
    assert cal["texts"] == len(TEXTS) and cal["variant"] is None
    file = calibrated_artifact / cal["file"]
    assert file.read_bytes() == ranges_bytes(calibration_ranges(tiny.encode(TEXTS)))
    enc = Encoder.load(calibrated_artifact)
    np.testing.assert_array_equal(enc.embedding_ranges, load_ranges(file))
    floats = enc.encode(TEXTS[:5])
    for p in ST_PRECISIONS:
        np.testing.assert_array_equal(
            enc.encode(TEXTS[:5], precision=p), quantize_embeddings(floats, p, ranges=enc.embedding_ranges)
        )
    # stedge calibrate: same texts, same bytes; recorded in stedge.json with the variant that embedded them
    (tmp_path / "t.txt").write_text("\n".join(TEXTS), encoding="utf-8")
    first = calibrate_artifact(calibrated_artifact, tmp_path / "t.txt")
    data = file.read_bytes()
    second = calibrate_artifact(calibrated_artifact, tmp_path / "t.txt")
    assert first == second and file.read_bytes() == data and first["variant"] == "onnx-fp32"
    assert json.loads((calibrated_artifact / "stedge.json").read_text())["embedding_calibration"] == first
    from stedge_runtime.artifact import Manifest

    raw = json.loads((calibrated_artifact / "stedge.json").read_text())
    assert Manifest.from_dict(raw).to_dict()["embedding_calibration"] == first  # round trip
    for bad, field in (
        ({"file": "x.npy"}, "embedding_calibration.sha256"),
        ({"file": "../x.npy", "sha256": "0" * 64}, "embedding_calibration.file"),
    ):
        with pytest.raises(Exception, match=field.replace(".", r"\.")):
            Manifest.from_dict({**raw, "embedding_calibration": bad})
    file.write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(Exception, match="sha256"):
        Encoder.load(calibrated_artifact, verify=True).encode(TEXTS[:2], precision="int8")
    file.write_bytes(data)


def test_pack_keeps_the_calibration(calibrated_artifact, tmp_path):
    from stedge_runtime import Encoder

    from stedge.export.pack import pack_artifact

    res = pack_artifact(calibrated_artifact, tmp_path / "packed")
    assert "embedding_ranges.npy" in res.files
    packed, full = Encoder.load(tmp_path / "packed"), Encoder.load(calibrated_artifact)
    np.testing.assert_array_equal(
        packed.encode(TEXTS[:4], precision="uint8"), full.encode(TEXTS[:4], precision="uint8")
    )


def test_runtime_int8_without_calibration_is_a_clear_error(tiny_model, tmp_path):
    from stedge_runtime import Encoder

    from stedge.export import export_model

    export_model(str(tiny_model), tmp_path / "plain")
    enc = Encoder.load(tmp_path / "plain")
    assert enc.embedding_ranges is None
    with pytest.raises(InputError, match="stedge calibrate"):
        enc.encode(TEXTS[:2], precision="int8")
    assert enc.encode(TEXTS[:2], precision="binary").dtype == np.int8


def test_ir_evaluator_quantized_search(tiny):
    from stedge.evaluation import InformationRetrievalEvaluator

    corpus = {f"d{i}": t for i, t in enumerate(TEXTS)}
    queries = {f"q{i}": TEXTS[i].replace("sentence", "text") for i in range(0, 30, 3)}
    rel = {f"q{i}": {f"d{i}"} for i in range(0, 30, 3)}
    kw = dict(ndcg_at_k=[5], mrr_at_k=[5], map_at_k=[10], accuracy_at_k=[1, 5], precision_recall_at_k=[1, 5])
    base = InformationRetrievalEvaluator(queries, corpus, rel, name="t", **kw)(tiny)
    for p in ("int8", "ubinary"):
        ev = InformationRetrievalEvaluator(queries, corpus, rel, name="t", precision=p, **kw)
        res = ev(tiny)
        assert set(res) == set(base) and ev.search_seconds is not None
        assert ev.ranges_source == ("corpus" if p == "int8" else None)
        q, c = tiny.encode(list(queries.values())), tiny.encode(TEXTS)
        r = calibration_ranges(c) if p == "int8" else None
        hits = search(q, quantize_embeddings(c, p, ranges=r), p, top_k=10, ranges=r)
        ranked = [[d for d, _ in row] for row in ev.rank(tiny)["cosine"]]
        assert ranked == [[f"d{i}" for i in row] for row in hits.indices]
    # rescoring with every document a candidate ranks the top 5 by float query x dequantized corpus
    ev = InformationRetrievalEvaluator(queries, corpus, rel, name="t", precision="int8", rescore_multiplier=6, **kw)
    ranked = ev.rank(tiny)["cosine"]
    exp = search(
        q,
        dequantize(quantize_embeddings(c, "int8", ranges=calibration_ranges(c)), "int8", calibration_ranges(c)),
        top_k=5,
    ).indices
    assert [[d for d, _ in row[:5]] for row in ranked] == [[f"d{i}" for i in row] for row in exp]
    assert all(len(row) == 10 for row in ranked)
    from stedge.errors import StedgeError

    with pytest.raises(StedgeError, match="applies to a quantized corpus"):
        InformationRetrievalEvaluator(queries, corpus, rel, rescore_multiplier=4)
    with pytest.raises(StedgeError, match="precision must be one of"):
        InformationRetrievalEvaluator(queries, corpus, rel, precision="int4")


def test_cli_embed_and_eval_with_precision(calibrated_artifact, tiny_model, tmp_path):
    import gzip
    import json

    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.errors import StedgeError

    runner = CliRunner()
    res = runner.invoke(app, ["embed", str(calibrated_artifact), "a cat", "a dog", "--precision", "int8", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["precision"] == "int8" and len(data["embeddings"][0]) == data["dimension"]
    res = runner.invoke(
        app, ["embed", str(tiny_model), "a cat", "--precision", "ubinary", "-o", str(tmp_path / "e.npy")]
    )
    assert res.exit_code == 0, res.output
    e = np.load(tmp_path / "e.npy")
    assert e.dtype == np.uint8 and e.shape[1] * 8 == data["dimension"]
    res = runner.invoke(app, ["info", str(calibrated_artifact)])
    assert res.exit_code == 0 and "int8/uint8 output ranges: embedding_ranges.npy" in res.output, res.output
    res = runner.invoke(app, ["embed", str(tiny_model), "a cat", "--precision", "int8"])
    assert isinstance(res.exception, StedgeError) and res.exception.exit_code == 2
    assert "--calibration" in str(res.exception)
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    with gzip.open(beir / "corpus.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    with gzip.open(beir / "queries.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"_id": f"q{i}", "text": TEXTS[i]}) + "\n" for i in range(0, 30, 5))
    qrels = "".join(f"q{i}\td{i}\t1\n" for i in range(0, 30, 5))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    ir = ["--data", str(beir), "--task", "ir", "--json"]
    res = runner.invoke(
        app, ["eval", str(calibrated_artifact), *ir, "--precision", "binary", "--rescore-multiplier", "4"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["precision"] == "binary" and out["rescore_multiplier"] == 4
    assert out["bytes_per_vector"] * 32 == out["float32_bytes_per_vector"]
    res = runner.invoke(app, ["eval", str(calibrated_artifact), *ir, "--precision", "int8"])
    assert res.exit_code == 0 and json.loads(res.output)["ranges"] == "model", res.output
    res = runner.invoke(app, ["eval", str(tiny_model), *ir, "--precision", "int3"])
    assert isinstance(res.exception, StedgeError) and "precision must be one of" in str(res.exception)


@pytest.mark.real
def test_real_minilm_precisions_equal_sentence_transformers(minilm_path, stsb_test):
    """Every output precision of the bundled model equals sentence-transformers' encode(precision=...) /
    quantize_embeddings with the same calibration texts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util.quantization import quantize_embeddings as st_quantize
    from stedge_runtime.quantization import quantize_embeddings

    from stedge.models import SentenceEncoder

    texts, cal_texts = stsb_test.sentences1[:48], stsb_test.sentences2[:200]
    ours, st = SentenceEncoder(minilm_path, device="cpu"), SentenceTransformer(str(minilm_path), device="cpu")
    cal_ours, cal_st = ours.encode(cal_texts), st.encode(cal_texts)
    emb_st = st.encode(texts)
    for p in ST_PRECISIONS:
        want = st_quantize(emb_st, p, calibration_embeddings=cal_st)
        # the quantizer itself, on the same floats: bit for bit
        np.testing.assert_array_equal(quantize_embeddings(emb_st, p, calibration_embeddings=cal_st), want)
        got = ours.encode(texts, precision=p, calibration_embeddings=cal_ours)
        assert got.dtype == want.dtype and got.shape == want.shape
        # two torch forward passes agree to ~1e-7, so a value sitting on a bucket edge may land one bucket
        # over on some CPUs (seen: 1 of 18,432 int8 codes on an AVX2 Zen 3)
        _close_codes(got, want, p)
        if p in ("binary", "ubinary"):  # no calibration: sentence-transformers' own encode(precision=...)
            _close_codes(got, st.encode(texts, precision=p), p)


def _close_codes(got: np.ndarray, want: np.ndarray, precision: str) -> None:
    from stedge_runtime.quantization import unpack_bits

    if precision in ("binary", "ubinary"):
        got, want = unpack_bits(got, precision), unpack_bits(want, precision)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1 and np.mean(diff != 0) <= 1e-3, (precision, int(diff.max()), float(np.mean(diff != 0)))


# --------------------------------------------------------------------------- embed-corpus --precision
def test_embed_corpus_stores_quantized_vectors(calibrated_artifact, tiny_model, tmp_path):
    import json

    pytest.importorskip("pyarrow")
    from stedge_runtime import Encoder

    from stedge.corpus import embed_corpus, read_corpus
    from stedge.errors import StedgeError

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    enc = Encoder.load(calibrated_artifact, route=False)
    floats = enc.encode(TEXTS)
    for p in ("int8", "ubinary"):
        out = tmp_path / p
        s = embed_corpus(str(calibrated_artifact), [src], out, id_column="_id", precision=p, shard_rows=7)
        assert s["precision"] == p and s["rows"] == len(TEXTS)
        ids, vecs = read_corpus(out)
        m = json.loads((out / "corpus.json").read_text())
        ranges = np.asarray(m["ranges"], np.float32) if m["ranges"] else None
        assert ids == [f"d{i}" for i in range(len(TEXTS))] and m["width"] == vecs.shape[1]
        if p == "int8":
            np.testing.assert_array_equal(ranges, enc.embedding_ranges)  # the artifact's saved ranges
            assert m["calibration"]["source"] == "artifact"
        np.testing.assert_array_equal(vecs, quantize_embeddings(floats, p, ranges=ranges))
        hits = search(floats[:3], vecs, p, top_k=1, ranges=ranges, rescore_multiplier=4)
        assert hits.indices[:, 0].tolist() == [0, 1, 2]
    # the same folder with another precision is another job
    with pytest.raises(StedgeError, match="precision changed"):
        embed_corpus(str(calibrated_artifact), [src], tmp_path / "int8", id_column="_id", precision="binary")
    # a torch model has no saved ranges: --calibration texts, else a clear error
    with pytest.raises(StedgeError, match="--calibration TEXTS"):
        embed_corpus(str(tiny_model), [src], tmp_path / "t", precision="uint8")
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(TEXTS))
    s = embed_corpus(str(tiny_model), [src], tmp_path / "t", precision="uint8", calibration=str(cal))
    m = json.loads((tmp_path / "t" / "corpus.json").read_text())
    assert m["calibration"] == {"source": str(cal), "texts": len(TEXTS)} and m["dtype"] == "uint8"
    from typer.testing import CliRunner

    from stedge.cli import app

    res = CliRunner().invoke(
        app,
        [
            "embed-corpus",
            str(calibrated_artifact),
            str(src),
            "-o",
            str(tmp_path / "c"),
            "--precision",
            "binary",
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["precision"] == "binary" and summary["width"] * 8 == summary["dimension"]
    with pytest.raises(StedgeError, match="pass one of them"):
        embed_corpus(str(tiny_model), [src], tmp_path / "h", precision="binary", dtype="float16")
    with pytest.raises(StedgeError, match="precision must be one of"):
        embed_corpus(str(tiny_model), [src], tmp_path / "h", precision="int4")
