"""The artifact contract (stedge_runtime.artifact): one validation for reading and writing, naming,
variant files, paths kept inside the artifact, and integrity checks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from stedge_runtime import ArtifactError, Encoder
from stedge_runtime.artifact import (
    FORMAT_VERSION,
    Manifest,
    VariantName,
    check_variant_files,
    parse_variant_name,
    variant_name,
    write_manifest,
)


@pytest.fixture()
def art(tiny_artifact, tmp_path) -> Path:
    out = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, out)
    return out


def _raw(art: Path) -> dict:
    return json.loads((art / "stedge.json").read_text())


def _save(art: Path, m: dict) -> None:
    (art / "stedge.json").write_text(json.dumps(m))


def test_round_trip_keeps_every_field_and_unknown_ones(art, tmp_path):
    raw = _raw(art)
    raw["future_field"] = {"a": 1}
    raw["variants"]["onnx-fp32"]["future_variant_field"] = [1, 2]
    m = Manifest.from_dict(raw)
    assert m.task == "embedding" and m.dimension == 32 and m.variants["onnx-fp32"].backend == "onnx"
    assert m.extra["future_field"] == {"a": 1}
    write_manifest(tmp_path, m)
    again = Manifest.read(tmp_path)
    assert again == m and again.variants["onnx-fp32"].extra["future_variant_field"] == [1, 2]
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this stedge_runtime reads"),
        (lambda m: m.pop("format_version"), "field 'format_version' is '<missing>'"),
        (lambda m: m.update(max_seq_length="256"), "field 'max_seq_length' is '256', expected an integer"),
        (lambda m: m.update(do_lower_case=1), "field 'do_lower_case' is 1, expected true or false"),
        (lambda m: m.update(dimension=True), "field 'dimension' is True"),
        (lambda m: m.pop("dimension"), "field 'dimension' is '<missing>'"),
        (lambda m: m["variants"]["onnx-fp32"].update(precision="fp64"), "variants.onnx-fp32.precision"),
        (lambda m: m["variants"]["onnx-fp32"].update(devices="cpu"), "variants.onnx-fp32.devices"),
        (
            lambda m: m["variants"]["onnx-fp32"].update(verification={"passed": "yes"}),
            "variants.onnx-fp32.verification.passed",
        ),
        (lambda m: m.update(default_variant="onnx-fp64"), "field 'default_variant'"),
        (lambda m: m.update(task="generation"), "field 'task'"),
    ],
)
def test_bad_fields_are_named_when_reading_and_writing(art, tmp_path, edit, match):
    raw = _raw(art)
    edit(raw)
    _save(art, raw)
    with pytest.raises(ArtifactError, match=match):
        Encoder.load(art)
    with pytest.raises(ArtifactError, match=match):
        write_manifest(tmp_path, raw)
    assert not (tmp_path / "stedge.json").exists()


def test_variant_names_both_ways():
    cases = {
        "onnx-fp32": VariantName("onnx", "fp32"),
        "onnx-fp32-O3": VariantName("onnx", "fp32", None, "O3"),
        "onnx-int8-avx512_vnni": VariantName("onnx", "int8", "avx512_vnni"),
        "onnx-int8-static-O2": VariantName("onnx", "int8", "static", "O2"),
        "openvino-bf16": VariantName("openvino", "bf16"),
        "openvino-int4-weights": VariantName("openvino", "int4", "weights"),
    }
    for name, parsed in cases.items():
        assert parse_variant_name(name) == parsed
        assert variant_name(parsed.backend, parsed.precision, parsed.optimization, parsed.qualifier) == name
        assert str(parsed) == name
    for bad in ("tflite-fp32", "onnx", "onnx-fp64", "onnx-int8-../x", "onnx-fp32-"):
        with pytest.raises(ArtifactError, match="is not <backend>-<precision>"):
            parse_variant_name(bad)
    with pytest.raises(ArtifactError, match="optimization 'O9'"):
        variant_name("onnx", "fp32", "O9")


def test_files_of_a_variant(art):
    m = Manifest.read(art)
    assert m.variants["onnx-fp32"].files() == ["onnx/model.onnx"]
    assert m.variants["openvino-fp32"].files() == ["openvino/openvino_model.xml", "openvino/openvino_model.bin"]
    raw = _raw(art)
    v = raw["variants"]["onnx-fp32"]
    v["sha256"] = {"onnx/model.onnx": v["sha256"]["onnx/model.onnx"], "onnx/model.onnx_data": "0" * 64}
    assert Manifest.from_dict(raw).variants["onnx-fp32"].files() == ["onnx/model.onnx", "onnx/model.onnx_data"]


@pytest.mark.parametrize(
    "field,value",
    [("file", "../../etc/passwd"), ("file", "/etc/passwd"), ("tokenizer", "../tokenizer.json"), ("sha256key", "../x")],
)
def test_paths_must_stay_inside(art, field, value):
    raw = _raw(art)
    v = raw["variants"]["onnx-fp32"]
    if field == "file":
        v["file"] = value
    elif field == "tokenizer":
        raw["tokenizer"] = value
    else:
        v["sha256"][value] = "0" * 64
    _save(art, raw)
    with pytest.raises(ArtifactError, match="must stay inside the artifact"):
        Encoder.load(art, variant="onnx-fp32")


def test_symlinks_out_of_the_artifact_are_refused_and_never_hang(art, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(art / "onnx" / "model.onnx", outside)
    (art / "onnx" / "model.onnx").unlink()
    os.symlink(outside, art / "onnx" / "model.onnx")
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        Encoder.load(art, variant="onnx-fp32")
    (art / "onnx" / "model.onnx").unlink()
    os.symlink("/dev/zero", art / "onnx" / "model.onnx")
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        Encoder.load(art, variant="onnx-fp32", verify=True)


def test_a_special_file_inside_is_refused(art):
    target = art / "onnx" / "model.onnx"
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(ArtifactError, match="not a regular file"):
        Encoder.load(art, variant="onnx-fp32", verify=True)


def test_missing_hashes_are_an_error_unless_opted_out(art):
    raw = _raw(art)
    del raw["variants"]["onnx-fp32"]["sha256"]
    _save(art, raw)
    with pytest.raises(ArtifactError, match=r"variants.onnx-fp32.sha256 is missing.*verify=False"):
        Encoder.load(art, variant="onnx-fp32")
    assert Encoder.load(art, variant="onnx-fp32", verify=False).encode("hi").shape == (32,)


def test_cached_check_catches_a_rewrite_that_keeps_size_and_mtime(art):
    Encoder.load(art, variant="openvino-fp32")  # hashed once, then cached
    weights = art / "openvino" / "openvino_model.bin"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime, same inode
    assert weights.stat().st_mtime_ns == st.st_mtime_ns and weights.stat().st_ino == st.st_ino
    with pytest.raises(ArtifactError, match="does not match"):
        Encoder.load(art, variant="openvino-fp32")


def test_check_variant_files_returns_graph_first(art):
    m = Manifest.read(art)
    files = check_variant_files(art, m.variants["openvino-fp32"], verify=True)
    assert [f.name for f in files] == ["openvino_model.xml", "openvino_model.bin"]
