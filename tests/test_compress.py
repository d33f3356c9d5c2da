"""Compression on tiny models: layer reduction, PCA, LoRA merge (distillation: test_compress_distill.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_tiny_bert
from typer.testing import CliRunner

from stedge.cli import app
from stedge.compress.layers import check_layers, find_layer_list, keep_layers, parse_layers, spread_layers
from stedge.compress.pca import add_pca, fit_pca, pre_normalize_embeddings
from stedge.errors import InvalidModelError, ModelNotFoundError, StedgeError
from stedge.models import Dense, Normalize, SentenceEncoder

WORDS = ["cats", "dogs", "cars", "rain", "music", "bread", "chess", "rivers", "trains", "stars"]
runner = CliRunner()


def write_sentences(path: Path, n: int = 60) -> Path:
    path.write_text(
        "\n".join(f"sentence {i} is about {WORDS[i % 10]} and {WORDS[(i * 3) % 10]}" for i in range(n)) + "\n"
    )
    return path


def write_sts(path: Path) -> Path:
    rows = ["sentence1\tsentence2\tscore"]
    for i in range(24):
        a, b = WORDS[i % 10], WORDS[(i * 7) % 10]
        rows.append(f"A story about {a}.\tA tale of {b} and {a}.\t{(i * 37) % 50 / 10}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress_data")
    bad = d / "bad.tsv"
    bad.write_text("id\tnumber\n1\t2\n3\t4\n")
    return {"sents": write_sentences(d / "sents.txt"), "sts": write_sts(d / "sts.tsv"), "bad": bad, "dir": d}


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


# ---------------------------------------------------------------- layer selection
def test_spread_layers_keeps_first_and_last():
    assert spread_layers(6, 3) == [0, 2, 5]
    assert spread_layers(12, 4) == [0, 4, 7, 11]
    assert spread_layers(6, 6) == list(range(6))
    assert spread_layers(6, 2) == [0, 5]
    with pytest.raises(StedgeError, match="more than the model's 6 layers"):
        spread_layers(6, 7)
    with pytest.raises(StedgeError, match="at least 1"):
        spread_layers(6, 0)


def test_check_layers_rejects_bad_indices():
    assert check_layers([4, 0, 2], 6) == [0, 2, 4]
    with pytest.raises(StedgeError, match="index 6 is out of range"):
        check_layers([0, 6], 6)
    with pytest.raises(StedgeError, match="index -1 is out of range"):
        check_layers([-1, 2], 6)
    with pytest.raises(StedgeError, match="index 2 is given twice"):
        check_layers([0, 2, 2], 6)
    with pytest.raises(StedgeError, match="comma-separated integers"):
        parse_layers("0,two")


def test_keep_layers_bert(tiny_model):
    enc = SentenceEncoder(tiny_model, device="cpu")
    model = enc.transformer.auto_model
    second = model.encoder.layer[1]
    assert keep_layers(model, [1]) == [1]
    assert len(model.encoder.layer) == 1 and model.encoder.layer[0] is second
    assert model.config.num_hidden_layers == 1
    out = enc.encode(["a test sentence"])  # still runs
    assert out.shape == (1, 32) and np.isfinite(out).all()


def test_keep_all_layers_is_identity(tiny_model):
    enc = SentenceEncoder(tiny_model, device="cpu")
    ref = enc.encode(["one sentence", "another one"])
    keep_layers(enc.transformer.auto_model, [0, 1])
    np.testing.assert_allclose(enc.encode(["one sentence", "another one"]), ref, atol=1e-6)


def test_keep_layers_other_layouts():
    from transformers import DistilBertConfig, DistilBertModel, T5Config, T5EncoderModel

    d = DistilBertModel(DistilBertConfig(vocab_size=100, dim=16, n_layers=3, n_heads=2, hidden_dim=32))
    assert find_layer_list(d)[0] == "transformer.layer"
    keep_layers(d, [0, 2])
    assert d.config.n_layers == 2 and len(d.transformer.layer) == 2
    d(input_ids=torch.tensor([[1, 2, 3]]))

    t = T5EncoderModel(T5Config(vocab_size=100, d_model=16, d_kv=8, d_ff=32, num_layers=4, num_heads=2))
    keep_layers(t, [0, 3])
    assert t.config.num_layers == 2 and len(t.encoder.block) == 2
    t(input_ids=torch.tensor([[1, 2, 3]]))


# ----------------------------------------------------------------------------- PCA
def test_fit_pca_matches_numpy_projection():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10)) @ rng.normal(size=(10, 10)) + 5.0
    comps, mean, ratio = fit_pca(x, 4)
    assert comps.shape == (4, 10) and ratio.shape == (4,) and np.all(np.diff(ratio) <= 1e-12)
    np.testing.assert_allclose(comps @ comps.T, np.eye(4), atol=1e-5)
    proj = (x - mean) @ comps.T
    np.testing.assert_allclose(proj.mean(0), 0, atol=1e-4)  # centred
    var = np.var(x - x.mean(0), axis=0).sum()
    assert abs(proj.var(0).sum() / var - ratio.sum()) < 1e-4


def test_pca_dense_centres_and_sits_before_normalize(tiny_model, files):
    enc = SentenceEncoder(tiny_model, device="cpu")
    texts = files["sents"].read_text().split("\n")[:40]
    emb = pre_normalize_embeddings(enc, texts)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)  # Normalize was skipped
    comps, mean, _ = fit_pca(emb, 8)
    reduced = add_pca(enc, comps, mean)
    kinds = [type(m) for m in reduced]
    assert kinds[-2:] == [Dense, Normalize]
    dense = reduced[len(reduced) - 2]
    assert isinstance(dense.activation, torch.nn.Identity)
    np.testing.assert_allclose(dense.linear.bias.detach().numpy(), -mean @ comps.T, atol=1e-5)
    got = reduced.encode(texts)
    want = (emb - mean) @ comps.T
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-4)
    unc = add_pca(enc, comps, None)
    assert unc[len(unc) - 2].linear.bias is None


def test_pca_cli_writes_model_report_and_lineage(tiny_model, files, tmp_path):
    out = tmp_path / "pca8"
    r = cli("pca", tiny_model, "--dim", 8, "--data", files["sents"], "--eval", files["sts"], "-o", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["before"]["dim"] == 32 and report["after"]["dim"] == 8
    assert report["before"]["layers"] == report["after"]["layers"] == 2
    assert report["after"]["parameters"] == report["before"]["parameters"] + 32 * 8 + 8
    assert isinstance(report["before"]["spearman"], float) and isinstance(report["after"]["spearman"], float)
    assert 0 < report["comparison"]["explained_variance"] <= 1
    assert json.loads((out / "compression_report.json").read_text()) == report
    steps = json.loads((out / "stedge_lineage.json").read_text())["steps"]
    assert steps[-1]["step"] == "pca" and steps[-1]["dim_out"] == 8 and steps[-1]["centred"] is True
    assert "pca" in (out / "README.md").read_text() and "dim_out=8" in (out / "README.md").read_text()
    # sentence-transformers loads it and agrees
    from sentence_transformers import SentenceTransformer

    texts = ["A story about cats.", "Trains and stars"]
    ours = SentenceEncoder(out, device="cpu").encode(texts)
    theirs = SentenceTransformer(str(out), device="cpu").encode(texts)
    assert ours.shape == (2, 8)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

    # uncentred: a Dense without bias; lineage chains onto the first PCA's steps
    out2 = tmp_path / "pca4u"
    r = cli("pca", out, "--dim", 4, "--data", files["sents"], "--uncentred", "-o", out2)
    assert r.exit_code == 0, r.output
    cfg = json.loads((out2 / "3_Dense" / "config.json").read_text())
    assert cfg["bias"] is False and cfg["activation_function"] == "torch.nn.modules.linear.Identity"
    steps = json.loads((out2 / "stedge_lineage.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["pca", "pca"] and steps[-1]["centred"] is False


@pytest.mark.parametrize("dim,match", [(33, "larger than the model's embedding width 32"), (0, "at least 1")])
def test_pca_bad_dim(tiny_model, files, tmp_path, dim, match):
    r = cli("pca", tiny_model, "--dim", dim, "--data", files["sents"], "-o", tmp_path / "x")
    assert isinstance(r.exception, StedgeError) and match in str(r.exception)
    assert not (tmp_path / "x").exists()


def test_pca_dim_more_than_sentences(tiny_model, tmp_path):
    few = write_sentences(tmp_path / "few.txt", n=5)
    r = cli("pca", tiny_model, "--dim", 8, "--data", few, "-o", tmp_path / "x")
    assert isinstance(r.exception, StedgeError) and "number of fit sentences (5)" in str(r.exception)


def test_pca_data_without_text_column(tiny_model, files, tmp_path):
    r = cli("pca", tiny_model, "--dim", 4, "--data", files["bad"], "-o", tmp_path / "x")
    assert isinstance(r.exception, StedgeError) and "no text column" in str(r.exception)


def test_existing_output_needs_overwrite(tiny_model, files, tmp_path):
    (tmp_path / "x").mkdir()
    r = cli("pca", tiny_model, "--dim", 4, "--data", files["sents"], "-o", tmp_path / "x")
    assert isinstance(r.exception, StedgeError) and "--overwrite" in str(r.exception)


# ------------------------------------------------------------------------- LoRA
def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter on the tiny model with random (non-zero) B weights, saved the way training saves it."""
    from peft import LoraConfig

    enc = SentenceEncoder(base, device="cpu")
    enc.add_adapter(LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    enc.save(out)
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    return make_adapter(tiny_model, tmp_path_factory.mktemp("lora") / "adapter")


def test_lora_merge_matches_unmerged(tiny_model, adapter, files, tmp_path):
    from stedge.models.adapters import load_unmerged, merge_adapter

    texts = ["A story about cats.", "Trains and stars at night", "x"]
    unmerged = load_unmerged(adapter).encode(texts)
    np.testing.assert_allclose(SentenceEncoder(adapter, device="cpu").encode(texts), unmerged, atol=1e-5)
    merged = merge_adapter(adapter)
    emb = merged.encode(texts)
    base = SentenceEncoder(tiny_model, device="cpu").encode(texts)
    cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    assert cos(emb, unmerged).min() >= 0.9999
    assert cos(emb, base).min() < 0.999  # the adapter really changes the model
    assert not any("lora" in n for n, _ in merged.named_parameters())

    out = tmp_path / "merged"
    r = cli("lora", "merge", adapter, "-o", out, "--eval", files["sts"], "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["comparison"]["merged_vs_unmerged_min_cosine"] >= 0.9999
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert not (out / "adapter_config.json").exists()
    saved = SentenceEncoder(out, device="cpu")
    np.testing.assert_allclose(saved.encode(texts), emb, atol=1e-5)
    steps = json.loads((out / "stedge_lineage.json").read_text())["steps"]
    assert steps[-1]["step"] == "lora merge" and steps[-1]["rank"] == 8


def test_lora_base_not_found(adapter, tmp_path, tiny_model):
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    r = cli("lora", "merge", moved, "-o", tmp_path / "out")
    assert isinstance(r.exception, ModelNotFoundError)
    assert "cannot be found" in str(r.exception) and "--base" in str(r.exception)
    # --base rescues it
    r = cli("lora", "merge", moved, "--base", tiny_model, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output


def test_lora_not_an_adapter(tiny_model, tmp_path):
    r = cli("lora", "merge", tiny_model, "-o", tmp_path / "out")
    assert isinstance(r.exception, InvalidModelError) and "adapter_config.json is missing" in str(r.exception)


def test_lora_wrong_base(adapter, tmp_path):
    other = make_tiny_bert(tmp_path / "wide", hidden=48)
    r = cli("lora", "merge", adapter, "--base", other, "-o", tmp_path / "out")
    assert isinstance(r.exception, InvalidModelError) and "could not attach the adapter" in str(r.exception)
