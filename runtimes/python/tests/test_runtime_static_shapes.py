"""OpenVINO on static shapes only (engine option ``static_shapes``, the NPU's default): the vectors of the dynamic
graph, compilations of a power of two rows and tokens, and an NPU that compiles no dynamic shape (simulated: a
Core that says it has an NPU, refuses dynamic models there, and compiles static ones on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from stedge_runtime import Encoder, Reranker, RuntimeStedgeError
from stedge_runtime.artifact import cache_dir

pytest.importorskip("openvino")

TEXTS = [" ".join(["word"] * n) + f" {n}" for n in (0, 1, 3, 7, 12, 15, 16, 30, 40, 61)] * 5


def _powers_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("batch_size", [32, 37, 1])
def test_static_shapes_give_the_dynamic_graphs_vectors(tiny_artifact, batch_size):
    dynamic = Encoder.load(tiny_artifact, variant="openvino-fp32")
    static = Encoder.load(tiny_artifact, variant="openvino-fp32", static_shapes=True)
    want = dynamic.encode(TEXTS, batch_size=batch_size)
    got = static.encode(TEXTS, batch_size=batch_size)
    assert got.shape == want.shape == (len(TEXTS), static.dimension)
    assert float((got * want).sum(1).min()) >= 0.99999
    np.testing.assert_allclose(static.encode("one text alone"), dynamic.encode("one text alone"), atol=1e-5)
    shapes = static._engine._buckets
    assert shapes and all(_powers_of_two(r) and _powers_of_two(t) and t >= 16 for r, t in shapes)
    assert max(r for r, _ in shapes) <= batch_size


def test_static_shapes_run_the_rows_in_powers_of_two(tiny_artifact):
    enc = Encoder.load(tiny_artifact, variant="openvino-fp32", static_shapes=True, max_batch_tokens=10**6)
    enc.encode(["seven words of text in this one"] * 37, batch_size=37)
    assert set(enc._engine._buckets) == {(32, 16), (4, 16), (1, 16)}  # 37 rows: 32 + 4 + 1, no row padded
    enc.encode(["a text of twenty tokens or so, " * 3] * 8, batch_size=8)
    assert (8, 32) in enc._engine._buckets  # 20-odd tokens: padded to 32


def test_static_shapes_for_a_reranker_and_a_token_budget(tiny_ce_artifact, tiny_artifact):
    pairs = [("a query", t) for t in TEXTS[:23]]
    want = Reranker.load(tiny_ce_artifact, variant="openvino-fp32").predict(pairs)
    got = Reranker.load(tiny_ce_artifact, variant="openvino-fp32", static_shapes=True).predict(pairs)
    np.testing.assert_allclose(got, want, atol=1e-5)
    enc = Encoder.load(tiny_artifact, variant="openvino-fp32", static_shapes=True, max_batch_tokens=100)
    ref = Encoder.load(tiny_artifact, variant="openvino-fp32").encode(TEXTS)
    np.testing.assert_allclose(enc.encode(TEXTS), ref, atol=1e-5)


def test_static_shapes_with_a_prompt_length_input(tiny_prompt_model, tmp_path):
    """A graph exported with include_prompt=False also takes prompt_length, of shape (batch,): it gets [rows]."""
    from runtime_artifacts import build_artifact

    art = build_artifact(tiny_prompt_model, tmp_path / "art", openvino=True)
    static = Encoder.load(art, variant="openvino-fp32", static_shapes=True)
    assert "prompt_length" in static._engine.inputs
    dynamic = Encoder.load(art, variant="openvino-fp32")
    for prompt in static.prompts:
        np.testing.assert_allclose(
            static.encode(TEXTS[:19], prompt_name=prompt), dynamic.encode(TEXTS[:19], prompt_name=prompt), atol=1e-5
        )


def test_padding_stops_at_max_seq_length(tmp_path):
    """A position table of 24 (not a power of two) and max_seq_length 24: static shapes pad 17-24 tokens to 24, not
    32, and so does a static batch-1 compilation (a multiple of 16 would be 32 too)."""
    from runtime_artifacts import build_artifact
    from tiny import make_tiny_bert

    model = make_tiny_bert(tmp_path / "model", max_seq_length=24, positions=24)
    art = build_artifact(model, tmp_path / "art", openvino=True)
    texts = [" ".join(["word"] * n) for n in (2, 9, 18, 21, 40)]  # the last one is cut at 24 tokens
    want = Encoder.load(art, variant="openvino-fp32").encode(texts)
    static = Encoder.load(art, variant="openvino-fp32", static_shapes=True)
    np.testing.assert_allclose(static.encode(texts, batch_size=8), want, atol=1e-5)
    assert {t for _, t in static._engine._buckets} == {16, 24}
    batch1 = Encoder.load(art, variant="openvino-fp32", static_batch1=4)
    for _ in range(3):
        got = batch1.encode(texts[3])
    np.testing.assert_allclose(got, want[3], atol=1e-5)
    assert list(batch1._engine._static) == [24] and batch1._engine.static_batch1 == 4


def test_static_shapes_option_is_checked(tiny_artifact):
    with pytest.raises(RuntimeStedgeError, match="static_shapes='yes'"):
        Encoder.load(tiny_artifact, variant="openvino-fp32", static_shapes="yes")


@pytest.fixture()
def fake_npu(monkeypatch):
    """openvino.Core with an NPU that, like the real plugin, compiles no dynamic shape; static ones run on the CPU.
    Yields the input shapes compiled for it."""
    import openvino as ov

    compiled: list[list[list[int]]] = []

    class NpuCore(ov.Core):
        @property
        def available_devices(self):
            return ["CPU", "NPU"]

        def compile_model(self, model, device_name=None, config=None):
            if device_name == "NPU":
                if model.is_dynamic():
                    raise RuntimeError("[NPU] dynamic shapes are not supported")
                compiled.append([list(i.get_shape()) for i in model.inputs])
                device_name = "CPU"
            return super().compile_model(model, device_name, config or {})

    monkeypatch.setattr(ov, "Core", NpuCore)
    yield compiled


def test_the_npu_runs_static_shapes_by_default(tiny_artifact, fake_npu):
    enc = Encoder.load(tiny_artifact, device="npu")
    assert enc.variant == "openvino-fp32" and enc.device == "npu"
    assert fake_npu == [[[1, 16]] * len(fake_npu[0])]  # the first shape at load, so a refusal comes then
    got = enc.encode(TEXTS, batch_size=32)
    ref = Encoder.load(tiny_artifact, variant="openvino-fp32").encode(TEXTS, batch_size=32)
    assert float((got * ref).sum(1).min()) >= 0.9999
    assert all(_powers_of_two(r) and _powers_of_two(t) for shape in fake_npu for r, t in shape)
    assert any((cache_dir() / "openvino").iterdir())  # each shape compiles once per machine
    with pytest.raises(RuntimeStedgeError, match=r"could not compile the graph for NPU \(\[NPU\] dynamic shapes"):
        Encoder.load(tiny_artifact, device="npu", static_shapes=False)
