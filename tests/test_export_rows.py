"""int8 with activations quantized per row at run time (``--quantize int8-rows``): the graph rewrite on a
small MatMul graph (accuracy, batch invariance, float outlier channels, no int16 saturation), and the
variant on the tiny model through export, verification and the runtime's selection."""

from __future__ import annotations

import numpy as np
import pytest


def _matmul_graph(path, k: int = 64, m: int = 48, seed: int = 0):
    """x[b, t, k] @ W[k, m] -> y, saved to ``path``; returns W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(k, m)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], "/encoder/layer.0/dense/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _rel_err(y, ref):
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def test_rows_graph_is_accurate_and_each_row_independent_of_the_others(tmp_path):
    import onnx

    from stedge.export.quantize import ROWS_WEIGHT_BITS, quantize_rows_int8

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    w = _matmul_graph(src)
    q = quantize_rows_int8(src, dst, embeddings=False)
    assert q["method"] == "rows" and q["matmuls"] == 1 and q["float_outlier_channels"]["channels"] == 0
    proto = onnx.load(str(dst))
    ops = [n.op_type for n in proto.graph.node]
    assert "MatMul" not in ops and "MatMulIntegerToFloat" in ops and "QuantizeLinear" in ops
    weight = next(onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("/weight"))
    assert weight.dtype == np.int8 and np.abs(weight).max() == 2 ** (ROWS_WEIGHT_BITS - 1) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "q.onnx"]

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 64)).astype(np.float32)
    y = _run(dst, x)
    assert _rel_err(y, x @ w) < 0.03
    # the same row beside very different batch-mates (100x larger, other lengths) gives the same numbers
    other = np.concatenate([x[:1], 100 * rng.normal(size=(4, 5, 64)).astype(np.float32)])
    assert np.array_equal(_run(dst, other)[0], y[0])
    assert np.array_equal(_run(dst, x[:1, :2])[0], y[0, :2])


def test_rows_graph_has_no_int16_saturation(tmp_path):
    """Activations at the ends of uint8 next to the largest weights: u8 x s8 kernels without VNNI add pairs
    of products in int16, which 8-bit weights overflow (onnxruntime on AVX2 then returns wrong sums)."""
    from stedge.export.quantize import quantize_rows_int8

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    w = np.abs(_matmul_graph(src, k=64, m=16))
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))  # all positive: sums add up
    onnx.save(proto, str(src))
    quantize_rows_int8(src, dst, embeddings=False)
    x = np.full((1, 2, 64), -1.0, np.float32)
    x[0, 1] = 1.0  # rows at the ends of their own range: uint8 1 and 255
    assert _rel_err(_run(dst, x), x @ w) < 0.02


def test_outlier_channels_found_on_calibration_stay_float(tmp_path):
    from stedge.export.quantize import outlier_channels, quantize_rows_int8

    src = tmp_path / "f.onnx"
    w = _matmul_graph(src)
    rng = np.random.default_rng(2)

    def with_outlier(n):
        x = rng.normal(size=(n, 6, 64)).astype(np.float32)
        x[..., 7] *= 40.0
        return x

    cal = [{"x": with_outlier(4)} for _ in range(3)]
    assert outlier_channels(src, cal) == {"x": [7]}
    assert not list(tmp_path.glob(".*probe*"))
    plain, split = tmp_path / "plain.onnx", tmp_path / "split.onnx"
    quantize_rows_int8(src, plain, embeddings=False)
    q = quantize_rows_int8(src, split, cal, embeddings=False)
    assert q["float_outlier_channels"] == {"ratio_to_median": 4.0, "inputs": 1, "channels": 1}
    assert q["calibration_texts"] == 12
    x = with_outlier(2)
    err_plain, err_split = _rel_err(_run(plain, x), x @ w), _rel_err(_run(split, x), x @ w)
    assert err_split < 0.5 * err_plain and err_split < 0.02, (err_plain, err_split)
    alone = _run(split, x[:1])
    assert np.array_equal(alone[0], _run(split, x)[0])


def test_the_noisiest_matmul_inputs_stay_float_within_the_share(tmp_path):
    """Rows whose max is far above their rms (after GELU: a few large values, in other channels each time)
    lose the most to one int8 scale per row: the noisiest inputs stay float, within ROWS_FLOAT_SHARE of the
    multiply-adds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from stedge.export.quantize import ROWS_FLOAT_SHARE, noisy_inputs, quantize_rows_int8

    rng = np.random.default_rng(3)
    w_big, w_small = (rng.normal(size=s).astype(np.float32) for s in ((64, 64), (64, 4)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_big"], ["y"], "/layer.0/big/MatMul"),
            helper.make_node("MatMul", ["z", "w_small"], ["v"], "/layer.0/small/MatMul"),
        ],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None, 64]) for n in ("x", "z")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "v")],
        [numpy_helper.from_array(w_big, "w_big"), numpy_helper.from_array(w_small, "w_small")],
    )
    src = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))

    def spiky(n):
        z = rng.normal(size=(n, 6, 64)).astype(np.float32) * 0.1
        z[np.arange(n)[:, None], np.arange(6)[None, :], rng.integers(0, 64, size=(n, 6))] = 20.0
        return z

    cal = [{"x": rng.normal(size=(4, 6, 64)).astype(np.float32), "z": spiky(4)} for _ in range(3)]
    small_share = 4 / (64 + 4)
    assert small_share < ROWS_FLOAT_SHARE
    chosen = noisy_inputs(src, cal, {})
    both = noisy_inputs(src, cal, {}, share=1.0)
    assert list(chosen) == ["z"] and list(both) == ["z", "x"] and both["z"] > 2 * both["x"]
    assert noisy_inputs(src, cal, {}, share=small_share / 2) == {}  # over the budget: nothing
    q = quantize_rows_int8(src, tmp_path / "q.onnx", cal, embeddings=False)
    assert q["matmuls"] == 1 and q["float_matmuls"]["inputs"] == 1 and q["float_matmuls"]["matmuls"] == 1
    ops = {n.name: n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert ops["/layer.0/small/MatMul"] == "MatMul" and "/layer.0/big/MatMul" not in ops
    z = spiky(2)
    assert np.allclose(ort_run(tmp_path / "q.onnx", {"x": z, "z": z})[1], z @ w_small, atol=1e-4)


def ort_run(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def rows_artifact(tiny_model, tmp_path_factory):
    from stedge.export import export_model

    return export_model(str(tiny_model), tmp_path_factory.mktemp("rows") / "a", quantize="int8-rows")


def test_rows_variant_exported_verified_and_chosen(rows_artifact):
    from stedge_runtime import Encoder

    m = rows_artifact.manifest
    v = m["variants"]["onnx-int8-rows"]
    assert v["file"] == "onnx/model_qint8_rows.onnx" and v["precision"] == "int8" and v["devices"] == ["cpu"]
    assert v["quantization"]["method"] == "rows" and v["quantization"]["calibration"].startswith("built-in")
    ver = v["verification"]
    assert v["quantization"]["matmuls"] == 12  # 2 layers x (query, key, value, attention out, FFN in and out)
    assert ver["passed"] and ver["tier"] is not None and ver["batch_invariance_min_cos"] >= 0.99999
    assert 0.99 < ver["mean_cosine"] < 1.0
    files = sorted(p.name for p in (rows_artifact.path / "onnx").iterdir())
    assert files == ["model.onnx", "model_qint8_rows.onnx"]
    enc = Encoder.load(rows_artifact.path, tier="compressed")
    assert enc.variant == "onnx-int8-rows" and enc.selection.source == "rule"
    texts = ["a short query", "a longer sentence about the weather in the mountains today", "x"]
    batch = enc.encode(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(enc.encode([t])[0], batch[i], rtol=0, atol=1e-6)


def test_rows_ranks_first_on_cpus_without_a_profile_and_after_static_on_amx():
    from stedge_runtime.select import rule_rank, variant_kind

    def rec(name, method):
        return {"backend": "onnx", "precision": "int8", "quantization": {"method": method}, "devices": ["cpu"]}

    rows, static = rec("onnx-int8-rows", "rows"), rec("onnx-int8-static", "static")
    assert variant_kind("onnx-int8-rows", rows) == "int8-rows"
    for flags, first in (({"avx2"}, "rows"), ({"avx512_vnni", "avx512_bf16"}, "rows"), ({"amx_bf16"}, "static")):
        order = sorted([("rows", rows), ("static", static)], key=lambda kv: rule_rank(kv[0], kv[1], "cpu", flags))
        assert order[0][0] == first, flags


def test_quantize_int8_plans_rows_beside_static_and_bench_names_it():
    from stedge.bench.build import export_call
    from stedge.export.plan import ExportOptions, check_options, make_plan

    names = [v.name for v in make_plan(check_options(ExportOptions(quantize="int8", optimize="O3"))).variants]
    assert names == ["onnx-fp32", "onnx-fp32-O3", "onnx-int8-static-O3", "onnx-int8-rows"]
    assert export_call("onnx-int8-rows") == ("onnx", None, "int8-rows", None)
