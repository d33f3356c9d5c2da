"""Export verification through stedge_runtime: precision tiers, batch invariance, a tokenizer.json that
disagrees with the torch tokenizer, the bf16 variant's engine hint, the plan."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tiny import make_tiny_bert


# ------------------------------------------------------------------ tiers (pure)
@pytest.mark.parametrize(
    "min_cos, drop, unit, invariance, expected",
    [
        (0.99995, 0.01, "spearman_points", 0.999995, "exact"),
        (0.99995, 0.01, "spearman_points", 0.99995, "near"),  # exact needs 0.99999 batch invariance
        (0.995, 0.1, "spearman_points", 0.9999, "near"),
        (0.995, 0.3, "spearman_points", 0.9999, "compressed"),  # near allows 0.2 Spearman points
        (0.95, 0.9, "spearman_points", 0.9999, "compressed"),
        (0.95, 1.1, "spearman_points", 0.9999, None),  # over max_drop 1.0
        (0.99995, 0.0, "spearman_points", 0.984, None),  # not batch-invariant: no tier at all
        (0.995, 0.004, "cosine", 0.9999, "near"),  # no eval set: near is min cos only
        (0.98, 0.01, "cosine", 0.9999, "compressed"),
    ],
)
def test_tiers(min_cos, drop, unit, invariance, expected):
    from stedge.export.verify import tier_of

    limit = 1.0 if unit == "spearman_points" else 0.05
    assert tier_of(min_cos, drop, unit, limit, invariance, True) == expected
    assert tier_of(min_cos, drop, unit, limit, invariance, False) is None


def test_a_variant_passes_when_it_reaches_its_precisions_tier():
    from stedge.export.verify import meets

    assert meets("exact", "fp32") and not meets("near", "fp32") and not meets("compressed", "fp32")
    assert meets("near", "bf16") and meets("exact", "fp16") and not meets("compressed", "bf16")
    assert meets("compressed", "int8") and meets("near", "int4") and not meets(None, "int8")


class _FakeEncoder:
    """An encoder whose vectors depend on the longest text of the batch (what dynamic int8 scales do)."""

    def __init__(self, leak: float) -> None:
        self.leak = leak

    def encode(self, texts, batch_size=32):
        out = []
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            width = max(len(t) for t in batch)
            for t in batch:
                v = np.array([len(t), t.count(" ") + 1, 1.0, sum(map(ord, t)) % 7], dtype=np.float32)
                out.append(v + self.leak * width)
        return np.stack(out)


def test_batch_invariance_measure():
    from stedge.export.verify import batch_invariance, default_texts

    texts = default_texts()
    assert batch_invariance(_FakeEncoder(0.0), "embedding", texts) == pytest.approx(1.0)
    assert batch_invariance(_FakeEncoder(0.5), "embedding", texts) < 0.99


class _OffOn(_FakeEncoder):
    """_FakeEncoder (no leak) whose vector of one text points elsewhere."""

    def __init__(self, text: str) -> None:
        super().__init__(0.0)
        self.text = text

    def encode(self, texts, batch_size=32):
        out = super().encode(texts, batch_size)
        out[[i for i, t in enumerate(texts) if t == self.text]] *= np.array([1, -1, 1, 1], dtype=np.float32)
        return out


def test_min_cosine_covers_the_eval_set_texts():
    """With an eval set, a variant's cosine check covers every eval text (both sides of each pair), not only
    the verification texts: a variant off on one eval text alone leaves the exact tier."""
    from stedge.data import PairScores
    from stedge.export.verify import Reference, default_texts

    texts = default_texts()[:16]
    ev = PairScores(["a cat sits", "two dogs run far", "rain again"], ["a cat sat", "dogs ran", "sun today"], [4, 3, 0])
    ref = Reference(_FakeEncoder(0.0), "embedding", texts, ev)
    same = ref.verify(_FakeEncoder(0.0), "cpu", None, "fp32")
    assert same.tier == "exact" and same.num_texts == 16 + 6 and same.min_cosine == pytest.approx(1.0)
    off = ref.verify(_OffOn("dogs ran"), "cpu", None, "fp32")
    assert off.min_cosine < 0.99 and off.tier != "exact" and not off.passed
    no_eval = Reference(_FakeEncoder(0.0), "embedding", texts, None)
    assert no_eval.verify(_OffOn("dogs ran"), "cpu", None).tier == "exact"  # the text is not checked without it


class _FakeReranker:
    """Sigmoid-like scores in 0.1-0.9 from each pair's text; ``off`` is added to the score of every pair whose
    first text has an odd length, ``leak`` times the batch's longest pair to every score (a batch-dependent run)."""

    def __init__(self, off: float = 0.0, leak: float = 0.0) -> None:
        self.off, self.leak = off, leak

    def predict(self, pairs, batch_size=32):
        out = []
        for i in range(0, len(pairs), batch_size):
            batch = pairs[i : i + batch_size]
            width = max(len(a) + len(b) for a, b in batch)
            for a, b in batch:
                s = 0.1 + 0.8 * ((sum(map(ord, a + b)) % 97) / 96)
                out.append(s + self.off * (len(a) % 2) + self.leak * width)
        return np.asarray(out, dtype=np.float32)


def test_reranker_scores_are_judged_by_score_agreement():
    """A reranker variant whose scores are off by 0.01 on a 0.1-0.9 scale: the raw cosine of the score vectors
    (what verification used) stays above the exact tier's 0.9999 bar, the score agreement does not, and the tier
    is near. Its batch invariance is measured the same way, and an eval set's pairs are checked too."""
    from stedge_runtime.similarity import agreement, score_agreement

    from stedge.data import PairScores
    from stedge.export.verify import Reference, batch_invariance, default_texts, reranker_pairs

    texts = default_texts()
    ref = Reference(_FakeReranker(), "reranking", texts, None)
    same = ref.verify(_FakeReranker(), "cpu", None, "fp32")
    assert same.tier == "exact" and same.passed and same.agreement == "score" and same.min_cosine == 1.0
    off = ref.verify(_FakeReranker(off=0.01), "cpu", None, "int8")
    a, b = _FakeReranker(off=0.01).predict(ref.items), ref.outputs
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.9999  # the old measure called it exact
    assert off.min_cosine == pytest.approx(float(score_agreement(a, b).min())) and off.min_cosine < 0.9999
    assert off.tier == "near" and off.passed
    assert ref.verify(_FakeReranker(off=0.1), "cpu", None, "int8").tier == "compressed"
    pairs = reranker_pairs(texts)
    assert batch_invariance(_FakeReranker(), "reranking", pairs) == 1.0
    assert batch_invariance(_FakeReranker(leak=1e-4), "reranking", pairs) < 0.999  # no tier takes it
    assert list(agreement("reranking", ref.outputs, ref.outputs)) == [1.0] * len(pairs)
    ev = PairScores(["a cat sits.", "two dogs run far", "rain"], ["a cat sat", "dogs ran", "sun today"], [4, 3, 0])
    even = [t for t in texts if len(t) % 2 == 0][:2]
    with_eval = Reference(_FakeReranker(), "reranking", even, ev)  # first texts of odd length: only in the eval set
    assert not any(len(a) % 2 for a, _ in with_eval.items)
    assert with_eval.verify(_FakeReranker(off=0.1), "cpu", None, "int8").tier != "exact"
    no_eval = Reference(_FakeReranker(), "reranking", even, None)
    assert no_eval.verify(_FakeReranker(off=0.1), "cpu", None).tier == "exact"  # those pairs are not checked


def test_score_agreement_scale():
    """score_agreement: 1 for equal scores, the cosine-like scale (1 - (d/spread)^2/2) otherwise, whatever the
    scores' offset; constant columns agree only when equal; agreement() keeps cosine for embeddings."""
    from stedge_runtime.similarity import agreement, score_agreement

    r = np.linspace(0.0, 1.0, 101)
    assert score_agreement(r, r).tolist() == [1.0] * 101
    spread = r.std()
    bumped = r.copy()
    bumped[7] += 0.1 * spread  # one pair off by a tenth of the spread
    got = score_agreement(r, bumped)
    assert got[7] == pytest.approx(1 - 0.1**2 / 2, abs=2e-4) and (np.delete(got, 7) == 1.0).all()
    assert score_agreement(r + 100, bumped + 100)[7] == pytest.approx(got[7])  # an offset changes nothing
    assert score_agreement(np.ones(4), np.ones(4)).tolist() == [1.0] * 4
    assert score_agreement(np.ones(3), np.array([1.0, 1.0, 2.0])).tolist() == [1.0, 1.0, -1.0]
    two = np.stack([r, r[::-1]], 1)  # two label columns: the worst per pair
    off = two.copy()
    off[3, 1] += 0.5
    assert score_agreement(two, off)[3] < 0 and score_agreement(two, off)[4] == 1.0
    e = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert agreement("embedding", e, e * 3).tolist() == [1.0, 1.0]
    with pytest.raises(Exception, match="equally shaped"):
        score_agreement(r, r[:5])


# ------------------------------------------------------------------ through the runtime
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("verify") / "model")


@pytest.fixture(scope="module")
def artifact(model_dir, tmp_path_factory):
    from stedge.export import export_model

    return export_model(str(model_dir), tmp_path_factory.mktemp("verify_art") / "a", backend="all", quantize="bf16")


def _edit_tokenizer(folder, edit) -> None:
    f = folder / "tokenizer.json"
    tok = json.loads(f.read_text())
    edit(tok)
    f.write_text(json.dumps(tok))


def _no_lowercase(tok: dict) -> None:
    tok["normalizer"]["lowercase"] = False


def _other_pad(tok: dict) -> None:
    tok["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 100,
        "pad_type_id": 0,
        "pad_token": "[UNK]",
    }


def _unverified_here(name: str, v: dict) -> bool:
    """openvino-bf16 on a CPU without avx512_bf16/AMX: written, not verified (OpenVINO would run fp32)."""
    from stedge_runtime import machine

    if v["verification"] is not None:
        return False
    assert name == "openvino-bf16" and not machine.has_bf16() and "not verified" in v["note"], (name, v)
    return True


def test_records_tier_and_batch_invariance(artifact):
    for name, v in artifact.manifest["variants"].items():
        if _unverified_here(name, v):
            continue
        ver = v["verification"]
        assert ver["tier"] == "exact" and ver["passed"], (name, ver)
        assert ver["batch_invariance_min_cos"] >= 0.99999, (name, ver)
        assert ver["runtime"] in ("stedge_runtime/Encoder",), name
    row = next(r for r in artifact.rows if r["variant"] == "onnx-fp32")
    assert row["tier"] == "exact" and row["batch_invariance_min_cos"] >= 0.99999


def test_tokenizer_that_disagrees_with_torch_fails(artifact, model_dir, tmp_path):
    """Verification reads the artifact's tokenizer.json: one that tokenizes differently (no lower-casing) makes the
    fp32 variants miss the exact tier and fail; another pad token / pad id alone cannot change any output (the
    attention mask hides padding) and still passes."""
    from stedge.export.verify import Reference, default_texts
    from stedge.models import SentenceEncoder

    ref = Reference(SentenceEncoder(model_dir, device="cpu"), "embedding", default_texts(), None)
    for edit, passes in ((_no_lowercase, False), (_other_pad, True)):
        copy = tmp_path / edit.__name__
        shutil.copytree(artifact.path, copy)
        _edit_tokenizer(copy, edit)
        for variant in ("onnx-fp32", "openvino-fp32"):
            v = ref.compare(copy, variant)
            assert v.passed is passes and (v.tier == "exact") is passes, (edit.__name__, variant, v)


def test_export_with_a_disagreeing_tokenizer_fails(model_dir, tmp_path, monkeypatch):
    from stedge.errors import CheckFailedError
    from stedge.export import export_model
    from stedge.models import SentenceEncoder

    save = SentenceEncoder.save

    def save_with_other_tokenizer(self, path, *a, **kw):
        save(self, path, *a, **kw)
        _edit_tokenizer(path, _no_lowercase)

    monkeypatch.setattr(SentenceEncoder, "save", save_with_other_tokenizer)
    res = export_model(str(model_dir), tmp_path / "bad")
    entry = res.manifest["variants"]["onnx-fp32"]
    ver = entry["verification"]
    assert not ver["passed"] and ver["tier"] != "exact" and ver["min_cosine"] < 0.99
    assert "tokenizer.json" in entry["note"] and not next(r for r in res.rows if r["variant"] == "onnx-fp32")["passed"]
    with pytest.raises(CheckFailedError, match="exceeds --max-drop"):
        export_model(str(model_dir), tmp_path / "bad2", max_drop=0.01)
    assert not (tmp_path / "bad2").exists()


def test_bf16_variant_carries_its_engine_hint(artifact):
    from stedge_runtime import Encoder

    from stedge.export.plan import BF16_FLAGS
    from stedge.export.quantize import cpu_flags

    v = artifact.manifest["variants"]["openvino-bf16"]
    assert v["precision"] == "bf16" and v["file"] == artifact.manifest["variants"]["openvino-fp32"]["file"]
    assert v["engine_options"] == {"inference_precision": "bf16"} and v["cpu_flags_any"] == list(BF16_FLAGS)
    enc = Encoder.load(artifact.path, variant="openvino-bf16")
    hint = str(enc._engine.compiled.get_property("INFERENCE_PRECISION_HINT"))
    if set(BF16_FLAGS) & cpu_flags():
        assert "bfloat16" in hint and v["verification"] is not None
    else:
        assert v["verification"] is None and "no avx512_bf16" in v["note"]
    fp32 = Encoder.load(artifact.path, variant="openvino-fp32")
    assert "float32" in str(fp32._engine.compiled.get_property("INFERENCE_PRECISION_HINT"))


# ------------------------------------------------------------------ the plan
def test_plan_is_immutable_and_interprets_quantize_once():
    from dataclasses import FrozenInstanceError, replace

    from stedge.errors import StedgeError
    from stedge.export.plan import ExportOptions, check_options, make_plan

    o = check_options(ExportOptions(backend="all", quantize="int8-static", calibration="x.txt", optimize="o2"))
    assert o.optimize == "O2"
    plain = make_plan(o, set())
    names = [v.name for v in plain.variants]
    assert names == ["onnx-fp32", "onnx-fp32-O2", "onnx-int8-static-O2", "openvino-fp32", "openvino-int8-static"]
    assert plain.default == "onnx-int8-static-O2"
    bf16 = make_plan(replace(o, quantize="bf16"), {"avx512_bf16"})
    assert [v.name for v in bf16.variants] == ["onnx-fp32", "onnx-fp32-O2", "openvino-fp32", "openvino-bf16"]
    assert bf16.bf16_here and not make_plan(o, {"avx2"}).bf16_here and "openvino-bf16" not in plain.names
    with pytest.raises(FrozenInstanceError):
        plain.variants[0].name = "x"  # type: ignore[misc]
    for bad, match in (
        ({"quantize": "int4-weights"}, "OpenVINO"),
        ({"quantize": "int8-static"}, "--calibration"),
        ({"backend": "openvino", "optimize": "O2"}, "onnxruntime levels"),
        ({"quantize": "x"}, "--quantize"),
    ):
        with pytest.raises(StedgeError, match=match):
            check_options(ExportOptions(**bad))


def test_quantize_auto_plans_what_may_win_on_this_cpu(monkeypatch):
    """--quantize auto: int8 static and per-row on every backend built, openvino-bf16 only where the CPU runs bf16
    (and verification runs on it); an unset --backend takes OpenVINO too where it is installed."""
    import importlib.util

    from stedge.export import plan as p

    def names(backend: str, flags: set[str], device: str = "cpu") -> list[str]:
        o = p.check_options(p.ExportOptions(backend=backend, quantize="auto", device=device))
        return [v.name for v in p.make_plan(o, flags).variants]

    onnx = ["onnx-fp32", "onnx-int8-static", "onnx-int8-rows"]
    assert names("all", {"amx_bf16", "avx512_vnni"}) == [
        *onnx,
        "openvino-fp32",
        "openvino-int8-static",
        "openvino-bf16",
    ]
    assert names("all", {"avx512_bf16"})[-1] == "openvino-bf16"
    assert names("all", {"avx2"}) == [*onnx, "openvino-fp32", "openvino-int8-static"]
    assert names("all", {"amx_bf16"}, device="cuda") == [*onnx, "openvino-fp32", "openvino-int8-static"]
    assert names("onnx", {"amx_bf16"}) == onnx
    assert p.QUANTIZE["auto"].calibrated
    installed = importlib.util.find_spec("openvino") is not None
    assert p.resolve_backend(None, "auto") == ("all" if installed else "onnx")
    assert p.resolve_backend(None, "auto", "cuda") == "onnx"
    assert p.resolve_backend(None, "int8") == "onnx" and p.resolve_backend("openvino", "auto") == "openvino"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert p.resolve_backend(None, "auto") == "onnx"


def test_export_notes_a_missing_bf16_variant_on_a_bf16_cpu(monkeypatch, tmp_path):
    """`stedge export` (and `stedge tune`) name the command that adds openvino-bf16 when this CPU runs bf16 and the
    artifact lacks it."""
    import stedge_runtime.machine as machine

    from stedge.export.plan import bf16_hint

    path, variants = tmp_path / "a", ["onnx-fp32", "onnx-int8-rows"]
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16", "avx2"})
    hint = bf16_hint(path, variants, "all-MiniLM-L6-v2")
    assert "amx_bf16, avx512_bf16" in hint and "--quantize auto" in hint
    assert f"stedge export all-MiniLM-L6-v2 -o {path} --add --backend openvino --quantize bf16" in hint
    assert bf16_hint(path, variants, "m", device="cuda") is None
    assert bf16_hint(path, [*variants, "openvino-bf16"], "m") is None
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    assert bf16_hint(path, variants, "m") is None


def test_add_to_an_artifact_written_before_tiers(artifact, model_dir, tmp_path):
    """A round-1 manifest (no tier, batch invariance or runtime in its verifications) still loads, and
    --add keeps its records as they are while the new variant gets the new fields."""
    from stedge_runtime import Encoder

    from stedge.export import export_model

    old = tmp_path / "old"
    shutil.copytree(artifact.path, old)
    m = json.loads((old / "stedge.json").read_text())
    for name, v in m["variants"].items():
        for key in ("tier", "batch_invariance_min_cos", "runtime"):
            if not _unverified_here(name, v):
                v["verification"].pop(key, None)
    (old / "stedge.json").write_text(json.dumps(m))
    assert Encoder.load(old, variant="openvino-fp32").encode("hi").shape == (32,)
    res = export_model(str(model_dir), old, optimize="O1", add=True)
    variants = res.manifest["variants"]
    assert "tier" not in variants["openvino-fp32"]["verification"]
    assert variants["onnx-fp32-O1"]["verification"]["tier"] == "exact"
    assert Encoder.load(old).variant in variants
