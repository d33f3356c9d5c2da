"""Real-model check for PCA on the bundled all-MiniLM-L6-v2 (marked real)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stedge.compress.pca import pre_normalize_embeddings, reduce_dim
from stedge.compress.report import load_sentences
from stedge.data import pairwise_cosine, spearman
from stedge.models import Dense, Normalize, SentenceEncoder


@pytest.mark.real
def test_pca_384_to_128_keeps_stsb_spearman(minilm_path, shared_data, stsb_test):
    enc = SentenceEncoder(minilm_path, device="cpu")
    fit = load_sentences([shared_data / "stsb" / "train.tsv.gz"], limit=3000)
    n = len(stsb_test)
    full = pre_normalize_embeddings(enc, stsb_test.sentences1 + stsb_test.sentences2)
    base = 100 * spearman(pairwise_cosine(full[:n], full[n:]), stsb_test.scores)
    assert 81.5 < base < 82.5  # the teacher's 82.03
    reduced, info = reduce_dim(enc, fit, 128)
    assert [type(m) for m in reduced][-2:] == [Dense, Normalize] and info["dim_out"] == 128
    assert reduced.get_sentence_embedding_dimension() == 128
    # the inserted layer applied to the same pre-Normalize embeddings (the tiny-model tests check that
    # encode() through the saved chain equals exactly this)
    dense = list(reduced)[-2]
    with torch.no_grad():
        proj = dense({"sentence_embedding": torch.as_tensor(full)})["sentence_embedding"].numpy()
    assert np.isfinite(proj).all()
    after = 100 * spearman(pairwise_cosine(proj[:n], proj[n:]), stsb_test.scores)
    assert after > base - 1.0, f"PCA 384->128 Spearman {after:.2f} vs full {base:.2f}"
