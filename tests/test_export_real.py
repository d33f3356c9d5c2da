"""Export stage on the bundled all-MiniLM-L6-v2 with STS-B: accuracy of every precision, the
artifact in sentence-transformers, the manifest schema. One export per session, reused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.real


@pytest.fixture(scope="session")
def minilm_artifact(minilm_path, shared_data, tmp_path_factory):
    """fp32 + static int8 for ONNX and OpenVINO, verified with Spearman on the STS-B test set."""
    from stedge.export import export_model

    out = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2-stedge"
    return export_model(
        str(minilm_path),
        out,
        backend="all",
        quantize="int8-static",
        calibration=str(shared_data / "stsb" / "train.tsv.gz"),
        eval_data=str(shared_data / "stsb" / "test.tsv.gz"),
    )


@pytest.fixture(scope="session")
def minilm_artifact_unscored(minilm_path, shared_data, tmp_path_factory):
    """The same variants without the STS-B Spearman pass: what the compat job needs, in less time."""
    from stedge.export import export_model

    out = tmp_path_factory.mktemp("minilm_unscored") / "all-MiniLM-L6-v2-stedge"
    return export_model(
        str(minilm_path),
        out,
        backend="all",
        quantize="int8-static",
        calibration=str(shared_data / "stsb" / "train.tsv.gz"),
    )


@pytest.fixture(scope="session")
def minilm(minilm_path):
    from stedge.models import SentenceEncoder

    return SentenceEncoder(minilm_path, device="cpu")


def test_fp32_onnx_and_openvino_match_torch(minilm_artifact):
    v = minilm_artifact.manifest["variants"]
    for name in ("onnx-fp32", "openvino-fp32"):
        ver = v[name]["verification"]
        assert ver["min_cosine"] >= 0.99999, (name, ver)
        assert abs(ver["spearman"] - ver["reference_spearman"]) < 1e-4, (name, ver)
    assert 0.80 < v["onnx-fp32"]["verification"]["reference_spearman"] < 0.86  # MiniLM on STS-B test


def test_static_int8_spearman_drop(minilm_artifact):
    v = minilm_artifact.manifest["variants"]
    for name in ("onnx-int8-static", "openvino-int8-static"):
        ver = v[name]["verification"]
        drop = (ver["reference_spearman"] - ver["spearman"]) * 100
        assert drop <= 1.5, (name, drop)
        assert ver["passed"] and v[name]["size_bytes"] < v["onnx-fp32"]["size_bytes"]


def test_manifest_validates_against_the_contract(minilm_artifact, tmp_path):
    from stedge_runtime.artifact import Manifest, write_manifest
    from stedge_runtime.errors import ArtifactError

    m = Manifest.read(minilm_artifact.path).to_dict()
    assert m["dimension"] == 384 and m["normalize"] and m["pooling"]["mode"] == "mean" and m["max_seq_length"] == 256
    assert m["variants"]["onnx-fp32"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    broken = json.loads(json.dumps(m))
    del broken["variants"]["onnx-fp32"]["sha256"]
    with pytest.raises(ArtifactError, match="onnx-fp32"):
        write_manifest(tmp_path, broken)


@pytest.mark.compat
def test_sentence_transformers_loads_and_agrees(minilm_artifact_unscored, minilm_path):
    """The compatibility line's sentence-transformers 5 runs every graph kind through its ONNX / OpenVINO backends."""
    from sentence_transformers import SentenceTransformer

    texts = ["A man is playing a guitar.", "Stocks fell sharply after the rate hike.", "ok"]
    ref = SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    for backend, file, floor in [
        ("onnx", "onnx/model.onnx", 0.99999),
        ("openvino", "openvino/openvino_model.xml", 0.99999),
        ("onnx", "onnx/model_qint8_static.onnx", 0.95),
    ]:
        kwargs = {"file_name": file}
        if backend == "openvino":  # OpenVINO would pick bf16 on CPUs that have it: compare at fp32
            kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": "f32"}
        st = SentenceTransformer(str(minilm_artifact_unscored.path), backend=backend, model_kwargs=kwargs, device="cpu")
        got = st.encode(texts)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= floor, (file, cos)


def test_dynamic_int8_spearman_drop(minilm_artifact, minilm, stsb_test, tmp_path):
    from stedge.data import pairwise_cosine, spearman
    from stedge.export.quantize import detect_isa, quantize_dynamic_int8
    from stedge.export.verify import Runner, graph_embed

    ref_sp = minilm_artifact.manifest["variants"]["onnx-fp32"]["verification"]["reference_spearman"]
    dst = tmp_path / "model_qint8.onnx"
    quantize_dynamic_int8(minilm_artifact.path / "onnx" / "model.onnx", dst, detect_isa())
    run = Runner("onnx", dst)
    a = graph_embed(minilm, run, stsb_test.sentences1, 64)
    b = graph_embed(minilm, run, stsb_test.sentences2, 64)
    drop = (ref_sp - spearman(pairwise_cosine(a, b), stsb_test.scores)) * 100
    assert drop <= 1.0, drop


def test_rows_int8_reaches_near_and_the_rule_picks_it(minilm_path, shared_data, tmp_path):
    """Per-row int8 on the real model: near tier (min cos >= 0.99, Spearman within 0.2), exactly
    batch-invariant, a quarter of the fp32 size, and what Encoder.load(tier="near") takes without a profile."""
    from stedge_runtime import Encoder

    from stedge.export import export_model

    res = export_model(
        str(minilm_path),
        tmp_path / "rows",
        quantize="int8-rows",
        calibration=str(shared_data / "stsb" / "train.tsv.gz"),
        eval_data=str(shared_data / "stsb" / "test.tsv.gz"),
    )
    v = res.manifest["variants"]
    ver = v["onnx-int8-rows"]["verification"]
    assert ver["tier"] == "near" and ver["passed"], ver
    assert ver["min_cosine"] >= 0.99 and ver["drop"] <= 0.2 and ver["batch_invariance_min_cos"] >= 0.99999, ver
    assert v["onnx-int8-rows"]["size_bytes"] < 0.3 * v["onnx-fp32"]["size_bytes"]
    assert v["onnx-int8-rows"]["quantization"]["float_outlier_channels"]["channels"] > 0
    enc = Encoder.load(res.path, tier="near")
    assert enc.variant == "onnx-int8-rows" and enc.selection.source == "rule"


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_optimization_levels_match_torch(level, minilm_artifact, minilm, tmp_path):
    from stedge.data import pairwise_cosine
    from stedge.export.optimize import optimize
    from stedge.export.verify import Runner, default_texts, graph_embed

    dst = tmp_path / f"model_{level}.onnx"
    info = optimize(minilm_artifact.path / "onnx" / "model.onnx", dst, level, minilm.transformer.config)
    if level != "O1":
        assert info["fused_operators"].get("Attention") == 6
    texts = default_texts()
    cos = pairwise_cosine(graph_embed(minilm, Runner("onnx", dst), texts), minilm.encode(texts))
    assert cos.min() >= 0.9999, cos.min()
