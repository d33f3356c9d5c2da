"""Encoder on tiny artifacts: parity with the torch encoder, batching, prompts, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from stedge_runtime import Encoder, InputError, is_artifact

TEXTS = [
    "A man is playing a guitar.",
    "",
    "short",
    "A much longer sentence about a woman who is slicing a tomato in a small kitchen, slowly.",
    "Two dogs run across the field",
    "x " * 30,
]


@pytest.fixture(scope="module")
def torch_tiny(tiny_model):
    from stedge.models import SentenceEncoder

    return SentenceEncoder(str(tiny_model), device="cpu")


@pytest.mark.parametrize("variant", ["onnx-fp32", "openvino-fp32"])
def test_matches_torch(tiny_artifact, torch_tiny, variant):
    enc = Encoder.load(tiny_artifact, variant=variant)
    assert enc.variant == variant
    got = enc.encode(TEXTS, batch_size=4)
    ref = torch_tiny.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), enc.dimension)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert enc.similarity(got, ref).diagonal().min() >= 0.9999


def test_properties_and_default_variant(tiny_artifact, torch_tiny):
    enc = Encoder.load(tiny_artifact)
    assert enc.variant == "onnx-fp32"  # the manifest's default_variant
    assert enc.dimension == enc.get_sentence_embedding_dimension() == torch_tiny.get_sentence_embedding_dimension()
    assert enc.max_seq_length == torch_tiny.max_seq_length
    assert enc.prompts == {} and enc.manifest.task == "embedding"
    assert (
        is_artifact(tiny_artifact)
        and not is_artifact(tiny_artifact / "onnx")
        and not is_artifact(tiny_artifact / "nope")
    )


def test_order_batches_and_token_budget(tiny_artifact):
    enc = Encoder.load(tiny_artifact)
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(0, 40, 50))]
    one_by_one = np.stack([enc.encode(t) for t in texts])
    np.testing.assert_allclose(enc.encode(texts, batch_size=7), one_by_one, atol=1e-5)
    enc.max_batch_tokens = 40  # forces small batches for the long texts
    np.testing.assert_allclose(enc.encode(texts, batch_size=32), one_by_one, atol=1e-5)


def test_texts_are_tokenized_a_chunk_at_a_time(tiny_artifact, tiny_ce_artifact, monkeypatch):
    """One encode call keeps only its texts' ids, not `tokenizers`' per-text objects: the texts go to the
    tokenizer TOKENIZE_CHUNK at a time, and the flat ids (and pairs' type ids) are the tokenizer's own."""
    from stedge_runtime import Reranker, tokenize

    enc = Encoder.load(tiny_artifact, variant="onnx-fp32")
    texts = TEXTS + [f"text {i} " + "word " * i for i in range(4)]
    want = enc.encode(texts, batch_size=4)
    sizes: list[int] = []
    real = enc._tok.encode
    monkeypatch.setattr(tokenize, "TOKENIZE_CHUNK", 3)
    monkeypatch.setattr(enc._tok, "encode", lambda items: sizes.append(len(items)) or real(items))
    np.testing.assert_allclose(enc.encode(texts, batch_size=4), want, atol=1e-6)
    assert sizes == [3, 3, 3, 1]
    rr = Reranker.load(tiny_ce_artifact, variant="onnx-fp32")
    pairs = [(t, texts[-1 - i]) for i, t in enumerate(texts)]
    toks = rr._tok.tokens(pairs, type_ids=True)
    feeds = tokenize.pad(toks, np.arange(len(pairs)), rr._tok.pad_id, type_ids=True)
    for i, e in enumerate(real(pairs)):
        n = len(e.ids)
        assert toks.lengths[i] == n and feeds["attention_mask"][i].sum() == n
        assert feeds["input_ids"][i, :n].tolist() == e.ids and feeds["token_type_ids"][i, :n].tolist() == e.type_ids
        assert set(feeds["input_ids"][i, n:].tolist()) <= {rr._tok.pad_id}
    assert feeds["token_type_ids"].max() == 1  # the second text of each pair


def test_one_text_path_gives_the_batch_inputs(tiny_artifact, tiny_ce_artifact, monkeypatch):
    """A one-text call builds its inputs with Tokenizer.one, not the flat arrays of `tokens` + `pad`: the same
    arrays for texts (empty and truncated ones too) and pairs, and the same vectors as inside a batch."""
    from stedge_runtime import Reranker, tokenize

    enc = Encoder.load(tiny_artifact, variant="onnx-fp32")
    rr = Reranker.load(tiny_ce_artifact, variant="onnx-fp32")
    long = "word " * 500  # past max_seq_length
    for tok, items, type_ids in (
        (enc._tok, TEXTS + [long], "token_type_ids" in enc._engine.inputs),
        (rr._tok, [("q", "a document"), ("", long), (long, "b")], True),  # pairs
    ):
        for item in items:
            want = tokenize.pad(tok.tokens([item], type_ids), np.arange(1), tok.pad_id, type_ids)
            got = tok.one(item, type_ids)
            assert got.keys() == want.keys()
            for k in want:
                assert got[k].dtype == want[k].dtype == np.int64 and np.array_equal(got[k], want[k]), (item, k)
    batch = enc.encode(TEXTS, batch_size=32)
    pairs = [("q", "a document"), ("", long), (long, "b")]
    scores = rr.predict(pairs)
    monkeypatch.setattr(enc._tok, "tokens", None)  # one text must not go through the batch path
    monkeypatch.setattr(rr._tok, "tokens", None)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(enc.encode(t), batch[i], atol=1e-5)
        np.testing.assert_allclose(enc.encode([t], batch_size=8)[0], batch[i], atol=1e-5)
    for i, pair in enumerate(pairs):
        np.testing.assert_allclose(rr.predict([pair]), scores[i : i + 1], atol=1e-5)


def test_single_string_empty_list_empty_string(tiny_artifact):
    enc = Encoder.load(tiny_artifact)
    v = enc.encode("hello")
    assert v.shape == (enc.dimension,)
    empty = enc.encode([])
    assert empty.shape == (0, enc.dimension) and empty.dtype == np.float32
    e = enc.encode([""])
    assert e.shape == (1, enc.dimension) and np.isfinite(e).all() and np.linalg.norm(e) > 0


def test_non_string_items_name_the_index(tiny_artifact):
    enc = Encoder.load(tiny_artifact)
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        enc.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        enc.encode([None])
    with pytest.raises(InputError, match="batch_size"):
        enc.encode(["a"], batch_size=0)


def test_truncation_warns_once(tiny_artifact, torch_tiny, caplog):
    enc = Encoder.load(tiny_artifact)
    long = "word " * 500
    with caplog.at_level(logging.WARNING, logger="stedge_runtime"):
        a = enc.encode([long, long + "x"])
        enc.encode([long])
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1
    np.testing.assert_allclose(a[0], torch_tiny.encode([long])[0], atol=1e-5)


def test_normalize_and_similarity(tiny_artifact, torch_tiny):
    enc = Encoder.load(tiny_artifact)
    a, b = enc.encode(TEXTS[:3], normalize_embeddings=True), enc.encode(TEXTS[3:])
    np.testing.assert_array_equal(enc.encode(TEXTS[:3], normalize=True), a)  # the older name still works
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.similarity(a, b), torch_tiny.similarity(a, b), atol=1e-5)
    np.testing.assert_allclose(enc.similarity_pairwise(a, b), torch_tiny.similarity_pairwise(a, b), atol=1e-5)
    from stedge_runtime.similarity import similarity_matrix

    from stedge.models.similarity import get_similarity

    for name in ("cosine", "dot", "euclidean", "manhattan"):  # one numpy implementation, equal to the torch one
        np.testing.assert_allclose(similarity_matrix(name, a, b), get_similarity(name)(a, b).numpy(), atol=1e-4)
        np.testing.assert_allclose(
            similarity_matrix(name, a, b, pairwise=True), get_similarity(name, True)(a, b).numpy(), atol=1e-4
        )
    with pytest.raises(InputError, match="equally shaped"):
        enc.similarity_pairwise(a, b[:2])


def test_prompts_like_torch(tiny_prompt_artifact, tiny_prompt_model):
    from stedge.models import SentenceEncoder

    ref = SentenceEncoder(str(tiny_prompt_model), device="cpu")
    enc = Encoder.load(tiny_prompt_artifact)
    assert "prompt_length" in enc._engine.inputs  # include_prompt=False puts it in the graph
    assert enc.prompts == {"query": "query: ", "doc": "passage: "} and enc.default_prompt_name == "query"
    texts = ["what is a tomato", "a red fruit"]
    np.testing.assert_allclose(enc.encode(texts), ref.encode(texts), atol=1e-5)  # default prompt
    np.testing.assert_allclose(enc.encode(texts, prompt_name="doc"), ref.encode(texts, prompt_name="doc"), atol=1e-5)
    np.testing.assert_allclose(enc.encode(texts, prompt="x: "), ref.encode(texts, prompt="x: "), atol=1e-5)
    # one text (Tokenizer.one's path) gets its prompt_length too
    np.testing.assert_allclose(
        enc.encode(texts[0], prompt_name="doc"), ref.encode(texts, prompt_name="doc")[0], atol=1e-5
    )
    # an explicit empty prompt overrides the default one
    assert not np.allclose(enc.encode(texts, prompt=""), enc.encode(texts), atol=1e-5)
    with pytest.raises(InputError, match="prompt_name 'nope' not found.*doc, query"):
        enc.encode(texts, prompt_name="nope")
