"""The benchmark harness: suite parsing, FLOPs, device handling, relative figures, and a smoke run.

The smoke run measures a tiny random model through every kind of subject (stedge torch, the runtime
over an exported artifact, a sentence-transformers peer) in a few seconds each; it checks the results
schema and that every row carries accuracy next to speed. Speed itself is never asserted.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from stedge.errors import StedgeError


def _suite_toml(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- suites
def test_bundled_suites_parse():
    from stedge.bench.runner import load_suite

    for name in ("cpu", "gpu", "smoke"):
        s = load_suite(name)
        assert s.models and s.headline_batch_size in s.batch_sizes
    gpu = load_suite("gpu")
    assert gpu.device == "cuda" and "fp16" in gpu.models[0].torch
    assert any(v.startswith("tensorrt:") for v in gpu.models[0].variants)


def test_suite_errors_name_the_key(tmp_path):
    from stedge.bench.runner import load_suite

    bad = _suite_toml(tmp_path / "bad.toml", 'name = "x"\nbatch_size = [1]\n[[models]]\nref = "m"\n')
    with pytest.raises(StedgeError, match="batch_size"):
        load_suite(bad)
    no_models = _suite_toml(tmp_path / "empty.toml", 'name = "x"\n')
    with pytest.raises(StedgeError, match=r"\[\[models\]\]"):
        load_suite(no_models)
    head = _suite_toml(
        tmp_path / "head.toml", 'batch_sizes = [1, 8]\nheadline_batch_size = 32\n[[models]]\nref = "m"\n'
    )
    with pytest.raises(StedgeError, match="headline_batch_size"):
        load_suite(head)
    base = _suite_toml(tmp_path / "base.toml", '[[models]]\nref = "m"\nbaseline_model = "teacher"\n')
    with pytest.raises(StedgeError, match="teacher"):
        load_suite(base)
    most = _suite_toml(tmp_path / "most.toml", 'rounds = 3\nmax_rounds = 2\n[[models]]\nref = "m"\n')
    with pytest.raises(StedgeError, match="max_rounds"):
        load_suite(most)
    inter = _suite_toml(tmp_path / "inter.toml", 'interleave_batch_sizes = [64]\n[[models]]\nref = "m"\n')
    with pytest.raises(StedgeError, match=r"interleave_batch_sizes \[64\] has \[64\], which batch_sizes"):
        load_suite(inter)
    cycles = _suite_toml(tmp_path / "cycles.toml", 'interleave_cycles = -1\n[[models]]\nref = "m"\n')
    with pytest.raises(StedgeError, match="interleave_cycles must be >= 0"):
        load_suite(cycles)
    with pytest.raises(StedgeError, match="cpu, cpu-rerank, gpu, smoke"):
        load_suite("no-such-suite")
    for entry in ("fast", "near@", "near@-3", "near@lots"):
        auto = _suite_toml(tmp_path / "auto.toml", f'[[models]]\nref = "m"\nauto = ["exact", "{entry}"]\n')
        with pytest.raises(StedgeError, match=r"models\[0\]\.auto: auto entry .* optionally with a memory budget"):
            load_suite(auto)
    ok = _suite_toml(tmp_path / "ok.toml", '[[models]]\nref = "m"\nauto = ["near", "near@300", "exact@250.5"]\n')
    assert load_suite(ok).models[0].auto == ["near", "near@300", "exact@250.5"]


def test_quick_shrinks_a_suite():
    from stedge.bench.runner import load_suite

    s = load_suite("cpu")
    q = s.quick()
    assert q.repetitions == 1 and q.num_texts <= 128 and set(q.batch_sizes) <= set(s.batch_sizes)
    assert q.headline_batch_size in q.batch_sizes
    assert q.interleave_cycles <= 3 and set(q.interleave_batch_sizes) <= set(q.batch_sizes)
    assert s.repetitions == 3  # the original is untouched


# ----------------------------------------------------------------------------- FLOPs
def test_best_round_takes_each_figure_from_its_best_round():
    from stedge.bench.runner import best_round

    def row(rate, p50, cold, rss, idle=9.0, tok=0.1):
        return {
            "status": "ok",
            "throughput": {"32": {"sentences_per_s": rate}},
            "latency_ms": {"p50": p50},
            "latency_after_idle_ms": {"p50": idle, "gap_ms": 50},
            "tokenize_ms": {"p50": tok},
            "cold_start_s": cold,
            "peak_rss_mb": rss,
        }

    best = best_round([row(300.0, 4.0, 0.5, 500.0, 9.0, 0.2), row(400.0, 5.0, 0.7, 480.0, 8.0, 0.3)], 32)
    assert best["throughput"]["32"]["sentences_per_s"] == 400.0 and best["latency_ms"] == {"p50": 4.0}
    assert best["latency_after_idle_ms"] == {"p50": 8.0, "gap_ms": 50}  # its own best round
    assert best["tokenize_ms"] == {"p50": 0.2}  # likewise
    assert (best["cold_start_s"], best["peak_rss_mb"], best["rounds"]) == (0.5, 500.0, 2)
    assert best["rounds_headline_sentences_per_s"] == [300.0, 400.0] and best["rounds_agree"] is False
    assert best_round([row(380.0, 4.0, 0.5, 500.0), row(400.0, 5.0, 0.7, 480.0)], 32)["rounds_agree"] is True
    failed = {"status": "error", "reason": "boom"}
    assert best_round([failed, failed], 32) == failed
    assert best_round([failed, row(1.0, 1.0, 1.0, 1.0)], 32)["rounds"] == 1


def test_subjects_whose_best_rounds_disagree_run_again_up_to_max_rounds():
    """A noisy subject runs again until its two best rounds agree within ROUNDS_AGREE (or max_rounds);
    a steady one and a failed one run only the suite's rounds; extra rounds alternate their order too."""
    from stedge.bench.runner import measure_rounds, rounds_agree

    rates = {"noisy": [600, 816, 790], "steady": [500, 510], "stays": [300, 400, 320, 330, 399], "failed": []}
    calls, extra = [], []

    def measure(r, key):
        calls.append((r, key))
        if key == "failed":
            return {"status": "error", "reason": "boom"}
        return {"status": "ok", "throughput": {"32": {"sentences_per_s": rates[key][r]}}}

    order = ["noisy", "steady", "stays", "failed"]
    done = measure_rounds(order, 2, 4, 32, measure, extra.append)
    assert {k: len(v) for k, v in done.items()} == {"noisy": 3, "steady": 2, "stays": 4, "failed": 2}
    assert calls[8:] == [(2, "noisy"), (2, "stays"), (3, "stays")] and extra == [2, 1]
    assert measure_rounds(order, 2, 0, 32, measure) and len(calls) == 11 + 8  # max_rounds 0: rounds only
    assert rounds_agree([816, 790, 600]) and not rounds_agree([400, 330, 320]) and rounds_agree([5.0])


def test_interleaved_ratios_are_medians_of_per_cycle_ratios():
    from stedge_runtime.tune import paired_speedup

    from stedge.bench.interleave import summarize

    # B takes twice A's time; in cycle 1 a slow spell doubles both, in cycle 3 only B has a blip
    a, b = [1.0, 2.0, 1.0, 1.0], [2.0, 4.0, 2.0, 2.6]
    assert paired_speedup(a, b) == pytest.approx(2.0)  # the spell does not move the ratio
    assert paired_speedup(b, a) == pytest.approx(0.5)
    assert paired_speedup([1.0, 1.0, 1.0], [3.0, 1.0, 2.0]) == pytest.approx(2.0)  # odd count: the middle one
    assert paired_speedup([], [1.0]) is None
    s = summarize(a, 100)
    assert s["seconds"] == a and s["sentences_per_s"] == pytest.approx(100.0)  # median of 100, 50, 100, 100
    assert s["sentences_per_s_min"] == pytest.approx(50.0) and s["sentences_per_s_max"] == pytest.approx(100.0)


def test_interleaved_ratio_interval_covers_the_median_at_its_level():
    import math

    from stedge_runtime.errors import InputError
    from stedge_runtime.tune import median_interval

    from stedge.bench.interleave import ratio_interval
    from stedge.bench.report import _interleaved_clause

    def coverage(n: int, k: int) -> float:  # P(x_k <= median <= x_(n-k+1)) for any continuous distribution
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    for n in range(1, 41):
        values = [float(v) for v in range(n, 0, -1)]  # unsorted on purpose
        ci = median_interval(values)
        if n < 6:  # even the smallest to the largest covers less than 95 %
            assert ci is None and coverage(n, 1) < 0.95
            continue
        k = int(ci[0])  # the values are 1..n, so the low end is its own rank
        assert ci == (float(k), float(n + 1 - k)) and ci[0] <= statistics.median(values) <= ci[1]
        assert coverage(n, k) >= 0.95 and coverage(n, k + 1) < 0.95, n  # the narrowest that keeps the level
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0], level=0.9) == (1.0, 5.0)  # 5 values reach 93.75 %
    with pytest.raises(InputError, match="level must lie between 0 and 1"):
        median_interval([1.0] * 10, level=95)
    # per-cycle ratios 2, 2, 2, 4, 1, 2 (B's pass time over A's): the interval of their median is their range here
    a, b = [1.0, 1.0, 2.0, 1.0, 2.0, 1.0], [2.0, 2.0, 4.0, 4.0, 2.0, 2.0]
    assert ratio_interval(a, b) == [1.0, 4.0] and ratio_interval(a[:5], b[:5]) is None
    assert _interleaved_clause(2.0, 0.5, [1.0, 4.0]) == (
        " (2.00× in the interleaved phase, 95 % CI 1.00-4.00, at 50 % of its best-round rate)"
    )
    assert _interleaved_clause(2.0) == " (2.00× in the interleaved phase)"


def test_interleaved_phase_goes_on_without_a_worker_that_fails(tiny_model, tmp_path):
    from stedge.bench.interleave import run_interleaved
    from stedge.bench.runner import thread_env
    from stedge.bench.subjects import StedgeTorch

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([f"sentence number {i} of the interleaved test" for i in range(12)]))
    passages = tmp_path / "passages.json"
    passages.write_text(json.dumps([" ".join(["a longer passage of the interleaved test"] * 8)] * 5))
    job = {"threads": 1, "texts": str(texts), "passages": str(passages), "num_texts_batch1": 3}
    job["serve_batch_sizes"] = ["1", "4", "p4"]  # "p4": one pass over the passages at batch size 4
    subjects = [
        ("good", StedgeTorch("tiny", str(tiny_model))),
        ("bad", StedgeTorch("tiny", str(tmp_path / "no-such-model"))),
        ("also good", StedgeTorch("tiny", str(tiny_model))),
    ]
    cycles = []
    got = run_interleaved(subjects, job, tmp_path / "work", thread_env(1), 3, 120, on_cycle=cycles.append)
    assert cycles == [1, 2, 3]
    assert "did not load" in got["bad"]["error"] and "no-such-model" in got["bad"]["error"]
    for key in ("good", "also good"):
        assert set(got[key]["seconds"]) == {"1", "4", "p4"}  # one pass per batch size and cycle
        assert all(len(v) == 3 and min(v) > 0 for v in got[key]["seconds"].values())
    del job["passages"]  # a passage pass with no passages: the worker says so instead of timing nothing
    got = run_interleaved(subjects[:1], job, tmp_path / "work2", thread_env(1), 1, 120)
    assert "is over the passages, but the job has none" in got["good"]["error"]


def test_gemm_peaks_of_a_run_keep_the_higher_of_each_figure():
    from stedge.bench.gemm import best_peaks, peak_for

    first = {"device": "cpu", "threads": 2, "gflops": 320.0, "gflops_fp32": 320.0, "gflops_bf16": 1239.0, "size": 1024}
    slow = {"device": "cpu", "threads": 2, "gflops": 330.0, "gflops_fp32": 330.0, "gflops_bf16": 484.0, "size": 1024}
    first.update(memory_read_gbs=20.7, memory_read_mb=512)  # the memory's read bandwidth: the higher counts too
    slow.update(memory_read_gbs=23.3, memory_read_mb=512)
    g = best_peaks([first, slow])  # a slow spell during the second measurement lowers bf16 only
    assert g["gflops"] == g["gflops_fp32"] == 330.0 and g["gflops_bf16"] == 1239.0 and g["memory_read_gbs"] == 23.3
    assert g["device"] == "cpu" and g["size"] == 1024 and first["gflops"] == 320.0  # the inputs stay as they were
    assert g["measurements"] == [
        {"gflops": 320.0, "gflops_fp32": 320.0, "gflops_bf16": 1239.0, "memory_read_gbs": 20.7},
        {"gflops": 330.0, "gflops_fp32": 330.0, "gflops_bf16": 484.0, "memory_read_gbs": 23.3},
    ]
    assert peak_for(g, "bf16") == 1239.0 and peak_for(g, "int8") == 330.0  # no int8 figure: the fp32 peak


def test_flops_match_the_parameter_count(tmp_path):
    """The linear part of the formula is 2 FLOPs per weight per token; attention adds 4*n^2*h per layer."""
    import torch
    from transformers import BertConfig, BertModel

    from stedge.bench.gemm import model_dims, text_flops

    cfg = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
    BertModel(cfg).save_pretrained(tmp_path)
    dims = model_dims(tmp_path)
    assert dims == {"hidden": 48, "layers": 3, "intermediate": 96}
    layer = BertModel(cfg).encoder.layer[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    n = 10
    assert text_flops(n, dims) == 3 * (2 * n * weights + 4 * n * n * 48)


def test_batch1_weights_are_the_matrix_products_at_the_precision_that_reads_them(tmp_path):
    """Every forward pass reads all the weights of the encoder's matrix products (not the embedding tables, which
    it looks up row by row); their MB at fp32 / bf16 / int8, none for a precision without a byte size."""
    import torch
    from transformers import BertConfig, BertModel

    from stedge.bench.gemm import matmul_weights, model_dims, weights_mb

    cfg = BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
    BertModel(cfg).save_pretrained(tmp_path)
    dims = model_dims(tmp_path)
    linear = [m for m in BertModel(cfg).encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert matmul_weights(dims) == sum(m.weight.numel() for m in linear) == 3 * (4 * 48 * 48 + 2 * 48 * 96)
    assert weights_mb(dims, "fp32") == pytest.approx(4 * matmul_weights(dims) / 1e6)
    assert weights_mb(dims, "bf16") == weights_mb(dims, "fp32") / 2 == 2 * weights_mb(dims, "int8")
    assert weights_mb(dims, None) is None and weights_mb(dims, "int8-weights") is None
    minilm = {"hidden": 384, "layers": 6, "intermediate": 1536}  # all-MiniLM-L6-v2: 21.2 MB in bf16
    assert weights_mb(minilm, "bf16") == pytest.approx(21.23, abs=0.01)


def test_memory_read_bandwidth_is_measured_at_the_thread_budget():
    from stedge.bench.gemm import read_bandwidth

    got = read_bandwidth(1, mb=8, seconds=0.05)
    assert got["memory_read_gbs"] > 0 and got["memory_read_mb"] == 8
    assert "sum, 1 thread" in got["memory_read_library"]


def test_real_token_share_per_order_of_a_calls_items():
    """Batches pad to their longest item: sorted by tokens pads least; by characters as sentence-transformers sorts
    (a pair counts both texts); in the order given as fastembed takes them."""
    import random

    from stedge.bench.gemm import PADDING_ORDERS, real_token_share

    items = ["a" * 90, "b" * 80, "c" * 70, "d" * 50, "e" * 60, ("x" * 20, "y" * 20)]  # the pair: 40 characters
    got = real_token_share([6, 1, 5, 2, 4, 3], items, 2)  # 21 real tokens
    assert set(got) == set(PADDING_ORDERS)
    assert got["tokens"] == pytest.approx(21 / (2 * 6 + 2 * 4 + 2 * 2))  # [6, 5] [4, 3] [2, 1]
    assert got["chars"] == pytest.approx(21 / (2 * 6 + 2 * 5 + 2 * 3))  # [6, 1] [5, 4] [2, 3]
    assert got["order"] == pytest.approx(21 / (2 * 6 + 2 * 5 + 2 * 4))  # [6, 1] [5, 2] [4, 3]
    assert real_token_share([5, 5, 5], ["a", "b", "c"], 2) == {k: 1.0 for k in PADDING_ORDERS}  # nothing to pad
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(97)]
    texts = ["x" * rng.randint(1, 300) for _ in lengths]
    for bs in (1, 8, 32, 200):
        got = real_token_share(lengths, texts, bs)
        assert got["tokens"] >= max(got["chars"], got["order"]) and 0 < min(got.values()) <= 1
    with pytest.raises(ValueError, match="3 token counts for 2 items"):
        real_token_share([1, 2, 3], ["a", "b"], 2)


def test_padding_of_a_run_is_taken_at_the_batch_sizes_its_table_shows():
    """Texts at the headline batch size; passages at it too where they were timed at it (the passages/s column),
    else at their largest."""
    from stedge.bench import runner

    texts, passages = ["a b", "a"], ["p " * 9, "p", "p p"]
    inputs = (texts, [], [], passages)
    suite = runner.Suite(name="t", file="t.toml", models=[], headline_batch_size=128)
    for sizes, want in (([], 128), ([32, 128, 512], 128), ([32, 512], 512)):
        suite.passage_batch_sizes = sizes
        pad = runner._padding(suite, inputs, [4, 3], [11, 3, 4])
        assert pad["texts"]["batch_size"] == 128 and pad["passages"]["batch_size"] == want, sizes
    assert pad["passages"]["tokens"] == pytest.approx(18 / 33)  # one batch of three, padded to 11
    assert "passages" not in runner._padding(suite, (texts, [], [], []), [4, 3], [])


def test_model_dims_error_names_the_file(tmp_path):
    from stedge.bench.gemm import model_dims

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "odd"}))
    with pytest.raises(StedgeError, match="config.json"):
        model_dims(tmp_path)
    with pytest.raises(StedgeError, match="no config.json"):
        model_dims(tmp_path / "missing")


# ----------------------------------------------------------------------------- machine / devices
def test_int8_isa_from_flags(monkeypatch):
    import platform

    from stedge.bench import machine

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert machine.int8_isa({"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert machine.int8_isa({"avx2", "avx512f", "avx512bw"}) == "avx512"
    assert machine.int8_isa({"avx2"}) == "avx2"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert machine.int8_isa(set()) == "arm64"


def test_st_openvino_peer_counts_as_bf16_where_openvino_runs_bf16(monkeypatch):
    """OpenVINO's CPU plugin runs an fp32 model in bf16 on avx512_bf16 / AMX CPUs, so the peer's share of
    the GEMM peak is taken against the bf16 peak there (a 123 % share of the fp32 peak was reported before)."""
    from stedge_runtime import machine

    from stedge.bench.subjects import STPeer

    ov, onnx = STPeer("m", "p", backend="openvino"), STPeer("m", "p", backend="onnx")
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "avx512_bf16"})
    assert ov.facts()["precision"] == "bf16" and onnx.facts()["precision"] == "fp32"
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma"})
    assert ov.facts()["precision"] == "fp32"


def test_machine_facts_have_what_the_results_need():
    from stedge.bench.machine import machine_facts

    m = machine_facts(with_gpu=False)
    assert m["cpu"] and m["cores_logical"] >= 1 and "torch" in m["libraries"]
    assert isinstance(m["isa_flags"], list)


def test_gpu_subjects_without_cuda(monkeypatch, tmp_path):
    """The CUDA path: subjects say why they cannot run, and a cuda suite refuses to start without a GPU."""
    from stedge.bench import machine, runner
    from stedge.bench.subjects import RuntimeVariant, StedgeTorch, STPeer

    monkeypatch.setattr(machine, "cuda_available", lambda: False)
    assert "CUDA" in StedgeTorch("m", str(tmp_path), "cuda", "fp16").unavailable()
    assert "GPU" in StedgeTorch("m", str(tmp_path), "cpu", "fp16").unavailable()
    assert "CUDA" in STPeer("m", str(tmp_path), "cuda", "torch", "fp16").unavailable()
    assert "CPU only" in STPeer("m", str(tmp_path), "cuda", "openvino").unavailable()
    (tmp_path / "stedge.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "dimension": 8,
                "variants": {"onnx-fp16-O4": {"file": "onnx/m.onnx", "backend": "onnx", "precision": "fp16"}},
            }
        )
    )
    assert "CUDA" in RuntimeVariant("m", str(tmp_path), "tensorrt", "onnx-fp16-O4").unavailable()
    assert "no variant" in RuntimeVariant("m", str(tmp_path), "cpu", "onnx-int8-static").unavailable()

    entry = runner.ModelEntry(
        name="m",
        ref="m",
        torch=["fp32", "fp16"],
        variants=["onnx-fp32", "tensorrt:onnx-fp16-O4"],
        peers=["torch:fp16", "onnx"],
    )
    subs = runner.make_subjects(entry, tmp_path, tmp_path, {}, "cuda")
    assert [(s.kind, s.device) for s in subs][:2] == [("stedge-torch", "cuda"), ("stedge-torch", "cuda")]
    assert subs[0].is_reference
    trt = [s for s in subs if s.kind == "runtime" and s.device == "tensorrt"]
    assert len(trt) == 1 and trt[0].variant == "onnx-fp16-O4"
    assert {(s.backend, s.precision) for s in subs if s.kind == "st"} == {("torch", "fp16"), ("onnx", "fp32")}

    with pytest.raises(StedgeError, match="no CUDA GPU"):
        runner.run_suite(runner.load_suite("gpu"), progress=False, log=lambda m: None)


def test_cuda_suite_without_onnxruntime_gpu(monkeypatch, tmp_path):
    """A GPU whose onnxruntime has no CUDA/TensorRT provider: the suite's ONNX variants are not exported (minutes
    for subjects that would only be skipped), each is skipped with the provider's name, the torch subjects stay;
    the results folder is named after the GPU."""
    from stedge import bench
    from stedge.bench import machine, runner, subjects

    monkeypatch.setattr(machine, "cuda_available", lambda: True)
    monkeypatch.setattr(machine, "ort_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(machine, "gpu_info", lambda: {"name": "NVIDIA H200", "count": 1})
    entry = runner.ModelEntry(name="m", ref="m", torch=["fp32"], variants=["onnx-fp32", "tensorrt:onnx-fp16-O4"])
    suite = runner.Suite(name="g", file="g.toml", models=[entry], device="cuda", models_dir=str(tmp_path))
    built, said = [], []
    monkeypatch.setattr("stedge.bench.build.build_variants", lambda *a, **k: built.append(a))
    art = runner.ensure_artifact(entry, tmp_path / "model", suite, None, said.append)
    assert built == [] and not art.exists()
    assert any("onnx-fp32 for cuda" in m and "CUDAExecutionProvider" in m for m in said)
    assert any("onnx-fp16-O4 for tensorrt" in m and "TensorrtExecutionProvider" in m for m in said)
    subs = runner.make_subjects(entry, tmp_path / "model", art, {}, "cuda")
    why = {s.variant: s.unavailable() for s in subs if s.kind == "runtime"}
    assert "CUDAExecutionProvider" in why["onnx-fp32"] and "TensorrtExecutionProvider" in why["onnx-fp16-O4"]
    assert "CUDAExecutionProvider" in why["auto:near"]
    assert subjects.engine_problem("openvino-bf16", "cuda").endswith("CPU only (device 'cuda')")
    assert subjects.engine_problem("onnx-fp32", "cpu") is None

    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert bench.default_results_dir("gpu", False, device="cuda:0").relative_to(tmp_path).parts[2:] == (
        "nvidia-h200",
        "gpu",
    )
    monkeypatch.setattr(machine, "gpu_info", lambda: None)  # no GPU to name: the CPU's folder, as before
    assert bench.default_results_dir("gpu", False, device="cuda").parent.name != "nvidia-h200"


def test_candidates_are_exported_for_the_auto_subjects_but_not_measured_by_name(monkeypatch, tmp_path):
    """A suite of auto subjects alone: ``candidates`` join the export (after the named variants, once each), and
    only the named variants and the auto tiers become subjects."""
    from types import SimpleNamespace

    from stedge.bench import runner

    data = SimpleNamespace(sources={})  # no local STS pairs: no eval set passed to the export
    entry = runner.ModelEntry(
        name="m", ref="m", torch=[], variants=["onnx-fp32"], candidates=["openvino-bf16", "onnx-fp32"], auto=["near"]
    )
    suite = runner.Suite(name="c", file="c.toml", models=[entry], models_dir=str(tmp_path))
    built = []
    monkeypatch.setattr("stedge.bench.build.build_variants", lambda model, art, variants, **k: built.append(variants))
    art = runner.ensure_artifact(entry, tmp_path / "model", suite, data, lambda m: None)
    assert built == [["onnx-fp32", "openvino-bf16"]]
    subs = runner.make_subjects(entry, tmp_path / "model", art, {}, "cpu")
    assert sorted(s.variant for s in subs) == ["auto:near", "onnx-fp32"]
    only = runner.ModelEntry(name="m", ref="m", torch=[], candidates=["openvino-bf16"], auto=["near"])
    assert runner.ensure_artifact(only, tmp_path / "model", suite, data, lambda m: None) == art
    assert built[-1] == ["openvino-bf16"]
    assert [s.variant for s in runner.make_subjects(only, tmp_path / "model", art, {}, "cpu")] == ["auto:near"]


def test_subject_spec_round_trip(tmp_path):
    from stedge.bench.subjects import RuntimeVariant, StedgeTorch, STPeer, from_spec

    for s in (
        StedgeTorch("m", str(tmp_path), "cpu", "bf16"),
        RuntimeVariant("m", str(tmp_path), "cuda:1", "onnx-fp16-O4"),
        STPeer("m", str(tmp_path), "cpu", "openvino"),
    ):
        back = from_spec(json.loads(json.dumps(s.spec())))
        assert type(back) is type(s) and back.spec() == s.spec() and back.id == s.id


def test_export_calls_from_variant_names():
    from stedge.bench.build import export_call, plan_calls

    assert export_call("onnx-fp32-O3") == ("onnx", "O3", "none", None)
    assert export_call("onnx-fp16-O4") == ("onnx", "O4", "none", None)
    assert export_call("onnx-int8-avx512_vnni") == ("onnx", None, "int8-dynamic", "avx512_vnni")
    assert export_call("openvino-int4-weights") == ("openvino", None, "int4-weights", None)
    assert export_call("openvino-bf16") == ("openvino", None, "bf16", None)
    calls = plan_calls(
        ["onnx-fp32", "onnx-fp32-O2", "onnx-int8-avx2", "onnx-int8-static", "openvino-fp32", "openvino-int8-static"]
    )
    assert calls == [
        {"backend": "all", "optimize": None, "quantize": "none"},
        {"backend": "onnx", "optimize": "O2", "quantize": "none"},
        {"backend": "onnx", "optimize": None, "quantize": "int8-dynamic", "isa": "avx2"},
        {"backend": "all", "optimize": None, "quantize": "int8-static"},
    ]
    for bad in ("tflite-fp32", "onnx-fp32-static", "onnx-int8-sse", "onnx-bf16"):
        with pytest.raises(StedgeError, match=bad):
            export_call(bad)


# ----------------------------------------------------------------------------- relative figures
def _row(model, label, sps, spearman, peer=False, reference=False):
    return {
        "model": model,
        "label": label,
        "device": "cpu",
        "status": "ok",
        "peer": peer,
        "reference": reference,
        "headline_sentences_per_s": sps,
        "accuracy": {"spearman": spearman},
    }


def test_speedups_and_baseline_model():
    from stedge.bench.runner import ModelEntry, _add_relative

    rows = [
        _row("t", "stedge torch fp32", 100.0, 82.0, reference=True),
        _row("t", "stedge onnx-fp32", 150.0, 82.0),
        _row("t", "st torch", 90.0, 82.0, peer=True),
        _row("t", "st onnx", 120.0, 82.0, peer=True),
        _row("s", "stedge torch fp32", 180.0, 80.0, reference=True),
        _row("s", "stedge onnx-fp32", 300.0, 79.5),
        {"model": "t", "label": "gone", "status": "skipped", "reason": "x"},
    ]
    _add_relative(rows, [ModelEntry(name="t", ref="t"), ModelEntry(name="s", ref="s", baseline_model="t")])
    onnx = rows[1]
    assert onnx["speedup_vs_torch"] == pytest.approx(1.5)
    assert onnx["speedup_vs_best_peer"] == pytest.approx(150 / 120) and onnx["best_peer"] == "st onnx"
    student = rows[5]
    assert student["speedup_vs_baseline_model"] == pytest.approx(2.0)
    assert student["accuracy"]["spearman_delta"] == pytest.approx(-0.5)
    # the student entry has no peers: it is compared with its teacher's best sentence-transformers peer
    assert student["speedup_vs_best_peer"] == pytest.approx(300 / 120) and student["best_peer"] == "st onnx [t]"
    assert "speedup_vs_torch" not in rows[6]


# ----------------------------------------------------------------------------- smoke run
@pytest.fixture(scope="module")
def smoke_results(tiny_model, shared_data, tmp_path_factory):
    """Run the smoke suite on the tiny model through the CLI (stedge bench ... --json)."""
    from typer.testing import CliRunner

    from stedge.bench.runner import SUITES_DIR
    from stedge.cli import app

    root = tmp_path_factory.mktemp("bench")
    text = (SUITES_DIR / "smoke.toml").read_text(encoding="utf-8")
    text = text.replace('ref = "all-MiniLM-L6-v2"', f'ref = "{tiny_model}"\nartifact = "{root / "artifact"}"')
    # A second entry on the same artifact: no torch subject (the parent computes the reference), the
    # artifact is reused from the first entry's export, and speed is compared with the first model.
    text += (
        f'\n[[models]]\nname = "tiny-b"\nref = "{tiny_model}"\nartifact = "{root / "artifact"}"\n'
        'torch = []\nvariants = ["onnx-fp32"]\nauto = []\nbaseline_model = "all-MiniLM-L6-v2"\n'
    )
    suite = _suite_toml(root / "smoke.toml", text)
    out = root / "out"
    res = CliRunner().invoke(app, ["bench", str(suite), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    return printed, out


def test_smoke_artifact_is_verified_on_the_suites_sts_pairs(smoke_results):
    """The harness exports with its accuracy pairs as export's eval set: the tiers the auto subjects choose by
    are the ones `stedge export --eval` gives (Spearman drop, min cos over the eval texts too)."""
    from stedge_runtime.artifact import Manifest

    results, out = smoke_results
    m = Manifest.read(out.parent / "artifact")
    pairs = next(r for r in results["rows"] if r["model"] != "tiny-b")["accuracy"]["pairs"]
    for name, v in m.variants.items():
        assert v.verification is not None and v.verification.spearman is not None, name
        assert v.verification.extra["num_texts"] > 64 + pairs, name  # built-in texts, then the eval texts


def test_a_one_off_suite_file_is_kept_beside_its_results(smoke_results, tmp_path):
    """The run above used a suite file of its own: it lies beside the results as suite.toml; a bundled suite is
    named in results.json and not copied."""
    from stedge.bench import SUITES_DIR
    from stedge.bench.cli import keep_suite_file

    results, out = smoke_results
    kept = (out / "suite.toml").read_text(encoding="utf-8")
    assert (out.parent / "smoke.toml").read_text(encoding="utf-8") == kept
    keep_suite_file(SUITES_DIR / "smoke.toml", tmp_path)
    assert not (tmp_path / "suite.toml").exists()


def test_smoke_run_schema_and_accuracy_beside_speed(smoke_results):
    from stedge.bench.report import validate

    results, out = smoke_results
    validate(results)
    assert json.loads((out / "results.json").read_text()) == results
    rows = [r for r in results["rows"] if r["model"] != "tiny-b"]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"stedge-torch", "runtime", "st", "fastembed"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["accuracy"]["pairs"] == 16 and -100 <= r["accuracy"]["spearman"] <= 100
        assert 0.99 < r["accuracy"]["min_cosine"] <= 1.0 + 1e-6  # fp32 everywhere: the same vectors
        assert set(r["throughput"]) == {"1", "8"}
        for t in r["throughput"].values():
            assert t["sentences_per_s"] > 0 and t["tokens_per_s"] > t["sentences_per_s"] and len(t["seconds"]) == 1
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] and r["latency_ms"]["n"] == 8
        idle = r["latency_after_idle_ms"]  # the same queries, each after the smoke suite's idle_gap_ms
        assert idle["gap_ms"] == 20 and idle["n"] == 8 and 0 < idle["p50"] <= idle["p99"]
        tok = r["tokenize_ms"]  # the subject's tokenizing alone on the same queries: a part of each call
        assert tok["n"] == 8 and 0 < tok["p50"] < r["latency_ms"]["p50"], (r["label"], tok, r["latency_ms"])
        assert r["rounds"] == 2 and len(r["rounds_headline_sentences_per_s"]) == 2  # the suite says rounds = 2
        assert r["headline_sentences_per_s"] == pytest.approx(max(r["rounds_headline_sentences_per_s"]), rel=1e-3)
        assert r["cold_start_s"] > 0 and r["peak_rss_mb"] > 0 and r["size_mb"] > 0 and r["gflops"] > 0
        inter = r["interleaved"]  # the smoke suite's interleave_cycles = 3, interleave_batch_sizes = [1, 8]
        assert inter["cycles"] == 3 and set(inter["throughput"]) == {"1", "8"} and inter["speedup_vs_best_peer"] > 0
        assert all(len(t["seconds"]) == 3 and t["sentences_per_s"] > 0 for t in inter["throughput"].values())
        assert set(inter["passages"]) == {"8"} and len(inter["passages"]["8"]["seconds"]) == 3  # passages too
        assert inter["passage_speedup_vs_best_peer"] > 0 and inter["passage_best_peer"]
        assert inter["speedup_vs_best_peer_ci"] is None  # 3 cycles: too few for a 95 % interval of the median
    ref = next(r for r in rows if r["reference"])
    assert ref["speedup_vs_torch"] == pytest.approx(1.0) and ref["accuracy"]["mean_cosine"] == pytest.approx(
        1.0, abs=1e-6
    )
    assert results["threads"]["budget"] == 1 and results["threads"]["env"]["OMP_NUM_THREADS"] == "1"
    g = results["gemm_peak"]  # measured before the first subject and after the last; the higher of each counts
    assert g["gflops"] > 0 and len(g["measurements"]) == 2
    assert g["gflops"] == max(m["gflops"] for m in g["measurements"])
    from stedge.bench.gemm import peak_for

    for r in rows:  # each share against the run's final peak of the row's precision
        assert r["gemm_share"] == pytest.approx(r["gflops"] / peak_for(g, r.get("precision")))
    assert g["memory_read_gbs"] == max(m["memory_read_gbs"] for m in g["measurements"]) > 0
    from stedge.bench.gemm import weights_mb

    dims = {k: results["models"][0][k] for k in ("hidden", "layers", "intermediate")}
    for r in rows:  # the batch-1 weights at the precision batch-1 calls compute in, read once at that bandwidth
        assert r["weights_mb"] == pytest.approx(weights_mb(dims, r.get("batch1_precision") or r["precision"]))
        assert r["weights_read_ms"] == pytest.approx(r["weights_mb"] / g["memory_read_gbs"])
    assert results["models"][0]["layers"] == 2 and results["models"][0]["hidden"] == 32
    for r in rows:  # passage-length throughput beside short texts, at the headline batch size
        assert set(r["passages"]) == {"8"} and r["headline_passages_per_s"] > 0
        assert r["passages"]["8"]["tokens_per_s"] > r["throughput"]["8"]["tokens_per_s"] / 100
    assert results["models"][0]["mean_tokens_per_passage"] > results["models"][0]["mean_tokens_per_text"]


def test_smoke_run_auto_subject_and_fastembed(smoke_results):
    results, out = smoke_results
    (auto,) = [r for r in results["rows"] if r.get("auto_tier")]
    # batch-1 calls may be routed to the same variant with other settings when tune measured that faster
    assert auto["label"].startswith("stedge auto near (onnx-fp32") and auto["variant"] == "onnx-fp32"
    sel = auto["subject_info"]["selection"]
    assert sel["source"] == "profile" and sel["variant"] == "onnx-fp32"  # the harness tuned the artifact first
    art = Path(sel["profile"])
    assert art.parent.name == "tuning" and art.is_file()
    (fe,) = [r for r in results["rows"] if r["kind"] == "fastembed"]
    assert fe["peer"] and fe["accuracy"]["min_cosine"] > 0.999  # the same graph, its own tokenizer
    assert set(auto["speedup_vs_fastembed"]) == {"1", "8"}
    assert set(auto["interleaved"]["speedup_vs_fastembed"]) == {"1", "8"}
    assert auto["interleaved"]["best_peer"] == fe["best_peer"]
    (st,) = [r for r in results["rows"] if r["kind"] == "st"]  # the only sentence-transformers peer: ratio 1 to itself
    assert st["interleaved"]["speedup_vs_best_peer"] == pytest.approx(1.0)
    assert st["interleaved"]["passage_speedup_vs_best_peer"] == pytest.approx(1.0)
    assert "auto near" in (out / "results.md").read_text()
    assert "on passages in the interleaved phase" in (out / "results.md").read_text()
    from stedge.bench.report import interleaved_share, summary

    # how much of its best-round rate a subject kept with every subject resident: the peer's and ours side by side
    share = interleaved_share(st, "8")
    rate = st["interleaved"]["throughput"]["8"]["sentences_per_s"]
    assert share == pytest.approx(rate / st["headline_sentences_per_s"])
    assert summary(results)[0]["best_peer"]["interleaved_share_of_best_round"] == share
    assert f"kept {100 * share:.0f} % of its best-round rate" in (out / "results.md").read_text()
    assert interleaved_share({"headline_sentences_per_s": 10.0}, "8") is None  # no interleaved phase: no figure


def test_smoke_run_second_model_reuses_artifact_and_compares(smoke_results):
    results, _ = smoke_results
    (b,) = [r for r in results["rows"] if r["model"] == "tiny-b"]
    assert b["status"] == "ok" and b["label"] == "stedge onnx-fp32"
    info = b["subject_info"]  # the token budget per engine call: the profile's, else the CPU's default
    assert info["max_batch_tokens"] == (info["selection"]["max_batch_tokens"] or 1024)
    assert b["accuracy"]["min_cosine"] > 0.99  # against the reference the parent computed
    assert b["speedup_vs_torch"] is None and b["speedup_vs_baseline_model"] > 0
    assert results["models"][1]["reference_spearman"] == results["models"][0]["reference_spearman"]


def test_smoke_run_writes_table_and_plots(smoke_results):
    results, out = smoke_results
    md = (out / "results.md").read_text()
    assert "| model | subject |" in md and "stedge onnx-fp32" in md and results["machine"]["cpu"] in md
    assert "× best peer, interleaved" in md and "ran 3 cycles of one pass each" in md
    assert "| passages × best peer, interleaved |" in md and "and over the passages" in md
    assert "| p50 ms after idle |" in md and "idle 20 ms before each query" in md
    assert "| p50 ms | tokenize p50 ms | weights read ms |" in md
    assert "the share of the p50 that is not the engine" in md
    assert f"- Memory read bandwidth measured in this run: {results['gemm_peak']['memory_read_gbs']:.1f} GB/s" in md
    assert "each figure the higher of 2 measurements, before the first subject and after the last" in md
    pad = results["models"][0]["padding"]  # the smoke suite: headline batch 8, its passages at 8 too
    assert pad["texts"]["batch_size"] == 8 and pad["passages"]["batch_size"] == 8
    shares = " / ".join(f"{100 * pad['texts'][k]:.0f} %" for k in ("tokens", "chars", "order"))
    assert "- Padding: real tokens as a share" in md and f"texts {shares} at batch 8" in md
    auto = next(r for r in results["rows"] if r.get("auto_tier"))
    assert f" | {auto['latency_ms']['p50']:.2f} | {auto['tokenize_ms']['p50']:.3f} | " in md
    auto = next(r for r in results["rows"] if r.get("auto_tier"))
    assert f"(after idle: {auto['latency_after_idle_ms']['p50']:.2f} ms)" in md  # beside its back-to-back p50
    import copy

    from stedge.bench.report import markdown_table

    more = copy.deepcopy(results)  # as from 6 cycles on: each interleaved ratio with its interval in the table
    row = next(r for r in more["rows"] if r.get("auto_tier"))
    inter = row["interleaved"]
    inter.update(speedup_vs_best_peer=1.5, speedup_vs_best_peer_ci=[1.25, 1.75])
    inter.update(passage_speedup_vs_best_peer=1.1, passage_speedup_vs_best_peer_ci=[0.95, 1.3])
    assert " | 1.50 (1.25-1.75) | 1.10 (0.95-1.30) |" in markdown_table(more)
    from stedge.bench.report import summary

    (entry,) = [e for e in summary(results) if e["best_peer"]]  # in the JSON summary too, against the best peer
    best = entry["fastest_fp32_accurate"]
    assert best["p50_after_idle_ratio_vs_best_peer"] == pytest.approx(
        best["p50_after_idle_ms"] / entry["best_peer"]["p50_after_idle_ms"]
    )
    assert md.count("\n| ") >= 1 + len(results["rows"])
    for png in ("speedup_vs_accuracy.png", "throughput_vs_batch.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_schema_rejects_a_row_without_accuracy(smoke_results):
    import copy

    from stedge.bench.report import validate

    results, _ = smoke_results
    broken = copy.deepcopy(results)
    del broken["rows"][1]["accuracy"]
    with pytest.raises(StedgeError, match="rows/1"):
        validate(broken)


def test_results_that_fail_the_check_are_kept(smoke_results, tmp_path, monkeypatch):
    """Minutes of measuring are never lost to the schema check: a failing check (or no jsonschema installed)
    writes results.unchecked.json, names it in the error, and writes no results.json."""
    import copy

    from stedge.bench.report import write_all

    results, _ = smoke_results
    broken = copy.deepcopy(results)
    del broken["rows"][1]["accuracy"]
    with pytest.raises(StedgeError, match="results.unchecked.json"):
        write_all(broken, tmp_path / "a")
    kept = json.loads((tmp_path / "a" / "results.unchecked.json").read_text())
    assert kept["rows"][0] == broken["rows"][0] and not (tmp_path / "a" / "results.json").exists()

    from stedge import errors

    def no_jsonschema(module, extra, purpose=""):
        raise errors.MissingDependency(module, extra, purpose)

    monkeypatch.setattr(errors, "require", no_jsonschema)
    with pytest.raises(StedgeError, match="jsonschema.*\n.*results.unchecked.json"):
        write_all(copy.deepcopy(results), tmp_path / "b")
    assert (tmp_path / "b" / "results.unchecked.json").exists()


def test_a_suite_without_a_torch_subject_writes_no_speedup_plot(smoke_results, tmp_path):
    """The speed-vs-accuracy plot's x axis is the stedge PyTorch fp32 subject: without one it is not drawn, an earlier
    run's is not left beside these results, and write_all does not list it."""
    import copy

    from stedge.bench.report import write_all

    results, _ = smoke_results
    no_torch = copy.deepcopy(results)
    no_torch["rows"] = [r for r in no_torch["rows"] if not r["reference"] and r["kind"] != "stedge-torch"]
    out = tmp_path / "r"
    out.mkdir()
    (out / "speedup_vs_accuracy.png").write_bytes(b"an earlier run's plot")
    files = write_all(no_torch, out)
    assert "speedup_plot" not in files and not (out / "speedup_vs_accuracy.png").exists()
    assert (out / "throughput_vs_batch.png").read_bytes()[:4] == b"\x89PNG" and (out / "results.json").is_file()


def test_cli_unknown_suite_is_a_clear_error():
    from typer.testing import CliRunner

    from stedge.cli import app

    res = CliRunner().invoke(app, ["bench", "no-such-suite"])
    assert res.exit_code != 0 and isinstance(res.exception, StedgeError)
    assert "no-such-suite" in str(res.exception) and "cpu, cpu-rerank, gpu, smoke" in str(res.exception)


# ----------------------------------------------------------------------------- bench-pool
def _pool_run(path: Path, name: str, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"suite": {"name": name, "headline_batch_size": 32}, "rows": rows}))
    return path


def _pool_row(model: str, label: str, secs: list[float], peer: bool = False, **extra) -> dict:
    inter = {"throughput": {"32": {"seconds": secs}}, "passages": {"32": {"seconds": [2 * s for s in secs]}}}
    return {"model": model, "label": label, "device": "cpu", "peer": peer, "interleaved": inter, **extra}


def test_bench_pool_pools_per_cycle_ratios_over_runs(tmp_path):
    """Every cycle of every run is one paired ratio: pooled, they give one median and its interval, the same
    functions as within a run; an auto tier is one subject across runs whatever variant it ran; the baseline is
    the best peer each run named (a student's: its baseline model's), or the peer --against names."""
    from stedge_runtime.tune import median_interval, paired_ratios

    from stedge.bench.pool import pool, pool_table

    peer = [1.0, 1.2, 0.9, 1.1, 1.0, 1.3]
    fast = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    a = [0.5, 0.7, 0.45, 0.5, 0.6, 0.55]
    b = [0.4, 0.6, 0.5, 0.55, 0.5, 0.6, 0.45]  # a cycle more than the peer's: only paired cycles count
    runs = []
    for i, (mine, variant) in enumerate([(a, "openvino-bf16"), (b, "onnx-int8-rows")]):
        rows = [
            _pool_row("m", "st openvino", peer, peer=True),
            _pool_row("m", "fastembed onnx", fast, peer=True),
            _pool_row("m", f"stedge auto near ({variant})", mine, auto_tier="near"),
            _pool_row("s", f"stedge auto compressed ({variant})", mine, auto_tier="compressed", baseline_model="m"),
        ]
        rows[2]["interleaved"].update(best_peer="st openvino", passage_best_peer="st openvino")
        rows[3]["interleaved"].update(best_peer="st openvino [m]", passage_best_peer="st openvino [m]")
        runs.append(_pool_run(tmp_path / f"run{i}", f"suite-{i}", rows))
    pooled = {p["subject"]: p for p in pool(runs)}
    assert set(pooled) == {"m / stedge auto near", "s / stedge auto compressed"}  # peers only with peers=True
    near = pooled["m / stedge auto near"]
    ratios = paired_ratios(a, peer) + paired_ratios(b, peer)
    assert near["cycles"] == 12 and near["median"] == pytest.approx(statistics.median(ratios))
    assert near["ci"] == pytest.approx(list(median_interval(ratios)))
    assert [r["run"] for r in near["runs"]] == ["suite-0", "suite-1"] and near["runs"][1]["cycles"] == 6
    assert near["runs"][0]["label"] == "stedge auto near (openvino-bf16)"
    assert near["runs"][0]["baseline"] == "st openvino"
    assert near["runs"][0]["median"] == pytest.approx(statistics.median(paired_ratios(a, peer)))
    student = pooled["s / stedge auto compressed"]
    assert student["median"] == near["median"] and student["runs"][0]["baseline"] == "st openvino [m]"
    (vs_fast,) = pool(runs, against="fastembed", subject="auto near")
    assert vs_fast["median"] == pytest.approx(statistics.median(paired_ratios(a, fast) + paired_ratios(b, fast)))
    (on_passages,) = pool(runs[:1], passages=True, subject="auto near")
    assert on_passages["median"] == pytest.approx(statistics.median(paired_ratios(a, peer)))  # both doubled
    assert pool(runs, against="no such peer") == [] and pool(runs, batch_size=8) == []
    notes: list[str] = []
    pool(runs, log=notes.append)
    assert notes == []  # one machine (both runs have none recorded) and one thread budget
    results = json.loads((runs[1] / "results.json").read_text())
    results.update(machine={"machine_key": "other-2c-1234", "gpu": None}, threads={"budget": 2})
    (runs[1] / "results.json").write_text(json.dumps(results))
    pool(runs, log=notes.append)
    (note,) = notes
    assert (
        "different machines" in note
        and "suite-0 on unknown machine, ? threads; suite-1 on other-2c-1234, 2 threads" in note
    )
    with pytest.raises(StedgeError, match="--against 'E' names 2 peers of m: st openvino, fastembed onnx"):
        pool(runs, against="E")  # a label part in both, in any case
    table = pool_table([near], line=1.5)
    assert "| m / stedge auto near | st openvino | 2 | 12 |" in table
    verdict = "met with confidence" if near["ci"][0] > 1.5 else "within the interval"
    assert table.rstrip().endswith(f"{verdict} |")


def test_bench_pool_errors_name_the_path(tmp_path):
    from typer.testing import CliRunner

    from stedge.bench.pool import load_run
    from stedge.cli import app

    with pytest.raises(StedgeError, match="no results.json there"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(StedgeError, match="not readable as JSON"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(StedgeError, match="not a results.json of `stedge bench`"):
        load_run(tmp_path / "results.json")
    run = _pool_run(tmp_path / "old", "old", [_pool_row("m", "stedge onnx-fp32", [1.0] * 6)])  # no peer to compare with
    res = CliRunner().invoke(app, ["bench-pool", str(run)])
    assert res.exit_code != 0 and "no subject has interleaved cycles beside its baseline" in str(res.exception)


def test_bench_pool_of_a_real_run(smoke_results):
    """The CLI over the smoke run's folder, given twice: every cycle counts twice, so the pooled median is the
    run's own interleaved ratio to its best peer, and six cycles give an interval."""
    from typer.testing import CliRunner

    from stedge.cli import app

    results, out = smoke_results
    res = CliRunner().invoke(app, ["bench-pool", str(out), str(out), "--subject", "auto near", "--json"])
    assert res.exit_code == 0, res.output
    (near,) = json.loads(res.stdout)
    (auto,) = [r for r in results["rows"] if r.get("auto_tier") == "near" and r["model"] == "all-MiniLM-L6-v2"]
    assert near["subject"] == "all-MiniLM-L6-v2 / stedge auto near" and near["cycles"] == 6
    head = str(results["suite"]["headline_batch_size"])
    assert near["runs"][0]["batch_size"] == int(head)
    assert near["runs"][0]["baseline"] == auto["interleaved"]["best_peer"]
    assert near["median"] == pytest.approx(auto["interleaved"]["speedup_vs_best_peer"]) and near["ci"] is not None


# ----------------------------------------------------------------------------- from a wheel
@pytest.mark.slow
def test_wheel_has_only_stedge_and_bench_runs_outside_the_checkout(tiny_model, shared_data, tmp_path):
    """`pip wheel .` ships only the stedge package (suites inside); the smoke suite runs from it elsewhere."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(root)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (whl,) = wheels.glob("stedge-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("stedge-")} == {"stedge"}
    assert "stedge/bench/suites/smoke.toml" in names and not any(n.startswith("benchmarks") for n in names)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(root / "runtimes" / "python"),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (rt,) = wheels.glob("stedge_runtime-*.whl")
    rt_names = zipfile.ZipFile(rt).namelist()
    assert {n.split("/")[0] for n in rt_names if ".dist-info" not in n} == {"stedge_runtime"}
    entry_points = next(n for n in rt_names if n.endswith(".dist-info/entry_points.txt"))
    assert "stedge-runtime = stedge_runtime.cli:main" in zipfile.ZipFile(rt).read(entry_points).decode()  # its CLI
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    suite = (site / "stedge/bench/suites/smoke.toml").read_text(encoding="utf-8")
    suite = suite.replace('ref = "all-MiniLM-L6-v2"', f'ref = "{tiny_model}"').replace(
        "num_texts = 24", "num_texts = 8"
    )
    suite = suite.replace('peers = ["torch", "fastembed"]', "peers = []")
    (work / "mine.toml").write_text(suite, encoding="utf-8")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(site), str(root / "runtimes" / "python")]),
        STEDGE_DATA_DIR=str(shared_data),
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import stedge.bench, sys; print(stedge.bench.__file__)"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip().startswith(str(site))
    proc = subprocess.run(
        [sys.executable, "-m", "stedge.cli", "bench", "mine.toml", "--json"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert all(r["status"] == "ok" for r in results["rows"]), results["rows"]
    from stedge_runtime.machine import cpu_slug

    assert (work / "stedge-bench" / cpu_slug() / "smoke" / "results.json").is_file()  # one folder per CPU
    assert any(r.get("auto_tier") == "near" for r in results["rows"])  # tuned from the wheel, then measured


# ----------------------------------------------------------------------------- peers in another interpreter
def _peer_suite(root: Path, tiny_model: Path, peers: str = '["torch"]') -> Path:
    """A smoke suite on the tiny model with only sentence-transformers peers (the parent computes the reference)."""
    from stedge.bench.runner import SUITES_DIR

    text = (SUITES_DIR / "smoke.toml").read_text(encoding="utf-8")
    text = text.replace('ref = "all-MiniLM-L6-v2"', f'ref = "{tiny_model}"').replace('torch = ["fp32"]', "torch = []")
    text = text.replace('variants = ["onnx-fp32"]', "variants = []").replace('auto = ["near"]', "auto = []")
    text = text.replace('peers = ["torch", "fastembed"]', f"peers = {peers}")
    return _suite_toml(root / "peers.toml", text)


def test_peer_python_smoke_run_records_the_interpreter(tiny_model, shared_data, tmp_path, monkeypatch):
    """--peer-python at this very interpreter: the peer is probed, runs there, and its row names the stack."""
    import importlib.metadata
    import sys

    from typer.testing import CliRunner

    from stedge.bench import runner
    from stedge.cli import app

    monkeypatch.delenv("STEDGE_BENCH_PEER_PYTHON", raising=False)
    # the GEMM peak (seconds of matmuls) plays no part here; the smoke run above measures it
    monkeypatch.setattr(
        runner, "measure_gemm", lambda threads, device, env: {"gflops": 1.0, "threads": threads, "device": device}
    )
    suite = _peer_suite(tmp_path, tiny_model)
    res = CliRunner().invoke(
        app, ["bench", str(suite), "--out", str(tmp_path / "out"), "--json", "--peer-python", sys.executable]
    )
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)
    (row,) = results["rows"]
    assert row["status"] == "ok" and row["kind"] == "st", row
    assert row["python"] == os.path.abspath(sys.executable) and results["suite"]["peer_python"] == row["python"]
    st = importlib.metadata.version("sentence-transformers")
    assert row["peer_versions"]["sentence-transformers"] == st and row["peer_versions"]["transformers"]
    assert row["label"] == f"sentence-transformers {'.'.join(st.split('.')[:2])} torch"
    assert row["accuracy"]["min_cosine"] > 0.99  # the same model as the reference, in another process


def test_peer_python_bad_path_is_one_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stedge.bench.peer import resolve_peer_python
    from stedge.cli import app

    monkeypatch.delenv("STEDGE_BENCH_PEER_PYTHON", raising=False)
    missing = tmp_path / "no-venv" / "bin" / "python"
    res = CliRunner().invoke(app, ["bench", "smoke", "--peer-python", str(missing)])
    assert res.exit_code != 0 and isinstance(res.exception, StedgeError)
    assert str(missing) in str(res.exception) and "--peer-python" in str(res.exception)
    plain = tmp_path / "python"
    plain.write_text("not a program")
    with pytest.raises(StedgeError, match="not executable"):
        resolve_peer_python(plain, None)
    # CLI wins, then the environment, then the suite; relative paths resolve against the working directory
    plain.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    assert resolve_peer_python(None, "python") == str(plain)
    monkeypatch.setenv("STEDGE_BENCH_PEER_PYTHON", str(missing))
    with pytest.raises(StedgeError, match="STEDGE_BENCH_PEER_PYTHON"):
        resolve_peer_python(None, "python")
    assert resolve_peer_python("./python", None) == str(plain)
    monkeypatch.delenv("STEDGE_BENCH_PEER_PYTHON")
    assert resolve_peer_python(None, None) is None


def test_peer_probe_failure_skips_the_subject_with_the_reason(tmp_path):
    """A peer interpreter that fails, or lacks sentence-transformers, makes its subjects skipped rows saying why."""
    import subprocess
    import sys

    from stedge.bench import runner
    from stedge.bench.subjects import STPeer

    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'cannot start: libpython missing' >&2\nexit 3\n")
    broken.chmod(0o755)
    why = STPeer("m", str(tmp_path), "cpu", "openvino", python=str(broken)).unavailable()
    assert "exit 3" in why and "libpython missing" in why and str(broken) in why
    bare = tmp_path / "bare"  # a real interpreter without sentence-transformers
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, capture_output=True)
    sub = STPeer("m", str(tmp_path), "cpu", "torch", python=str(bare / "bin" / "python"))
    plan = (runner.ModelEntry(name="m", ref="m"), *([None] * 7))
    row, emb = runner._measure(sub, plan, None, None, {}, {}, tmp_path / "w", None, None, lambda m: None)
    assert emb is None and row["status"] == "skipped" and row["python"] == sub.python
    assert "import sentence_transformers failed" in row["reason"] and str(bare) in row["reason"]
    assert row["label"] == "sentence-transformers torch"  # no version to claim


def test_peer_export_runs_in_the_peer_interpreter(tiny_model, tmp_path, monkeypatch):
    """prepare_peer exports through `python -m stedge.bench.peer_export` in the peer interpreter, into atomic_dir's
    temporary folder: a failed export leaves no cache folder, a good one is reused while nothing changed."""
    import sys

    from stedge.bench.runner import prepare_peer

    calls = tmp_path / "calls.log"
    fake = tmp_path / "python"  # answers the probe, and "exports" unless FAIL is set (after writing half a graph)
    fake.write_text(f"""#!{sys.executable}
import json, os, sys
if sys.argv[1] == "-c":
    print(json.dumps({{"missing": None, "stedge": True, "cuda": False, "python_version": "3",
                      "versions": {{"sentence-transformers": "5.7.0"}}}}))
    sys.exit(0)
open({str(calls)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
assert sys.argv[1:3] == ["-m", "stedge.bench.peer_export"] and sys.argv[4] == "onnx"
os.makedirs(os.path.join(sys.argv[5], "onnx"))
open(os.path.join(sys.argv[5], "onnx", "model.onnx"), "w").write("graph")
sys.exit(4 if os.environ.get("FAIL") else 0)
""")
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(StedgeError, match="exit 4"):
        prepare_peer(tiny_model, "onnx", cache, "tiny", lambda m: None, str(fake))
    monkeypatch.delenv("FAIL")
    assert not (cache / "tiny-st-onnx").exists()
    out = prepare_peer(tiny_model, "onnx", cache, "tiny", lambda m: None, str(fake))
    assert (out / "onnx" / "model.onnx").read_text() == "graph" and str(tiny_model) in calls.read_text()
    assert prepare_peer(tiny_model, "onnx", cache, "tiny", lambda m: None, str(fake)) == out
    assert len(calls.read_text().splitlines()) == 2  # the second call reused the cache


def test_a_failed_tunes_native_crash_is_quoted_from_the_thread_that_crashed():
    """faulthandler prints every thread's stack, the crashing one marked "Current thread": the harness's warning keeps
    the fatal line and that thread's innermost frames, not the other threads' tail; other errors keep their end."""
    from stedge.bench.runner import crash_excerpt

    crash = "\n".join(
        [
            "Fatal Python error: Aborted",
            "",
            "Thread 0x00007f (most recent call first):",
            *[f'  File "/x/other.py", line {i} in frame{i}' for i in range(60)],
            "",
            "Current thread 0x00008a (most recent call first):",
            '  File "/x/stedge_runtime/engines.py", line 190 in run',
            '  File "/x/stedge_runtime/tune.py", line 230 in batch1',
            "",
            "Extension modules: numpy._core._multiarray_umath (total: 1)",
        ]
    )
    got = crash_excerpt(crash)
    assert got.startswith('Fatal Python error: Aborted | File "/x/stedge_runtime/engines.py", line 190 in run')
    assert "frame59" not in got and len(got) <= 800
    assert crash_excerpt("Traceback ...\n" + "x" * 2000 + "\nValueError: bad").endswith("ValueError: bad")
