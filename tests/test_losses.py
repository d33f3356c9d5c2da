"""Losses: registry, column checks, values against hand-computed cases and sentence-transformers,
gradient flow, the gradient cache (same gradients as MNRL) and Matryoshka (one forward per batch)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stedge.errors import StedgeError
from stedge.training import losses as L

ST_LOSSES = "sentence_transformers.sentence_transformer.losses"


class FakeModel(nn.Module):
    """Embeddings from a trainable table: features {"idx": LongTensor[B]} -> rows of the table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone().float())
        self.calls = 0

    def forward(self, features):
        self.calls += 1
        return {"sentence_embedding": self.table[features["idx"]]}

    def get_sentence_embedding_dimension(self) -> int:
        return self.table.shape[1]

    get_embedding_dimension = get_sentence_embedding_dimension
    _get_untruncated_embedding_dimension = get_sentence_embedding_dimension  # sentence-transformers 6's MatryoshkaLoss

    @property
    def device(self):
        return self.table.device


def cols(*rows: list[int]) -> list[dict]:
    return [{"idx": torch.tensor(r)} for r in rows]


@pytest.fixture
def model() -> FakeModel:
    torch.manual_seed(0)
    return FakeModel(torch.randn(12, 6))


def st_loss(name: str, model, **kw):
    import importlib

    return getattr(importlib.import_module(ST_LOSSES), name)(model, **kw)


# ------------------------------------------------------------------ registry
def test_registry_names_and_unknown():
    assert L.get_loss("mnrl") is L.MultipleNegativesRankingLoss
    assert L.get_loss("MultipleNegativesRankingLoss") is L.MultipleNegativesRankingLoss
    assert L.get_loss("cached_mnrl") is L.CachedMultipleNegativesRankingLoss
    assert L.get_loss("COSENT") is L.CoSENTLoss
    for name in ("cosent", "angle", "cosine", "softmax", "triplet", "contrastive", "mse", "margin-mse", "matryoshka"):
        assert name in L.LOSSES
    with pytest.raises(StedgeError) as e:
        L.get_loss("nope")
    assert "nope" in str(e.value) and "mnrl" in str(e.value) and "margin-mse" in str(e.value)


def test_build_loss_rejects_unknown_parameter(model):
    assert L.build_loss("cosent", model, scale=10).scale == 10
    with pytest.raises(StedgeError, match="scale"):
        L.build_loss("cosent", model, temperature=0.1)


def test_column_checks_name_found_and_expected(model):
    loss = L.TripletLoss(model)
    assert (loss.min_inputs, loss.max_inputs, loss.needs_label) == (3, 3, False)
    assert loss.expected_columns == (3,)
    with pytest.raises(StedgeError, match="expects 3 input columns.*found 2 input columns"):
        loss(cols([0, 1], [2, 3]), None)
    with pytest.raises(StedgeError, match=r"found 1 input column \(anchor\)"):
        loss.check_inputs(1, False, ["anchor"])
    with pytest.raises(StedgeError, match="label"):
        L.CoSENTLoss(model)(cols([0, 1], [2, 3]), None)
    mnrl = L.MultipleNegativesRankingLoss(model)
    assert mnrl.expected_columns is None and mnrl.describe_inputs() == "at least 2 input columns"
    m = L.MatryoshkaLoss(model, "cosent", [6, 3])
    assert (m.min_inputs, m.max_inputs, m.needs_label) == (2, 2, True)


# ----------------------------------------------------------- hand-computed cases
def test_mnrl_hand_computed():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    model = FakeModel(emb)
    loss = L.MultipleNegativesRankingLoss(model, scale=20.0)(cols([0, 1], [2, 3]), None)
    # anchor 0: cos to (p0, p1) = (1, 0.6); anchor 1: (0, 0.8)
    l0 = -20 * 1 + math.log(math.exp(20) + math.exp(12))
    l1 = -20 * 0.8 + math.log(math.exp(0) + math.exp(16))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_mnrl_hard_negatives_are_candidates():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    model = FakeModel(emb)
    # one row: anchor 0, positive 1 (cos 1), negative 2 (cos 0)
    loss = L.MultipleNegativesRankingLoss(model, scale=1.0)(cols([0], [1], [2]), None)
    assert loss.item() == pytest.approx(-1 + math.log(math.e + 1), rel=1e-6)


def test_cosent_hand_computed():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    model = FakeModel(emb)
    # pair 0: cos 1, label 0 ; pair 1: cos 0, label 1 -> one ordered pair (s0 - s1) = 1
    loss = L.CoSENTLoss(model, scale=2.0)(cols([0, 2], [1, 3]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2.0)), rel=1e-6)


def test_cosine_similarity_hand_computed():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    model = FakeModel(emb)
    loss = L.CosineSimilarityLoss(model)(cols([0, 0], [1, 2]), torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(((0.6 - 1.0) ** 2 + (0.0 - 0.5) ** 2) / 2, rel=1e-6)


def test_triplet_hand_computed():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [1.0, 0.0]])
    model = FakeModel(emb)
    # d(a,p)=5, d(a,n)=10 -> relu(5 - 10 + 5) = 0 ; second: d(a,p)=10, d(a,n)=1 -> 14
    loss = L.TripletLoss(model)(cols([0, 0], [1, 2], [2, 3]), None)
    assert loss.item() == pytest.approx((0 + 14) / 2, rel=1e-6)
    cos = L.TripletLoss(model, distance_metric="cosine")
    assert cos.triplet_margin == 0.5
    with pytest.raises(StedgeError, match="distance_metric"):
        L.TripletLoss(model, distance_metric="hamming")


def test_contrastive_hand_computed():
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    model = FakeModel(emb)
    # pair (0,1): cos dist 0.4, label 1 -> 0.5 * 0.16 ; pair (0,2): dist 1, label 0 -> relu(0.5 - 1) = 0
    loss = L.ContrastiveLoss(model)(cols([0, 0], [1, 2]), torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((0.5 * 0.16 + 0) / 2, rel=1e-5)


def test_mse_hand_computed():
    model = FakeModel(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    teacher = torch.tensor([[1.0, 0.0], [3.0, 5.0]])
    loss = L.MSELoss(model)(cols([0, 1]), teacher)
    assert loss.item() == pytest.approx((4 + 1) / 4, rel=1e-6)
    # two columns sharing the teacher embedding: mean of the two column losses
    both = L.MSELoss(model)(cols([0, 1], [0, 1]), teacher)
    assert both.item() == pytest.approx(loss.item())
    with pytest.raises(StedgeError, match="shape"):
        L.MSELoss(model)(cols([0, 1]), torch.zeros(2, 3))


def test_margin_mse_hand_computed():
    model = FakeModel(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0]]))
    # dot(q, pos) = 2, dot(q, neg) = 1 -> margin 1 ; teacher margin 3 -> (1 - 3)^2 = 4
    loss = L.MarginMSELoss(model)(cols([0], [1], [2]), torch.tensor([3.0]))
    assert loss.item() == pytest.approx(4.0)
    # teacher [pos, neg] scores give the same
    assert L.MarginMSELoss(model)(cols([0], [1], [2]), torch.tensor([[5.0, 2.0]])).item() == pytest.approx(4.0)


def test_softmax_hand_computed():
    model = FakeModel(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss = L.SoftmaxLoss(model, num_labels=3)
    assert loss.classifier.in_features == 6
    with torch.no_grad():
        loss.classifier.weight.zero_()
        loss.classifier.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    value = loss(cols([0], [1]), torch.tensor([2]))
    assert value.item() == pytest.approx(-math.log(math.exp(2) / (1 + math.e + math.exp(2))), rel=1e-6)
    with pytest.raises(StedgeError, match="class ids"):
        loss(cols([0], [1]), torch.tensor([3]))


def test_angle_similarity_of_parallel_vectors_is_one():
    from stedge.training.losses.angle import pairwise_angle_sim

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert pairwise_angle_sim(x, 2 * x).item() == pytest.approx(1.0, rel=1e-6)


# ------------------------------------------- same value as sentence-transformers
CASES = [
    ("MultipleNegativesRankingLoss", {}, 3, None),
    ("CoSENTLoss", {}, 2, "score"),
    ("AnglELoss", {}, 2, "score"),
    ("CosineSimilarityLoss", {}, 2, "score"),
    ("TripletLoss", {}, 3, None),
    ("ContrastiveLoss", {}, 2, "binary"),
    ("MSELoss", {}, 1, "teacher"),
    ("MarginMSELoss", {}, 3, "margin"),
]


def _labels(kind, b, dim):
    g = torch.Generator().manual_seed(1)
    if kind == "score":
        return torch.rand(b, generator=g)
    if kind == "binary":
        return torch.tensor([1, 0, 1, 0])[:b]
    if kind == "teacher":
        return torch.randn(b, dim, generator=g)
    if kind == "margin":
        return torch.randn(b, generator=g)
    return None


@pytest.mark.parametrize("name,kw,ncols,label_kind", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradients_match_sentence_transformers(model, name, kw, ncols, label_kind):
    b = 4
    features = cols(*[list(range(i * b, (i + 1) * b)) for i in range(ncols)])
    labels = _labels(label_kind, b, model.table.shape[1])
    ours = getattr(L, name)(model, **kw)
    value = ours(features, labels)
    value.backward()
    grad = model.table.grad.clone()
    assert grad[: ncols * b].abs().sum() > 0, "no gradient reached the model"
    model.table.grad = None
    ref = st_loss(name, model, **kw)(cols(*[list(range(i * b, (i + 1) * b)) for i in range(ncols)]), labels)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad, model.table.grad, rtol=1e-4, atol=1e-6)
    cfg = ours.get_config_dict()
    assert isinstance(cfg, dict)


def test_softmax_matches_sentence_transformers(model):
    ours = L.SoftmaxLoss(model, num_labels=3)
    ref = st_loss("SoftmaxLoss", model, embedding_dimension=6, num_labels=3)
    ref.classifier.load_state_dict(ours.classifier.state_dict())
    labels = torch.tensor([0, 2, 1, 1])
    value = ours(cols([0, 1, 2, 3], [4, 5, 6, 7]), labels)
    value.backward()
    assert model.table.grad.abs().sum() > 0 and ours.classifier.weight.grad.abs().sum() > 0
    assert value.item() == pytest.approx(ref(cols([0, 1, 2, 3], [4, 5, 6, 7]), labels).item(), rel=1e-6)
    assert ours.get_config_dict()["num_labels"] == 3


def test_triplet_cosine_and_contrastive_euclidean_match_sentence_transformers(model):
    import importlib

    mod = importlib.import_module(ST_LOSSES)
    f3 = cols([0, 1], [2, 3], [4, 5])
    ours = L.TripletLoss(model, distance_metric="cosine", triplet_margin=0.3)(f3, None)
    ref = mod.TripletLoss(model, distance_metric=mod.TripletDistanceMetric.COSINE, triplet_margin=0.3)(f3, None)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    f2, y = cols([0, 1, 2], [3, 4, 5]), torch.tensor([1, 0, 1])
    ours = L.ContrastiveLoss(model, distance_metric="euclidean", margin=3.0)(f2, y)
    ref = mod.ContrastiveLoss(model, distance_metric=mod.SiameseDistanceMetric.EUCLIDEAN, margin=3.0)(f2, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


# ---------------------------------------------------------------- matryoshka
def test_matryoshka_forwards_once_and_sums_truncated_losses(model):
    inner = L.CoSENTLoss(model)
    loss = L.MatryoshkaLoss(model, inner, matryoshka_dims=[2, 6, 4], matryoshka_weights=[0.5, 1.0, 2.0])
    assert loss.matryoshka_dims == (6, 4, 2) and loss.matryoshka_weights == (1.0, 2.0, 0.5)
    features, labels = cols([0, 1, 2], [3, 4, 5]), torch.tensor([0.1, 0.9, 0.4])
    model.calls = 0
    value = loss(features, labels)
    assert model.calls == 2, "the model must run once per input column, not once per dimension"
    a, b = model.table[[0, 1, 2]].detach(), model.table[[3, 4, 5]].detach()
    expected = sum(
        w * inner.compute_loss_from_embeddings([L.shrink(a, d), L.shrink(b, d)], labels).item()
        for d, w in [(6, 1.0), (4, 2.0), (2, 0.5)]
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert model.table.grad.abs().sum() > 0
    ref = st_loss(
        "MatryoshkaLoss",
        model,
        loss=st_loss("CoSENTLoss", model),
        matryoshka_dims=[6, 4, 2],
        matryoshka_weights=[1.0, 2.0, 0.5],
    )
    assert value.item() == pytest.approx(ref(cols([0, 1, 2], [3, 4, 5]), labels).item(), rel=1e-5)
    assert loss.get_config_dict() == {
        "loss": "CoSENTLoss",
        "matryoshka_dims": [6, 4, 2],
        "matryoshka_weights": [1.0, 2.0, 0.5],
        "n_dims_per_step": -1,
    }


def test_matryoshka_by_name_and_bad_dims(model):
    assert isinstance(L.MatryoshkaLoss(model, "mnrl", [6, 3]).loss, L.MultipleNegativesRankingLoss)
    with pytest.raises(StedgeError, match="exceed"):
        L.MatryoshkaLoss(model, "mnrl", [7])
    with pytest.raises(StedgeError, match="weights"):
        L.MatryoshkaLoss(model, "mnrl", [6, 3], [1.0])


# --------------------------------------------------------------- grad cache
def _grads(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}


def _assert_same(got: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    """Equal up to float32 rounding of sums over many tokens (tolerance relative to the largest entry)."""
    scale = max(ref.abs().max().item(), 1e-12)
    diff = (got - ref).abs().max().item()
    assert diff <= 1e-5 * scale + 1e-7, f"{name}: max diff {diff:.3g} (largest gradient entry {scale:.3g})"


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from stedge.models import SentenceEncoder

    enc = SentenceEncoder(tiny_model, device="cpu")
    enc.eval()  # no dropout: the two computations must agree to rounding
    return enc


TEXTS_A = ["a cat sits on the mat", "dogs bark", "the sun is hot today", "rain again", "I like green tea"]
TEXTS_P = ["a cat on a mat", "a dog barking loudly", "hot sunny weather", "it is raining", "tea is nice"]
TEXTS_N = ["stock markets fell", "a quiet library", "snow in winter", "dry desert", "coffee beans"]


def _features(enc):
    return [enc.tokenize(t) for t in (TEXTS_A, TEXTS_P, TEXTS_N)]


def test_cached_mnrl_matches_mnrl_gradients(encoder):
    encoder.zero_grad()
    ref = L.MultipleNegativesRankingLoss(encoder)(_features(encoder), None)
    ref.backward()
    ref_grads = _grads(encoder)
    assert ref_grads and any(g.abs().sum() > 0 for n, g in ref_grads.items() if "encoder.layer.0" in n)
    encoder.zero_grad()
    cached = L.CachedMultipleNegativesRankingLoss(encoder, mini_batch_size=2)
    value = cached(_features(encoder), None)
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    (value * 0.5).backward()  # a scaled loss (gradient accumulation) scales the cached gradients too
    got = _grads(encoder)
    assert got.keys() == ref_grads.keys()
    for n in ref_grads:
        _assert_same(got[n], 0.5 * ref_grads[n], n)
    encoder.zero_grad()


def test_cached_mnrl_inside_matryoshka_matches_plain(encoder):
    dim = encoder.get_sentence_embedding_dimension()
    encoder.zero_grad()
    plain = L.MatryoshkaLoss(encoder, L.MultipleNegativesRankingLoss(encoder), [dim, 16, 8])
    ref = plain(_features(encoder), None)
    ref.backward()
    ref_grads = _grads(encoder)
    encoder.zero_grad()
    cached = L.MatryoshkaLoss(encoder, L.CachedMultipleNegativesRankingLoss(encoder, mini_batch_size=3), [dim, 16, 8])
    value = cached(_features(encoder), None)
    value.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    got = _grads(encoder)
    for n in ref_grads:
        _assert_same(got[n], ref_grads[n], n)
    encoder.zero_grad()


def test_cached_mnrl_without_grad_returns_loss(encoder):
    cached = L.CachedMultipleNegativesRankingLoss(encoder, mini_batch_size=2)
    with torch.no_grad():
        value = cached(_features(encoder)[:2], None)
    with torch.no_grad():
        ref = L.MultipleNegativesRankingLoss(encoder)(_features(encoder)[:2], None)
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)


def test_cached_mnrl_replays_dropout(tiny_model):
    """In train mode (dropout on) the re-forward must see the same dropout masks as the first pass."""
    from stedge.models import SentenceEncoder

    enc = SentenceEncoder(tiny_model, device="cpu")
    enc.train()
    for m in enc.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.3
    cached = L.CachedMultipleNegativesRankingLoss(enc, mini_batch_size=2)
    torch.manual_seed(3)
    value = cached(_features(enc)[:2], None)
    value.backward()
    grads = _grads(enc)
    # Recompute by hand with the same seed: same masks in the same order, one mini-batch at a time.
    enc.zero_grad()
    torch.manual_seed(3)
    embs = []
    for f in _features(enc)[:2]:
        parts = []
        for s in range(0, 5, 2):
            parts.append(enc({k: v[s : s + 2] for k, v in f.items()})["sentence_embedding"])
        embs.append(torch.cat(parts))
    ref = L.MultipleNegativesRankingLoss(enc).compute_loss_from_embeddings(embs, None)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    for n, g in _grads(enc).items():
        _assert_same(grads[n], g, n)


# ---------------------------------------------------------- real tiny encoder
@pytest.mark.parametrize("name", ["cosent", "angle", "cosine", "contrastive"])
def test_pair_losses_train_the_tiny_encoder(encoder, name):
    loss = L.build_loss(name, encoder)
    features = [encoder.tokenize(TEXTS_A[:4]), encoder.tokenize(TEXTS_P[:4])]
    encoder.zero_grad()
    value = loss(features, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert torch.isfinite(value)
    value.backward()
    g = encoder.transformer.auto_model.embeddings.word_embeddings.weight.grad
    assert g is not None and g.abs().sum() > 0
    encoder.zero_grad()


def test_trainer_reads_the_column_contract(model):
    """stedge.training.data.loss_spec (the trainer's data check) sees each loss's declared columns."""
    from stedge.training.data import loss_spec

    assert loss_spec(L.TripletLoss(model)) == (3, 3, False)
    assert loss_spec(L.MultipleNegativesRankingLoss(model)) == (2, None, False)
    assert loss_spec(L.CoSENTLoss(model)) == (2, 2, True)
    assert loss_spec(L.MSELoss(model)) == (1, None, True)
    assert loss_spec(L.MarginMSELoss(model)) == (3, None, True)
    assert loss_spec(L.MatryoshkaLoss(model, "triplet", [6, 3])) == (3, 3, False)
