"""`stedge distill` on tiny models: layer reduction, --student with a projection, teacher cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_compress import write_sentences, write_sts
from tiny import make_tiny_bert
from typer.testing import CliRunner

from stedge.cli import app
from stedge.compress.distill import make_student, teacher_embeddings
from stedge.errors import StedgeError
from stedge.models import Dense, Normalize, SentenceEncoder

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill_data")
    return {"sents": write_sentences(d / "sents.txt", n=80), "sts": write_sts(d / "sts.tsv"), "cache": d / "cache"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher") / "model", layers=4)


def test_teacher_embeddings_are_cached(teacher, tmp_path, monkeypatch):
    enc = SentenceEncoder(teacher, device="cpu")
    texts = ["one sentence", "two sentences", "three"]
    emb, path, hit = teacher_embeddings(enc, texts, tmp_path)
    assert not hit and path.is_file() and emb.shape == (3, 32)
    np.testing.assert_allclose(emb, enc.encode(texts), atol=1e-6)
    calls = []
    monkeypatch.setattr(SentenceEncoder, "encode", lambda *a, **k: calls.append(1))
    emb2, path2, hit2 = teacher_embeddings(enc, texts, tmp_path)
    assert hit2 and path2 == path and not calls
    np.testing.assert_array_equal(emb, emb2)
    # other sentences or other weights -> another cache entry
    monkeypatch.undo()
    _, path3, hit3 = teacher_embeddings(enc, texts[:2], tmp_path)
    assert not hit3 and path3 != path
    other = SentenceEncoder(make_tiny_bert(tmp_path / "other", layers=4, seed=5), device="cpu")
    _, path4, hit4 = teacher_embeddings(other, texts, tmp_path)
    assert not hit4 and path4 != path


def test_make_student_layers_and_projection(teacher, tmp_path):
    s, info = make_student(str(teacher), 32, num_layers=2, device="cpu")
    assert info["layers_kept"] == [0, 3] and s.transformer.auto_model.config.num_hidden_layers == 2
    assert info["projection"] is None
    narrow = make_tiny_bert(tmp_path / "narrow", hidden=16, layers=1)
    s, info = make_student(str(teacher), 32, student=str(narrow), device="cpu")
    assert info["projection"] == [16, 32]
    kinds = [type(m) for m in s]
    assert kinds[-2:] == [Dense, Normalize] and s.get_sentence_embedding_dimension() == 32
    assert isinstance(s[len(s) - 2].activation, __import__("torch").nn.Identity)


def test_distill_layer_reduction_cli(teacher, files, tmp_path):
    out = tmp_path / "student"
    r = cli(
        "distill",
        teacher,
        "--num-layers",
        2,
        "--data",
        files["sents"],
        "--eval",
        files["sts"],
        "--epochs",
        2,
        "--batch-size",
        16,
        "--lr",
        1e-4,
        "--cache-dir",
        files["cache"],
        "-o",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["before"]["layers"] == 4 and report["after"]["layers"] == 2
    assert report["settings"]["layers_kept"] == [0, 3]
    assert report["after"]["parameters"] < report["before"]["parameters"]
    cmp = report["comparison"]
    assert cmp["student_teacher_mse"] < cmp["student_teacher_mse_before_training"]  # training helped
    assert isinstance(report["after"]["spearman"], float) and isinstance(report["before"]["spearman"], float)
    assert any(k.endswith("mse") or "mse" in k for k in report["evaluator"])
    saved = SentenceEncoder(out, device="cpu")
    assert saved.transformer.auto_model.config.num_hidden_layers == 2
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    step = json.loads((out / "stedge_lineage.json").read_text())["steps"][-1]
    assert step["step"] == "distill" and step["layers_kept"] == [0, 3]
    assert "layers_kept=[0, 3]" in (out / "README.md").read_text()
    assert json.loads((out / "compression_report.json").read_text())["comparison"] == cmp
    # the second run reuses the cached teacher embeddings
    r = cli(
        "distill",
        teacher,
        "--layers",
        "1,2",
        "--data",
        files["sents"],
        "--epochs",
        1,
        "--batch-size",
        16,
        "--cache-dir",
        files["cache"],
        "-o",
        tmp_path / "student2",
    )
    assert r.exit_code == 0, r.output
    # progress on stedge's rich bar, as `stedge train`: not transformers' tqdm bar, whose carriage-return updates
    # filled logs when stderr was not a terminal
    assert "it/s]" not in r.output and "\r" not in r.output
    report2 = json.loads((tmp_path / "student2" / "compression_report.json").read_text())
    assert report2["timing"]["teacher_embeddings_cached"] is True
    assert report2["settings"]["layers_kept"] == [1, 2]


def test_distill_into_other_student(teacher, files, tmp_path):
    narrow = make_tiny_bert(tmp_path / "narrow", hidden=16, layers=1)
    out = tmp_path / "s"
    r = cli(
        "distill",
        teacher,
        "--student",
        narrow,
        "--data",
        files["sents"],
        "--epochs",
        1,
        "--batch-size",
        16,
        "--cache-dir",
        files["cache"],
        "-o",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["settings"]["projection"] == [16, 32] and report["after"]["dim"] == 32
    assert SentenceEncoder(out, device="cpu").encode(["hello"]).shape == (1, 32)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--layers", "0,4"], "index 4 is out of range"),
        (["--layers", "1,1"], "index 1 is given twice"),
        (["--num-layers", "5"], "more than the model's 4 layers"),
        (["--layers", "0,1", "--num-layers", "2"], "not both"),
        ([], "--layers 0,2,5 or --num-layers N"),
    ],
)
def test_distill_bad_layers(teacher, files, tmp_path, args, match):
    r = cli("distill", teacher, *args, "--data", files["sents"], "--cache-dir", files["cache"], "-o", tmp_path / "x")
    assert isinstance(r.exception, StedgeError), r.output
    assert match in str(r.exception)
    assert not (tmp_path / "x").exists()


def test_distill_data_without_text_column(teacher, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tnumber\n1\t2\n")
    r = cli("distill", teacher, "--num-layers", 2, "--data", bad, "-o", tmp_path / "x")
    assert isinstance(r.exception, StedgeError) and "no text column" in str(r.exception)
