"""Against the real thing: the bundled all-MiniLM-L6-v2 and STS-B test, stedge vs sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from stedge import CrossEncoder, SentenceEncoder
from stedge.data import pairwise_cosine, spearman

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def encoders(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceEncoder(minilm_path, device="cpu"), SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="module")
def sts_embeddings(encoders, stsb_test):
    ours, st = encoders
    texts = stsb_test.sentences1 + stsb_test.sentences2
    return ours.encode(texts, batch_size=64), st.encode(texts, batch_size=64)


def test_embeddings_agree_with_sentence_transformers(sts_embeddings):
    a, b = sts_embeddings
    assert pairwise_cosine(a, b).min() >= 0.99999


def test_stsb_test_spearman(sts_embeddings, stsb_test):
    emb = sts_embeddings[0]
    n = len(stsb_test)
    score = spearman(pairwise_cosine(emb[:n], emb[n:]), stsb_test.scores) * 100
    assert abs(score - 82.03) <= 0.05, score


def test_save_round_trips_both_ways(encoders, stsb_test, tmp_path):
    from sentence_transformers import SentenceTransformer

    ours, st = encoders
    texts = stsb_test.sentences1[:200]
    ref = ours.encode(texts)
    ours.save(tmp_path / "by_stedge")
    loaded_st = SentenceTransformer(str(tmp_path / "by_stedge"), device="cpu")
    assert loaded_st.max_seq_length == ours.max_seq_length
    assert pairwise_cosine(loaded_st.encode(texts), ref).min() >= 0.99999
    st.save(str(tmp_path / "by_st"))
    loaded = SentenceEncoder(tmp_path / "by_st", device="cpu")
    assert loaded.max_seq_length == st.max_seq_length
    assert pairwise_cosine(loaded.encode(texts), ref).min() >= 0.99999


def test_cross_encoder_from_minilm_weights(minilm_path, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    torch.manual_seed(0)
    ref = STCrossEncoder(str(minilm_path), num_labels=1, device="cpu")  # MiniLM body + fresh head
    ref.save(str(tmp_path / "ce"))
    ours = CrossEncoder(tmp_path / "ce", device="cpu")
    query = "How do cats communicate?"
    docs = [
        "Cats communicate with meows, purrs and body language.",
        "The stock market fell sharply today.",
        "Kittens learn to meow to talk to humans.",
        "A recipe for lemon cake.",
        "",
    ]
    np.testing.assert_allclose(
        ours.predict([(query, d) for d in docs]), ref.predict([(query, d) for d in docs]), atol=1e-5
    )
    assert [r["corpus_id"] for r in ours.rank(query, docs)] == [r["corpus_id"] for r in ref.rank(query, docs)]
