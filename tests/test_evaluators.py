"""Evaluators: metric values against sentence-transformers' own evaluators on the same model and data,
hand-computed ranking metrics, the BEIR loader, CSV logs, and models that are not stedge's."""

from __future__ import annotations

import csv
import gzip
import importlib
import json
import math
import statistics

import numpy as np
import pytest

from stedge.errors import StedgeError
from stedge.evaluation import (
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
    MSEEvaluator,
    RerankingEvaluator,
    SequentialEvaluator,
    TripletEvaluator,
    load_beir,
    ranking_metrics,
)

ST_EVAL = "sentence_transformers.sentence_transformer.evaluation"

S1 = [
    "A man is playing a guitar.",
    "A woman is slicing onions.",
    "The cat sleeps on the sofa.",
    "Kids play football outside.",
    "A plane is taking off.",
    "Someone is cooking pasta.",
    "The stock market fell today.",
    "A dog runs in the park.",
    "Two people are dancing.",
    "The child reads a book.",
    "It is raining heavily.",
    "A bird sits on a wire.",
]
S2 = [
    "A man plays the guitar.",
    "A man is cutting tomatoes.",
    "A cat is sleeping.",
    "Children are playing soccer.",
    "An airplane departs.",
    "Pasta is being cooked.",
    "Shares dropped sharply.",
    "A cat sits indoors.",
    "A couple dances a tango.",
    "A kid looks at pictures.",
    "The sun is shining.",
    "A bird is flying away.",
]
SCORES = [4.8, 1.2, 3.9, 4.2, 4.5, 4.0, 3.5, 0.8, 3.7, 2.5, 0.4, 2.0]
LABELS = [1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0]


@pytest.fixture(scope="module")
def ours(tiny_model):
    from stedge.models import SentenceEncoder

    return SentenceEncoder(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def st_model(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model), device="cpu")


def st_eval(cls_name, *args, **kw):
    import importlib

    return getattr(importlib.import_module(ST_EVAL), cls_name)(*args, **kw)


def close(a: dict, b: dict, keys, tol: float = 1e-6) -> None:
    for k in keys:
        assert a[k] == pytest.approx(b[k], abs=tol), k


class RuntimeLike:
    """A stand-in for stedge_runtime.Encoder: encode(texts, batch_size, prompt_name, prompt, normalize), no
    show_progress_bar, records the keyword arguments it got."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[dict] = []

    def encode(self, texts, batch_size=32, prompt_name=None, prompt=None, normalize=None):
        self.calls.append({"batch_size": batch_size, "prompt_name": prompt_name, "prompt": prompt})
        return self.inner.encode(list(texts), batch_size=batch_size)


# ------------------------------------------------------------ STS similarity
def test_embedding_similarity_matches_sentence_transformers(ours, st_model, tmp_path):
    ev = EmbeddingSimilarityEvaluator(S1, S2, [s / 5 for s in SCORES], name="sts-dev", batch_size=5)
    res = ev(ours, output_path=str(tmp_path), epoch=1, steps=10)
    assert ev.primary_metric == "sts-dev_spearman_cosine"
    ref = st_eval(
        "EmbeddingSimilarityEvaluator",
        S1,
        S2,
        [s / 5 for s in SCORES],
        name="sts-dev",
        similarity_fn_names=["cosine", "euclidean", "manhattan", "dot"],
    )(st_model)
    keys = [f"sts-dev_{m}_{fn}" for m in ("pearson", "spearman") for fn in ("cosine", "euclidean", "manhattan", "dot")]
    # same embeddings, same numbers up to float32 rounding: sentence-transformers scores in float32, we in
    # float64, and the tiny random model's cosines are so close together that Pearson amplifies it to ~1e-6
    close(ev(st_model), ref, keys, tol=1e-5)
    # the stedge model, and a runtime-like model, agree to float32 rounding of the embeddings
    close(res, ref, keys, tol=1e-5)
    rt = RuntimeLike(ours)
    close(ev(rt), res, keys)
    assert rt.calls and all(c["prompt_name"] is None and c["batch_size"] == 5 for c in rt.calls)
    ev(ours, output_path=str(tmp_path), epoch=2, steps=20)
    rows = list(csv.reader(open(tmp_path / ev.csv_file)))
    assert rows[0][:3] == ["epoch", "steps", "pearson_cosine"] and len(rows) == 3 and rows[2][:2] == ["2", "20"]


def test_embedding_similarity_rates_a_cross_encoder_by_its_pair_scores(tiny_cross_encoder):
    """A cross-encoder has no embeddings: the STS evaluator correlates its own pair scores with the gold ones, as
    sentence-transformers' CrossEncoderCorrelationEvaluator does (same keys, same numbers), and says its primary
    metric is `spearman`, before and after the call."""
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator

    from stedge.models import CrossEncoder

    gold = [s / 5 for s in SCORES]
    ev = EmbeddingSimilarityEvaluator(S1, S2, gold, name="sts-dev", batch_size=5)
    ce = CrossEncoder(tiny_cross_encoder, device="cpu")
    assert ev.primary_metric_for(ce) == "sts-dev_spearman"
    res = ev(ce)
    assert set(res) == {"sts-dev_pearson", "sts-dev_spearman"} and ev.primary_metric == "sts-dev_spearman"
    st_ce = STCrossEncoder(str(tiny_cross_encoder), device="cpu")
    ref = CrossEncoderCorrelationEvaluator(list(zip(S1, S2)), gold, name="sts-dev")(st_ce)
    close(res, ref, ["sts-dev_pearson", "sts-dev_spearman"], tol=1e-5)

    class TwoLabels:  # a cross-encoder with two labels per pair
        def predict(self, pairs, batch_size=32):
            return np.ones((len(pairs), 2))

    with pytest.raises(StedgeError, match="one score per pair"):
        ev(TwoLabels())


def test_embedding_similarity_from_file_scales_scores(tmp_path, ours):
    path = tmp_path / "dev.tsv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence1", "sentence2", "score"])
        w.writerows(zip(S1, S2, SCORES))
    ev = EmbeddingSimilarityEvaluator.from_file(path)
    assert ev.name == f"{tmp_path.name}-dev"
    assert max(ev.scores) == pytest.approx(1.0) and ev.scores[1] == pytest.approx(1.2 / 4.8)
    ref = EmbeddingSimilarityEvaluator(S1, S2, SCORES, name="x")(ours)
    assert ev(ours)[ev.primary_metric] == pytest.approx(ref["x_spearman_cosine"], abs=1e-9)
    assert len(EmbeddingSimilarityEvaluator.from_file(path, limit=5).scores) == 5


def test_embedding_similarity_passes_prompt_name_only_when_given(ours):
    rt = RuntimeLike(ours)
    EmbeddingSimilarityEvaluator(S1, S2, SCORES, prompt_name="query")(rt)
    assert all(c["prompt_name"] == "query" for c in rt.calls)


def test_bad_inputs_are_named():
    with pytest.raises(StedgeError, match="differ in length"):
        EmbeddingSimilarityEvaluator(S1, S2[:3], SCORES)
    with pytest.raises(StedgeError, match="unknown similarity"):
        EmbeddingSimilarityEvaluator(S1, S2, SCORES, main_similarity="jaccard")
    with pytest.raises(StedgeError, match="0 or 1"):
        BinaryClassificationEvaluator(S1, S2, [2] * len(S1))
    with pytest.raises(StedgeError, match="no encode"):
        EmbeddingSimilarityEvaluator(S1, S2, SCORES)(object())


# ------------------------------------------------------------------- triplet
def test_triplet_matches_sentence_transformers(ours, st_model, tmp_path):
    neg = S2[1:] + S2[:1]
    ev = TripletEvaluator(S1, S2, neg, name="nli", similarity_fn_names=["cosine", "dot", "euclidean", "manhattan"])
    res = ev(ours)
    assert ev.primary_metric == "nli_cosine_accuracy"
    ref = st_eval(
        "TripletEvaluator", S1, S2, neg, name="nli", similarity_fn_names=["cosine", "dot", "euclidean", "manhattan"]
    )(st_model)
    close(res, ref, [f"nli_{fn}_accuracy" for fn in ("cosine", "dot", "euclidean", "manhattan")])
    # hand check of the cosine accuracy
    a, p, n = ours.encode(S1), ours.encode(S2), ours.encode(neg)
    cos = lambda x, y: (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)  # noqa: E731
    assert res["nli_cosine_accuracy"] == pytest.approx(float(np.mean(cos(a, p) > cos(a, n))))
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["anchor", "positive", "negative"])
        w.writerows(zip(S1, S2, neg))
    assert TripletEvaluator.from_file(path, name="nli")(ours)["nli_cosine_accuracy"] == pytest.approx(
        res["nli_cosine_accuracy"]
    )


# ------------------------------------------------------- information retrieval
def test_ranking_metrics_hand_computed():
    m = ranking_metrics(
        [["d1", "d2", "d3"], ["d9", "d8", "d7"]],
        [{"d2", "d3"}, {"d4"}],
        accuracy_at_k=[1, 3],
        precision_recall_at_k=[3],
        mrr_at_k=[3],
        ndcg_at_k=[3],
        map_at_k=[3],
    )
    # query 1: hits at ranks 2 and 3; query 2: no hit
    assert m["accuracy@1"] == 0 and m["accuracy@3"] == 0.5
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2) and m["recall@3"] == pytest.approx(0.5)
    assert m["mrr@3"] == pytest.approx(0.25)
    ndcg1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@3"] == pytest.approx(ndcg1 / 2)
    assert m["map@3"] == pytest.approx(((1 / 2 + 2 / 3) / 2) / 2)


DOCS = [f"{a} {b}" for a, b in zip(S1 + S2, S2[::-1] + S1[::-1])]


def _ir_data():
    corpus = {f"doc{i}": t for i, t in enumerate(DOCS)}
    queries = {f"q{i}": S1[i] for i in range(0, 12, 2)}
    queries["q-none"] = "a query without any relevant document"
    rel = {f"q{i}": {f"doc{i}", f"doc{(i * 5 + 3) % len(DOCS)}"} for i in range(0, 12, 2)}
    rel["q4"] = {"doc4"}
    return queries, corpus, rel


def test_information_retrieval_matches_sentence_transformers(ours, st_model, tmp_path):
    queries, corpus, rel = _ir_data()
    kw = dict(accuracy_at_k=[1, 3, 5], precision_recall_at_k=[1, 3, 5], mrr_at_k=[5], ndcg_at_k=[5], map_at_k=[10])
    ev = InformationRetrievalEvaluator(
        queries, corpus, rel, name="toy", corpus_chunk_size=7, batch_size=4, similarity_fn_names=["cosine", "dot"], **kw
    )
    assert len(ev.queries) == 6  # the query without relevant docs is skipped
    res = ev(ours, output_path=str(tmp_path))
    assert ev.primary_metric == "toy_cosine_ndcg@5"
    from sentence_transformers.util import cos_sim, dot_score

    ref = st_eval(
        "InformationRetrievalEvaluator",
        queries,
        corpus,
        rel,
        name="toy",
        corpus_chunk_size=7,
        score_functions={"cosine": cos_sim, "dot": dot_score},
        **kw,
    )(st_model)
    keys = [k for k in ref if k.startswith("toy_cosine_") or k.startswith("toy_dot_")]
    assert len(keys) == 2 * 12
    close(res, ref, keys)
    assert (tmp_path / ev.csv_file).exists()
    # a single chunk gives the same result as many small chunks
    one = InformationRetrievalEvaluator(queries, corpus, rel, name="toy", similarity_fn_names=["cosine", "dot"], **kw)(
        ours
    )
    close(one, res, keys, tol=1e-9)


def _write_beir(folder, gz: bool):
    folder.mkdir()
    (folder / "qrels").mkdir()
    op = (
        (lambda p: gzip.open(str(p) + ".gz", "wt", encoding="utf-8"))
        if gz
        else (lambda p: open(p, "w", encoding="utf-8"))
    )
    with op(folder / "corpus.jsonl") as f:
        f.write(json.dumps({"_id": 10, "title": "Cats", "text": "Cats purr."}) + "\n")
        f.write(json.dumps({"_id": "11", "title": "", "text": "Dogs bark."}) + "\n")
        f.write(json.dumps({"_id": "12", "title": "Birds", "text": "Birds sing."}) + "\n")
    with op(folder / "queries.jsonl") as f:
        for qid, t in ((1, "what purrs"), (2, "who barks"), (3, "unjudged")):
            f.write(json.dumps({"_id": qid, "text": t}) + "\n")
    with op(folder / "qrels" / "test.tsv") as f:
        f.write("query-id\tcorpus-id\tscore\n1\t10\t1\n2\t11\t1\n2\t12\t0\n")


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir(tmp_path, gz, ours):
    _write_beir(tmp_path / "beir", gz)
    queries, corpus, rel = load_beir(tmp_path / "beir", "test")
    assert corpus == {"10": "Cats Cats purr.", "11": "Dogs bark.", "12": "Birds Birds sing."}
    assert queries == {"1": "what purrs", "2": "who barks"}
    assert rel == {"1": {"10"}, "2": {"11"}}
    ev = InformationRetrievalEvaluator.from_beir(tmp_path / "beir", "test")
    assert ev.name == "beir-test" and 0 <= ev(ours)["beir-test_cosine_ndcg@10"] <= 1
    with pytest.raises(StedgeError, match="qrels"):
        load_beir(tmp_path / "beir", "dev")


# ------------------------------------------------------------------------ mse
def test_mse_matches_sentence_transformers(ours, st_model):
    teacher = st_model.encode(S2)
    ev = MSEEvaluator(S1, teacher, name="distill")
    res = ev(ours)
    assert ev.primary_metric == "distill_negative_mse"
    direct = float(((ours.encode(S1) - teacher) ** 2).mean() * 100)
    assert res["distill_mse"] == pytest.approx(direct, rel=1e-5) and res["distill_negative_mse"] == -res["distill_mse"]
    # sentence-transformers: teacher embeds S2, student embeds S1
    ref = st_eval("MSEEvaluator", S1, S2, teacher_model=st_model, name="distill")(st_model)
    assert res["distill_negative_mse"] == pytest.approx(ref["distill_negative_mse"], rel=1e-4)
    assert MSEEvaluator.from_teacher(S1, st_model)(ours)["negative_mse"] == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(StedgeError, match="do not fit"):
        MSEEvaluator(S1, teacher[:3])


# ------------------------------------------------------ binary classification
def test_binary_classification_matches_sentence_transformers(ours, st_model):
    fns = ["cosine", "dot", "euclidean", "manhattan"]
    ev = BinaryClassificationEvaluator(S1, S2, LABELS, name="para", similarity_fn_names=fns)
    res = ev(ours)
    assert ev.primary_metric == "para_cosine_ap"
    ref = st_eval("BinaryClassificationEvaluator", S1, S2, LABELS, name="para", similarity_fn_names=fns)(st_model)
    keys = [
        f"para_{fn}_{m}"
        for fn in fns
        for m in ("accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap")
    ]
    close(res, ref, keys, tol=1e-5)


def test_binary_threshold_search_hand_computed():
    from stedge.evaluation.binary_classification import average_precision, best_accuracy, best_f1

    scores = np.array([0.9, 0.8, 0.7, 0.2])
    labels = np.array([1, 0, 1, 0])
    acc, t = best_accuracy(scores, labels, True)
    assert acc == 0.75 and t == pytest.approx(0.85)  # first best cut: predict only 0.9 as positive
    f1, p, r, t = best_f1(scores, labels, True)
    assert f1 == pytest.approx(0.8) and (p, r) == (pytest.approx(2 / 3), 1.0) and t == pytest.approx(0.45)
    assert average_precision(labels, scores) == pytest.approx((1 + 2 / 3) / 2)


def _applied(scores, labels, t, high=True):
    """Accuracy and F1 of actually classifying with threshold t (similar = score >= t, or <= t for distances)."""
    pred = scores >= t if high else scores <= t
    tp = int((pred & (labels == 1)).sum())
    f1 = 2 * tp / (pred.sum() + (labels == 1).sum()) if tp else 0.0
    return float((pred == (labels == 1)).mean()), f1


def test_binary_thresholds_never_split_ties_and_may_call_nothing_similar():
    """The reported accuracy/F1 is what classifying with the reported threshold gives (a threshold cannot
    split equal scores), and predicting every pair dissimilar is one of the candidates."""
    from stedge.evaluation.binary_classification import best_accuracy, best_f1

    scores, labels = np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])
    acc, t = best_accuracy(scores, labels, True)
    assert acc == 0.75 and t == pytest.approx(0.7)  # splitting the 0.5 tie would claim 1.0
    scores, labels = np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1])
    acc, t = best_accuracy(scores, labels, True)
    assert acc == pytest.approx(2 / 3) and t > 0.9  # nothing similar beats every cut
    rng = np.random.default_rng(0)
    for high in (True, False):
        for _ in range(50):
            scores = rng.integers(0, 6, size=20).astype(np.float32) / 5  # many ties
            labels = rng.integers(0, 2, size=20)
            acc, t = best_accuracy(scores, labels, high)
            assert acc == pytest.approx(_applied(scores, labels, t, high)[0])
            f1, _, _, t = best_f1(scores, labels, high)
            assert f1 == pytest.approx(_applied(scores, labels, t, high)[1])


def test_binary_threshold_search_is_sentence_transformers_6_2_rule():
    """Same rule as sentence-transformers >= 6.2 (5.x and 6.0-6.1 split ties and skip the all-dissimilar cut)."""
    import sentence_transformers
    from packaging.version import Version

    from stedge.evaluation.binary_classification import best_accuracy, best_f1

    assert Version(sentence_transformers.__version__) >= Version("6.2"), "the main line tests against ST >= 6.2"
    ref = importlib.import_module(ST_EVAL).BinaryClassificationEvaluator
    rng = np.random.default_rng(1)
    for high in (True, False):
        for _ in range(100):
            scores = rng.integers(0, 8, size=15).astype(np.float32) / 7
            labels = rng.integers(0, 2, size=15)
            assert best_accuracy(scores, labels, high) == pytest.approx(
                ref.find_best_acc_and_threshold(scores, labels, high)
            )
            assert best_f1(scores, labels, high) == pytest.approx(ref.find_best_f1_and_threshold(scores, labels, high))


# ------------------------------------------------------------------ reranking
SAMPLES = [
    {"query": S1[i], "positive": [S2[i]], "negative": [S2[(i + 1) % 12], S2[(i + 5) % 12], S1[(i + 3) % 12]]}
    for i in range(8)
] + [
    {"query": S1[9], "positive": [S2[9], S1[10]], "negative": [S2[2]]},
    {"query": "no negatives", "positive": ["x"], "negative": []},
]


def test_reranking_bi_encoder_matches_sentence_transformers(ours, st_model):
    ev = RerankingEvaluator(SAMPLES, name="rr", at_k=3)
    assert len(ev.samples) == 9
    res = ev(ours)
    assert ev.primary_metric == "rr_ndcg@3"
    ref = st_eval("RerankingEvaluator", SAMPLES, name="rr", at_k=3)(st_model)
    close(res, ref, ["rr_map", "rr_mrr@3", "rr_ndcg@3"])


class ScoreByEmbedding:
    """A cross-encoder stand-in: predict(pairs) = cosine of the two texts' embeddings."""

    def __init__(self, enc):
        self.enc = enc
        self.batch_sizes = []

    def predict(self, pairs, batch_size=32):
        self.batch_sizes.append(batch_size)
        a = self.enc.encode([p[0] for p in pairs])
        b = self.enc.encode([p[1] for p in pairs])
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_reranking_cross_encoder_path(ours, tiny_cross_encoder):
    ev = RerankingEvaluator(SAMPLES, name="rr", at_k=3, batch_size=7)
    fake = ScoreByEmbedding(ours)
    close(ev(fake), ev(ours), ["rr_map", "rr_mrr@3", "rr_ndcg@3"])
    assert fake.batch_sizes == [7]
    from stedge.models import CrossEncoder

    ce = CrossEncoder(tiny_cross_encoder, device="cpu")
    res = ev(ce)
    # hand check on the cross-encoder's own scores
    mrr = []
    for s in ev.samples:
        docs = s["positive"] + s["negative"]
        sc = ce.predict([(s["query"], d) for d in docs])
        order = np.argsort(-sc, kind="stable")[:3]
        hits = [i for i, j in enumerate(order) if j < len(s["positive"])]
        mrr.append(1 / (hits[0] + 1) if hits else 0.0)
    assert res["rr_mrr@3"] == pytest.approx(np.mean(mrr))
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder

    ref_ce = STCrossEncoder(str(tiny_cross_encoder), device="cpu")
    close(ev(ref_ce), res, ["rr_map", "rr_mrr@3", "rr_ndcg@3"], tol=1e-5)


# ----------------------------------------------------------------- sequential
def test_sequential(ours, tmp_path):
    sts = EmbeddingSimilarityEvaluator(S1, S2, SCORES, name="sts")
    tri = TripletEvaluator(S1, S2, S2[1:] + S2[:1], name="tri")
    seq = SequentialEvaluator([sts, tri])
    res = seq(ours, output_path=str(tmp_path))
    assert seq.primary_metric == "tri_cosine_accuracy" and "sts_spearman_cosine" in res
    assert (tmp_path / sts.csv_file).exists() and (tmp_path / tri.csv_file).exists()
    mean = SequentialEvaluator([sts, tri], main_score_function=statistics.mean, name="all")
    res2 = mean(ours)
    assert mean.primary_metric == "all_sequential_score"
    assert res2["all_sequential_score"] == pytest.approx((res["sts_spearman_cosine"] + res["tri_cosine_accuracy"]) / 2)


# ----------------------------------------------------------------- real model
@pytest.mark.real
def test_real_stsb_test_spearman(minilm_path, shared_data):
    from stedge.models import SentenceEncoder

    ev = EmbeddingSimilarityEvaluator.from_file(shared_data / "stsb" / "test.tsv.gz", batch_size=64)
    assert ev.name == "stsb-test" and len(ev.scores) == 1379
    res = ev(SentenceEncoder(minilm_path, device="cpu"))
    assert res["stsb-test_spearman_cosine"] == pytest.approx(0.8203, abs=5e-4)


@pytest.mark.real
def test_real_scifact_subset_ndcg_matches_sentence_transformers(minilm_path, shared_data):
    """30 SciFact test queries against their relevant abstracts plus 170 others: our NDCG/MRR/MAP on
    sentence-transformers' own embeddings equal its InformationRetrievalEvaluator's to 1e-6."""
    from sentence_transformers import SentenceTransformer

    queries, corpus, rel = load_beir(shared_data / "ir" / "scifact", "test")
    assert (len(queries), len(corpus)) == (300, 5183)
    qids = sorted(queries)[:30]
    keep = sorted({d for q in qids for d in rel[q]})
    others = [d for d in corpus if d not in set(keep)][:170]
    sub_corpus = {d: corpus[d] for d in keep + others}
    sub_q = {q: queries[q] for q in qids}
    sub_rel = {q: rel[q] for q in qids}
    st = SentenceTransformer(str(minilm_path), device="cpu")
    emb = st.encode(list(sub_corpus.values()), batch_size=32, convert_to_tensor=True)
    from sentence_transformers.util import cos_sim

    ref_ev = st_eval(
        "InformationRetrievalEvaluator", sub_q, sub_corpus, sub_rel, name="sf", score_functions={"cosine": cos_sim}
    )
    ref = ref_ev.compute_all_metrics(st, corpus_embeddings=emb)["cosine"]
    ev = InformationRetrievalEvaluator(sub_q, sub_corpus, sub_rel, name="sf")
    res = ev.compute_metrics(st, corpus_embeddings=emb.numpy())
    for metric, by_k in ref.items():
        for k, v in by_k.items():
            assert res[f"cosine_{metric.replace('@k', f'@{k}')}"] == pytest.approx(float(v), abs=1e-6), (metric, k)
    assert 0.3 < res["cosine_ndcg@10"] <= 1.0
