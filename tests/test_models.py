"""SentenceEncoder / CrossEncoder on tiny random models, checked against sentence-transformers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from tiny import make_tiny_bert

from stedge import CrossEncoder, SentenceEncoder
from stedge.errors import InvalidModelError, ModelNotFoundError, StedgeError

TEXTS = ["A man is playing a guitar.", "", "Short", "The quick brown fox jumps over the lazy dog " * 3, "Zebras graze."]


def st_model(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def min_cos(a, b):
    from stedge.data import pairwise_cosine

    return float(pairwise_cosine(a, b).min())


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_pooling_modes_match_sentence_transformers(tmp_path, pooling):
    path = make_tiny_bert(tmp_path / pooling, pooling=pooling, normalize=False)
    ours = SentenceEncoder(path, device="cpu").encode(TEXTS, batch_size=2)
    ref = st_model(path).encode(TEXTS, batch_size=2)
    assert ours.shape == ref.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4)


def test_dense_and_normalize(tmp_path):
    path = make_tiny_bert(tmp_path / "m", dense=16, normalize=True)
    enc = SentenceEncoder(path, device="cpu")
    assert [type(m).__name__ for m in enc] == ["Transformer", "Pooling", "Dense", "Normalize"]
    ours = enc.encode(TEXTS)
    assert ours.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, st_model(path).encode(TEXTS), atol=1e-5)


def test_folders_round_trip_with_installed_sentence_transformers(tmp_path):
    """stedge writes the legacy module types every sentence-transformers (5 and 6) reads, and reads the
    types the installed one writes (6: sentence_transformers.base.modules...)."""
    path = make_tiny_bert(
        tmp_path / "m",
        dense=16,
        include_prompt=False,
        prompts={"query": "query: "},
        default_prompt_name="query",
        max_seq_length=40,
    )
    st = st_model(path)
    st.save(str(tmp_path / "by_st"))
    ours = SentenceEncoder(tmp_path / "by_st", device="cpu")
    assert (ours.max_seq_length, ours.default_prompt_name, ours.prompts["query"]) == (40, "query", "query: ")
    np.testing.assert_allclose(ours.encode(TEXTS), st.encode(TEXTS), atol=1e-5)
    ours.save(tmp_path / "by_stedge")
    types = [m["type"] for m in json.loads((tmp_path / "by_stedge" / "modules.json").read_text())]
    assert types == [f"sentence_transformers.models.{n}" for n in ("Transformer", "Pooling", "Dense", "Normalize")]
    back = st_model(tmp_path / "by_stedge")
    assert (back.max_seq_length, back.default_prompt_name) == (40, "query")
    np.testing.assert_allclose(back.encode(TEXTS), st.encode(TEXTS), atol=1e-5)


@pytest.mark.parametrize(
    "type_name",
    [
        "sentence_transformers.base.modules.transformer.Transformer",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "sentence_transformers.models.Dense",
        "stedge.models.Normalize",
        "Normalize",
    ],
)
def test_module_types_of_every_sentence_transformers_layout_are_known(type_name, tmp_path):
    from stedge.models.modules import MODULE_TYPES, module_class

    assert module_class(type_name, tmp_path) is MODULE_TYPES[type_name.rsplit(".", 1)[-1]]


def test_input_order_and_single_string(tiny_model):
    enc = SentenceEncoder(tiny_model, device="cpu")
    batch = enc.encode(TEXTS, batch_size=2)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(enc.encode(t), batch[i], atol=1e-5)
    assert enc.encode("x").shape == (32,)
    t = enc.encode(TEXTS, convert_to="torch")
    assert isinstance(t, torch.Tensor) and t.shape == (len(TEXTS), 32)


def test_prompts_and_include_prompt(tmp_path):
    prompts = {"query": "query: ", "doc": "passage: "}
    path = make_tiny_bert(tmp_path / "p", prompts=prompts, default_prompt_name="query", include_prompt=False)
    enc = SentenceEncoder(path, device="cpu")
    st = st_model(path)
    for name in ("query", "doc"):
        np.testing.assert_allclose(enc.encode(TEXTS, prompt_name=name), st.encode(TEXTS, prompt_name=name), atol=1e-5)
    # the default prompt applies when none is named
    np.testing.assert_allclose(enc.encode(TEXTS), enc.encode(TEXTS, prompt_name="query"), atol=1e-6)
    # an explicit prompt string wins over prompt_name
    np.testing.assert_allclose(enc.encode(["x"], prompt="passage: "), enc.encode(["x"], prompt_name="doc"), atol=1e-6)
    with pytest.raises(StedgeError, match="doc, query"):
        enc.encode(["x"], prompt_name="nope")


def test_include_prompt_true_matches_st(tmp_path):
    path = make_tiny_bert(tmp_path / "p", prompts={"q": "query: "}, include_prompt=True)
    np.testing.assert_allclose(
        SentenceEncoder(path, device="cpu").encode(TEXTS, prompt_name="q"),
        st_model(path).encode(TEXTS, prompt_name="q"),
        atol=1e-5,
    )


def test_truncate_dim(tiny_model):
    enc = SentenceEncoder(tiny_model, device="cpu", truncate_dim=8)
    full = SentenceEncoder(tiny_model, device="cpu").encode(TEXTS)
    out = enc.encode(TEXTS)
    assert out.shape == (len(TEXTS), 8) and enc.get_sentence_embedding_dimension() == 8
    np.testing.assert_allclose(out, full[:, :8], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(enc.encode(TEXTS, normalize_embeddings=True), axis=1), 1, atol=1e-5)


def test_save_load_round_trip_and_st_loads_it(tmp_path, tiny_model):
    enc = SentenceEncoder(tiny_model, device="cpu", prompts={"q": "query: "}, similarity_fn_name="dot")
    out = tmp_path / "saved"
    enc.save(out)
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"
    again = SentenceEncoder(out, device="cpu")
    assert again.prompts == {"q": "query: "} and again.similarity_fn_name == "dot"
    np.testing.assert_allclose(again.encode(TEXTS), enc.encode(TEXTS), atol=1e-6)
    st = st_model(out)
    np.testing.assert_allclose(st.encode(TEXTS), enc.encode(TEXTS), atol=1e-5)
    assert st.similarity_fn_name == "dot" and st.prompts.get("q") == "query: "
    assert not list(tmp_path.glob(".saved.*"))


def test_st_saved_model_loads_in_stedge(tmp_path, tiny_model):
    st = st_model(tiny_model)
    st.save(str(tmp_path / "st"))
    np.testing.assert_allclose(
        SentenceEncoder(tmp_path / "st", device="cpu").encode(TEXTS), st.encode(TEXTS), atol=1e-5
    )


@pytest.mark.parametrize("fn", ["cosine", "dot", "euclidean", "manhattan"])
def test_similarity_functions_match_st(tiny_model, fn):
    enc = SentenceEncoder(tiny_model, device="cpu", similarity_fn_name=fn)
    st = st_model(tiny_model)
    st.similarity_fn_name = fn
    e = enc.encode(TEXTS)
    np.testing.assert_allclose(enc.similarity(e, e), st.similarity(e, e).numpy(), atol=1e-4)
    np.testing.assert_allclose(
        enc.similarity_pairwise(e, e[::-1].copy()), st.similarity_pairwise(e, e[::-1].copy()).numpy(), atol=1e-4
    )


def test_bad_inputs(tiny_model, caplog):
    enc = SentenceEncoder(tiny_model, device="cpu")
    empty = enc.encode([])
    assert empty.shape == (0, 32)
    assert enc.encode([""]).shape == (1, 32)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode(["ok", 3])
    with caplog.at_level(logging.WARNING):
        enc.encode(["word " * 500, "word " * 600])
    assert sum("truncated" in r.message for r in caplog.records) == 1
    with pytest.raises(StedgeError, match="float16 needs a GPU"):
        enc.encode(["x"], precision="float16")
    assert enc.encode(["x"], precision="bfloat16").shape == (1, 32)


def test_weights_already_in_the_compute_dtype_skip_autocast(tiny_model, monkeypatch):
    """encoder.bfloat16() then dtype=bfloat16 runs the bf16 weights as they are (no autocast around every layer,
    the fast path on a GPU); an fp32 encoder asked for bf16 still uses autocast. Rows stay float32, close to fp32."""
    import torch

    enc = SentenceEncoder(tiny_model, device="cpu")
    ref = enc.encode(TEXTS)
    entered = []
    real = torch.autocast

    def spy(*a, **k):
        entered.append(k.get("dtype"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "autocast", spy)
    auto = enc.encode(TEXTS, dtype="bfloat16")
    assert entered == [torch.bfloat16]
    enc.bfloat16()
    cast = enc.encode(TEXTS, dtype="bfloat16")
    assert entered == [torch.bfloat16] and cast.dtype == np.float32
    for got in (auto, cast):
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.99


def test_broken_model_folders(tmp_path, tiny_model):
    with pytest.raises(ModelNotFoundError, match="tried"):
        SentenceEncoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidModelError, match="modules.json"):
        SentenceEncoder(tmp_path / "empty")
    bad = make_tiny_bert(tmp_path / "bad")
    mods = json.loads((bad / "modules.json").read_text())
    mods[1]["type"] = "sentence_transformers.models.Mystery"
    (bad / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(InvalidModelError, match="modules.json.*Mystery"):
        SentenceEncoder(bad)
    noweights = make_tiny_bert(tmp_path / "nw")
    (noweights / "model.safetensors").unlink()
    with pytest.raises(InvalidModelError, match="safetensors"):
        SentenceEncoder(noweights)
    nopool = make_tiny_bert(tmp_path / "np")
    (nopool / "1_Pooling" / "config.json").unlink()
    with pytest.raises(InvalidModelError, match="1_Pooling/config.json is missing"):
        SentenceEncoder(nopool)


def test_save_failure_leaves_nothing(tmp_path, tiny_model, monkeypatch):
    enc = SentenceEncoder(tiny_model, device="cpu")
    from stedge.models import modules

    def boom(self, folder):
        raise RuntimeError("disk full")

    monkeypatch.setattr(modules.Normalize, "save", boom)
    with pytest.raises(RuntimeError):
        enc.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_gives_default_modes(tmp_path):
    """Outputs are readable like any mkdir/open result: not mkdtemp's 0700, not a writer's 0600."""
    import os

    from stedge.io import atomic_dir

    umask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            secret = tmp / "sub" / "weights.bin"
            secret.write_bytes(b"x")
            secret.chmod(0o600)
        assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "out" / "sub" / "weights.bin").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_cross_encoder_matches_st(tiny_cross_encoder, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    pairs = [("what is a cat", "A cat is a small feline."), ("what is a cat", "Stocks fell."), ("q", "")]
    ce = CrossEncoder(tiny_cross_encoder, device="cpu")
    ref = STCrossEncoder(str(tiny_cross_encoder), device="cpu")
    np.testing.assert_allclose(ce.predict(pairs), ref.predict(pairs), atol=1e-5)
    docs = ["A cat is a small feline.", "Stocks fell.", "Cats purr.", ""]
    ours = ce.rank("what is a cat", docs, return_documents=True)
    theirs = ref.rank("what is a cat", docs, return_documents=True)
    assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in theirs]
    assert ours[0]["text"] == docs[ours[0]["corpus_id"]]
    assert len(ce.rank("q", docs, top_k=2)) == 2
    ce.save(tmp_path / "ce")
    np.testing.assert_allclose(CrossEncoder(tmp_path / "ce", device="cpu").predict(pairs), ce.predict(pairs), atol=1e-6)
    np.testing.assert_allclose(
        STCrossEncoder(str(tmp_path / "ce"), device="cpu").predict(pairs), ce.predict(pairs), atol=1e-5
    )
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        ce.predict([("a", 1)])
    assert ce.predict([]).shape == (0,)


def test_cli_embed_similarity_info(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from stedge.cli import app

    r = CliRunner().invoke(app, ["embed", str(tiny_model), "hello", "world", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["dimension"] == 32 and len(data["embeddings"]) == 2
    f = tmp_path / "t.txt"
    f.write_text("one\ntwo\n\nthree\n")
    r = CliRunner().invoke(app, ["embed", str(tiny_model), "--file", str(f), "-o", str(tmp_path / "e.npy")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "e.npy").shape == (3, 32)
    r = CliRunner().invoke(app, ["similarity", str(tiny_model), "a", "b", "--json"])
    assert r.exit_code == 0 and -1 <= json.loads(r.output)["similarity"] <= 1
    r = CliRunner().invoke(app, ["info", str(tiny_model), "--json"])
    assert json.loads(r.output)["dimension"] == 32


def test_cli_rank(tiny_cross_encoder):
    from typer.testing import CliRunner

    from stedge.cli import app

    r = CliRunner().invoke(app, ["rank", str(tiny_cross_encoder), "what is a cat", "A cat.", "Stocks.", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert sorted(x["corpus_id"] for x in res) == [0, 1] and res[0]["score"] >= res[1]["score"]


def test_cli_error_is_one_line(tmp_path):
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "stedge.cli", "embed", str(tmp_path / "nope"), "x"], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert p.stderr.startswith("error: model") and "Traceback" not in p.stderr
