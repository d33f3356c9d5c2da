"""Reranker on a tiny cross-encoder artifact: parity with the torch CrossEncoder, ranking, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from stedge_runtime import Reranker

PAIRS = [
    ("what is a tomato", "A tomato is a red fruit."),
    ("what is a tomato", ""),
    ("how fast is a cheetah", "Cheetahs run up to 110 km/h in short bursts, faster than any other land animal."),
    ("q", "word " * 300),  # truncated (longest first)
]


@pytest.fixture(scope="module")
def torch_ce(tiny_cross_encoder):
    from stedge.models import CrossEncoder

    return CrossEncoder(str(tiny_cross_encoder), device="cpu")


@pytest.mark.parametrize("variant", ["onnx-fp32", "openvino-fp32"])
def test_scores_match_torch(tiny_ce_artifact, torch_ce, variant):
    rr = Reranker.load(tiny_ce_artifact, variant=variant)
    assert rr.num_labels == 1
    np.testing.assert_allclose(rr.predict(PAIRS, batch_size=2), torch_ce.predict(PAIRS), atol=1e-5)
    np.testing.assert_allclose(
        rr.predict(PAIRS, apply_activation=False), torch_ce.predict(PAIRS, apply_activation=False), atol=1e-4
    )
    assert np.ndim(rr.predict(PAIRS[0])) == 0


def test_rank_like_torch(tiny_ce_artifact, torch_ce):
    rr = Reranker.load(tiny_ce_artifact)
    docs = [d for _, d in PAIRS]
    got = rr.rank("what is a tomato", docs, top_k=3, return_documents=True)
    ref = torch_ce.rank("what is a tomato", docs, top_k=3, return_documents=True)
    assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in ref]
    assert [r["text"] for r in got] == [docs[r["corpus_id"]] for r in got]
    scores = [r["score"] for r in got]
    assert scores == sorted(scores, reverse=True) and len(got) == 3
    np.testing.assert_allclose(scores, [r["score"] for r in ref], atol=1e-5)
    assert rr.rank("q", []) == []


def test_bad_input(tiny_ce_artifact):
    rr = Reranker.load(tiny_ce_artifact)
    assert rr.predict([]).shape == (0,)
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a \(str, str\) pair"):
        rr.predict([("a", "b"), ("a", 3)])
    with pytest.raises(TypeError, match=r"documents\[0\] is int"):
        rr.rank("q", [1])
    with pytest.raises(TypeError, match="query must be str"):
        rr.rank(None, ["a"])
