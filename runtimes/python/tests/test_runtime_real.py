"""The fp32 artifact of the bundled all-MiniLM-L6-v2 against PyTorch on STS-B test sentences."""

from __future__ import annotations

import pytest
from stedge_runtime import Encoder


@pytest.mark.real
def test_minilm_matches_torch(minilm_artifact, minilm_path, stsb_test):
    from sentence_transformers import SentenceTransformer

    texts = list(dict.fromkeys(list(stsb_test.sentences1[:250]) + list(stsb_test.sentences2[:250])))
    enc = Encoder.load(minilm_artifact, variant="onnx-fp32")
    assert enc.dimension == 384 and enc.max_seq_length == 256
    got = enc.encode(texts, batch_size=32)
    ref = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, batch_size=32, convert_to_numpy=True)
    cos = enc.similarity_pairwise(got, ref)
    assert cos.min() >= 0.9999, cos.min()
