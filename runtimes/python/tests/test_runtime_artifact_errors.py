"""Broken artifacts, unknown variants, unavailable devices and the variant choice rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from stedge_runtime import ArtifactError, DeviceError, Encoder, Reranker, RuntimeStedgeError
from stedge_runtime.artifact import Manifest, choose_variant


@pytest.fixture()
def art(tiny_artifact, tmp_path) -> Path:
    out = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, out)
    return out


def _edit(art: Path, **fields) -> None:
    m = json.loads((art / "stedge.json").read_text())
    m.update(fields)
    (art / "stedge.json").write_text(json.dumps(m))


def test_newer_format_version(art):
    _edit(art, format_version=99)
    with pytest.raises(ArtifactError, match=r"stedge.json: format_version 99 is newer.*upgrade stedge-runtime"):
        Encoder.load(art)


def test_not_an_artifact(tmp_path, tiny_model):
    with pytest.raises(ArtifactError, match="stedge.json is missing"):
        Encoder.load(tiny_model)
    (tmp_path / "stedge.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Encoder.load(tmp_path)
    with pytest.raises(ArtifactError, match="is not a folder"):
        Encoder.load(tmp_path / "missing")


def test_wrong_task(tiny_artifact):
    with pytest.raises(ArtifactError, match="field 'task' is 'embedding'.*load it with Encoder"):
        Reranker.load(tiny_artifact)


@pytest.mark.parametrize(
    "variant,file", [("onnx-fp32", "onnx/model.onnx"), ("openvino-fp32", "openvino/openvino_model.bin")]
)
def test_sha256_mismatch(art, variant, file):
    Encoder.load(art, variant=variant)  # hashes and caches the good file
    with open(art / file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(
        ArtifactError,
        match=rf"{file}: (sha256 .* does not match|.* more than all files of) "
        rf"stedge.json variants.{variant}.sha256",
    ):
        Encoder.load(art, variant=variant)


def test_sha256_checked_on_every_load_when_asked(art):
    Encoder.load(art)
    m = json.loads((art / "stedge.json").read_text())
    m["variants"]["onnx-fp32"]["sha256"] = "0" * 64
    (art / "stedge.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="does not match"):  # a new expected hash is a new cache key
        Encoder.load(art, verify=True)
    assert Encoder.load(art, verify=False).encode("hi").shape == (32,)  # skipping the check is possible on purpose


def test_missing_tokenizer(art):
    (art / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"tokenizer.json is missing"):
        Encoder.load(art)


def test_missing_graph(art):
    (art / "onnx" / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"onnx/model.onnx is missing \(stedge.json variants.onnx-fp32.file\)"):
        Encoder.load(art)
    (art / "openvino" / "openvino_model.bin").unlink()
    with pytest.raises(ArtifactError, match=r"openvino/openvino_model.bin is missing"):
        Encoder.load(art, variant="openvino-fp32")


def test_unknown_variant(tiny_artifact):
    with pytest.raises(ArtifactError, match="unknown variant 'onnx-int8'; this artifact has: onnx-fp32, openvino-fp32"):
        Encoder.load(tiny_artifact, variant="onnx-int8")


def test_missing_manifest_fields(art):
    _edit(art, variants={})
    with pytest.raises(ArtifactError, match="field 'variants' is {}, expected at least one variant"):
        Encoder.load(art)
    _edit(art, variants={"onnx-fp32": {"file": "onnx/model.onnx"}})
    with pytest.raises(ArtifactError, match="field 'variants.onnx-fp32.backend' is '<missing>', expected one of onnx"):
        Encoder.load(art)
    _edit(art, variants={"x": {"file": "onnx/model.onnx", "backend": "onnx"}})
    with pytest.raises(ArtifactError, match="variant 'x' is not <backend>-<precision>"):
        Encoder.load(art)


def test_unknown_engine_option(tiny_artifact):
    with pytest.raises(RuntimeStedgeError, match="unknown onnxruntime option.*bogus.*accepted"):
        Encoder.load(tiny_artifact, bogus=1)


def test_unavailable_cuda_names_providers_and_falls_back_only_when_asked(tiny_artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider; installed providers: .*CPUExecutionProvider"):
        Encoder.load(tiny_artifact, device="cuda")
    with pytest.warns(RuntimeWarning, match="Falling back to the CPU"):
        enc = Encoder.load(tiny_artifact, device="cuda:0", fallback=True)
    assert enc.device == "cpu" and enc.encode(["hi"]).shape == (1, enc.dimension)


def test_cuda_provider_that_cannot_start_loads_libraries_once_and_says_what_is_missing(
    tiny_artifact, monkeypatch, capsys
):
    """onnxruntime-gpu lists CUDA but cannot start it (no CUDA libraries): the pip nvidia libraries are preloaded once
    (onnxruntime's messages go to stderr, never stdout), and the error names what to install."""
    import onnxruntime as ort
    from stedge_runtime import engines

    preloads = []

    def preload_dlls(**kw):
        preloads.append(kw)
        print("Failed to load libcudart.so.13")  # onnxruntime prints to stdout

    real_session = ort.InferenceSession

    def cpu_only_session(path, sess_options=None, providers=None):
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr(ort, "InferenceSession", cpu_only_session)
    monkeypatch.setattr(engines, "_cuda_libraries_loaded", False)
    for _ in range(2):
        with pytest.raises(
            DeviceError,
            match=r"could not start CUDAExecutionProvider \(session uses "
            r"CPUExecutionProvider\): it needs CUDA .*onnxruntime-gpu\[cuda,cudnn\]",
        ):
            Encoder.load(tiny_artifact, variant="onnx-fp32", device="cuda")
    assert preloads == [{}]
    out = capsys.readouterr()
    assert out.out == "" and "Failed to load libcudart" in out.err


def test_unknown_device(tiny_artifact):
    with pytest.raises(DeviceError, match="device 'mps' is not one stedge_runtime knows; use one of: cpu, cuda"):
        Encoder.load(tiny_artifact, device="mps")


def test_unavailable_openvino_device_names_available_ones(tiny_artifact):
    import openvino as ov

    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("an NPU is available here")
    with pytest.raises(DeviceError, match="device 'npu' is not available to OpenVINO; available devices: .*CPU"):
        Encoder.load(tiny_artifact, device="npu")
    with pytest.warns(RuntimeWarning):
        assert Encoder.load(tiny_artifact, device="npu", fallback=True).device == "cpu"


def test_openvino_auto_and_options(tiny_artifact, tmp_path):
    enc = Encoder.load(tiny_artifact, device="auto", performance_hint="throughput", cache_dir=tmp_path / "ov_cache")
    assert enc.variant == "openvino-fp32"
    ref = Encoder.load(tiny_artifact).encode(["hello there"])
    np.testing.assert_allclose(enc.encode(["hello there"]), ref, atol=1e-5)


def _m(default=None, **variants) -> Manifest:
    return Manifest.from_dict(
        {"format_version": 1, "task": "embedding", "dimension": 4, "variants": variants, "default_variant": default}
    )


def _v(backend, precision, devices, passed=True, opt=None) -> dict:
    return {
        "file": "f",
        "backend": backend,
        "precision": precision,
        "devices": devices,
        "optimization": opt,
        "verification": {"passed": passed, "min_cosine": 1.0 if precision == "fp32" else 0.995},
    }


def test_variant_choice_rule(tmp_path):
    onnx = {"onnx"}
    both = {"onnx", "openvino"}
    variants = {
        "onnx-fp32": _v("onnx", "fp32", ["cpu", "cuda", "tensorrt"]),
        "onnx-fp32-O3": _v("onnx", "fp32", ["cpu", "cuda"], opt="O3"),
        "onnx-fp16-O4": _v("onnx", "fp16", ["cuda", "tensorrt"], opt="O4"),
        "onnx-int8": _v("onnx", "int8", ["cpu"], passed=False),
        "openvino-int8-static": _v("openvino", "int8", ["cpu", "gpu", "npu"]),
    }
    m = _m(**variants)
    assert choose_variant(m, "cpu", None, onnx, tmp_path) == "onnx-fp32-O3"  # int8 failed its check
    assert choose_variant(m, "cpu", None, both, tmp_path) == "openvino-int8-static"  # int8 that passed wins on CPU
    assert choose_variant(m, "cuda", None, onnx, tmp_path) == "onnx-fp16-O4"
    assert choose_variant(m, "gpu", None, both, tmp_path) == "openvino-int8-static"
    m = _m(default="onnx-fp32", **variants)
    assert choose_variant(m, "cpu", None, both, tmp_path) == "openvino-int8-static"  # default_variant plays no part
    assert choose_variant(m, "cuda", None, onnx, tmp_path) == "onnx-fp16-O4"  # the default is for the CPU
    with pytest.raises(DeviceError, match="no variant fits device 'gpu'"):
        choose_variant(m, "gpu", None, onnx, tmp_path)
    with pytest.raises(ArtifactError, match="variant 'onnx-int8' .* does not run on device 'cuda'"):
        choose_variant(m, "cuda", "onnx-int8", onnx, tmp_path)
