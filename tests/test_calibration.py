"""Calibration texts: drawn across a file (not its first rows), named in stedge.json, and an artifact calibrated
on other texts rebuilt by the harness."""

from __future__ import annotations

import gzip
import json

from stedge.export.calibration import (
    calibrated_on,
    calibration_label,
    calibration_texts,
    embedding_texts,
    spread,
)


def _sorted_by_genre(path, per_genre: int = 600):
    """A file sorted by genre, as STS-B train is (captions first, then news, then forums)."""
    rows = [f"caption {i}" for i in range(per_genre)] + [f"news {i}" for i in range(per_genre)]
    rows += [f"forum {i}" for i in range(per_genre)]
    path.write_text("\n".join(rows) + "\n")
    return rows


def test_calibration_texts_are_spread_over_a_sorted_file(tmp_path):
    rows = _sorted_by_genre(tmp_path / "sorted.txt")
    texts = calibration_texts(tmp_path / "sorted.txt", limit=300)
    assert len(texts) == 300 and texts[0] == rows[0]
    assert [sum(t.startswith(g) for t in texts) for g in ("caption", "news", "forum")] == [100, 100, 100]
    assert texts == [t for t in rows if t in set(texts)]  # file order kept
    assert calibration_texts(tmp_path / "sorted.txt", limit=5000) == rows  # fewer than the limit: all of them


def test_embedding_calibration_texts_are_spread_too(tmp_path):
    path = tmp_path / "sorted.tsv.gz"
    rows = [f"caption {i}" for i in range(50)] + [f"passage about topic {i}" for i in range(50)]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("text\n" + "\n".join(rows) + "\n")
    texts = embedding_texts(path, limit=20)
    assert len(texts) == 20 and sum(t.startswith("passage") for t in texts) == 10


def test_spread_is_even_and_deterministic():
    items = [str(i) for i in range(10)]
    assert spread(items, 5) == ["0", "2", "4", "6", "8"]
    assert spread(items, 3) == ["0", "3", "6"]
    assert spread(items, None) == items and spread(items, 10) == items and spread(items, 50) == items


def test_calibration_label_names_source_and_draw():
    label = calibration_label("stsb/train.tsv.gz", 300)
    assert label == "stsb/train.tsv.gz (300 texts spread over the file)"
    assert calibrated_on(label, "stsb/train.tsv.gz")
    assert not calibrated_on(label, None) and not calibrated_on(label, "other.txt")
    assert calibrated_on(calibration_label(None, 90), None) and calibrated_on(calibration_label("builtin", 90), None)
    assert calibration_label("builtin", 90) == "built-in (90 texts)" and calibrated_on("built-in (90 texts)", "builtin")
    assert not calibrated_on(calibration_label(None, 90), "stsb/train.tsv.gz")
    # artifacts from before the spread draw name a file's first rows: not what a suite asks for now
    assert not calibrated_on("stsb/train.tsv.gz (300 texts)", "stsb/train.tsv.gz")
    assert calibrated_on("built-in (90 texts)", None)
    assert not calibrated_on(None, None) and not calibrated_on("", None)


def _static(art):
    return json.loads((art / "stedge.json").read_text())["variants"]["onnx-int8-static"]


def test_bench_exports_again_when_calibrated_on_other_texts(tiny_model, tmp_path):
    from stedge.bench.build import build_variants
    from stedge.export import export_model

    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(f"calibration sentence {i} about topic {i % 7}" for i in range(40)))
    art = tmp_path / "bench"
    export_model(str(tiny_model), art, quantize="int8-static", calibration=str(cal))
    assert _static(art)["quantization"]["calibration"] == f"{cal} (40 texts spread over the file)"
    logs: list[str] = []
    build_variants(tiny_model, art, ["onnx-int8-static"], calibration=(str(cal), 300), log=logs.append)
    assert logs and logs[-1].startswith("reusing")  # the same texts: kept
    build_variants(tiny_model, art, ["onnx-int8-static"], log=logs.append)
    assert logs[-1].startswith("reusing")  # no calibration asked for: what the artifact has is kept
    build_variants(tiny_model, art, ["onnx-int8-static"], calibration=("builtin", 300), log=logs.append)
    assert any("calibrated on other texts" in line and "onnx-int8-static" in line for line in logs)
    assert _static(art)["quantization"]["calibration"].startswith("built-in (")
    assert _static(art)["verification"]["passed"]
