"""Export stage on tiny random models: graphs match torch for every pooling mode, Dense, prompts,
cross-encoders, LoRA adapters; the artifact loads in sentence-transformers; bad input fails cleanly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from tiny import make_tiny_bert
from typer.testing import CliRunner

TEXTS = [
    "A man is playing a guitar.",
    "The quarterly report shows revenue grew by 12%.",
    "ok",
    "Le chat dort sur le canapé.",
]


def _graph_vs_torch(model_dir: Path, tmp: Path, prompt: str | None = None) -> float:
    from stedge.export.onnx_graph import export_onnx, graph_io
    from stedge.export.verify import Runner, graph_embed
    from stedge.models import SentenceEncoder

    model = SentenceEncoder(model_dir, device="cpu")
    spec = export_onnx(model, "embedding", tmp / "m.onnx")
    assert graph_io(tmp / "m.onnx") == (spec.inputs, ["sentence_embedding", "last_hidden_state"])
    got = graph_embed(model, Runner("onnx", tmp / "m.onnx"), TEXTS, batch_size=3)
    ref = model.encode(TEXTS, batch_size=3)
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max())


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_every_pooling_mode_in_graph_matches_torch(pooling, tmp_path):
    model = make_tiny_bert(tmp_path / "model", pooling=pooling, normalize=pooling == "mean")
    assert _graph_vs_torch(model, tmp_path) < 1e-5


def test_dense_and_prompt_length_input(tmp_path):
    from stedge.export.onnx_graph import graph_io

    model = make_tiny_bert(
        tmp_path / "model", dense=16, include_prompt=False, prompts={"query": "query: "}, default_prompt_name="query"
    )
    assert _graph_vs_torch(model, tmp_path) < 1e-5
    inputs, _ = graph_io(tmp_path / "m.onnx")
    assert "prompt_length" in inputs


def test_openvino_variants_of_a_prompt_length_graph(tmp_path):
    """OpenVINO's converter names the prompt_length input after the Cast that reads it too; the runtime took that
    name and refused the graph ("unknown inputs ['/encoder/encoder.1/Cast_output_0']"), so such a model could not
    be exported to OpenVINO. Each input of the IR now has its contract name alone."""
    import openvino as ov
    from stedge_runtime import Encoder

    from stedge.export import export_model

    model = make_tiny_bert(
        tmp_path / "model", include_prompt=False, prompts={"query": "query: "}, default_prompt_name="query"
    )
    art = export_model(str(model), tmp_path / "art", backend="all", quantize="int8")
    xmls = sorted((art.path / "openvino").glob("*.xml"))
    assert len(xmls) >= 2  # fp32 and static int8
    for xml in xmls:
        names = [p.get_names() for p in ov.Core().read_model(str(xml)).inputs]
        assert {"prompt_length"} in names and all(len(n) == 1 for n in names), (xml.name, names)
    ov_variants = [n for n, v in art.manifest["variants"].items() if v["backend"] == "openvino"]
    ref = Encoder.load(art.path, variant="onnx-fp32").encode(["a query", "another one"], prompt_name="query")
    for name in ov_variants:
        got = Encoder.load(art.path, variant=name).encode(["a query", "another one"], prompt_name="query")
        assert float((got * ref).sum(1).min()) >= 0.99, name


def test_token_type_ids_only_when_used(tmp_path):
    from transformers import BertConfig

    from stedge.export.onnx_graph import export_onnx
    from stedge.models import SentenceEncoder

    path = make_tiny_bert(tmp_path / "model")
    cfg = BertConfig.from_pretrained(path)
    cfg.type_vocab_size = 1
    # a single-type model ignores token types: the graph must not ask for them
    from safetensors.torch import load_file, save_file

    state = load_file(str(path / "model.safetensors"))
    key = next(k for k in state if "token_type_embeddings" in k)
    state[key] = state[key][:1].contiguous()
    save_file(state, str(path / "model.safetensors"))
    cfg.save_pretrained(path)
    spec = export_onnx(SentenceEncoder(path, device="cpu"), "embedding", tmp_path / "m.onnx")
    assert spec.inputs == ["input_ids", "attention_mask"]


@pytest.fixture(scope="module")
def tiny_artifact(tiny_model, tmp_path_factory):
    """The tiny model exported to ONNX and OpenVINO fp32 plus dynamic int8 (every ISA), then OpenVINO int8
    weights added."""
    from stedge.export import export_model

    out = tmp_path_factory.mktemp("art") / "tiny-stedge"
    export_model(str(tiny_model), out, backend="all", quantize="int8-dynamic", isa="all")
    return export_model(str(tiny_model), out, backend="openvino", quantize="int8-weights", add=True)


def test_artifact_manifest_and_files(tiny_artifact, tiny_model):
    from stedge_runtime.artifact import Manifest

    from stedge.io import sha256_file

    m = Manifest.read(tiny_artifact.path).to_dict()
    assert set(m["variants"]) == {
        "onnx-fp32",
        "onnx-int8-avx2",
        "onnx-int8-avx512",
        "onnx-int8-avx512_vnni",
        "onnx-int8-arm64",
        "openvino-fp32",
        "openvino-int8-weights",
    }
    assert m["task"] == "embedding" and m["dimension"] == 32 and m["normalize"] is True
    assert m["pooling"] == {"mode": "mean", "include_prompt": True} and m["max_seq_length"] == 64
    assert m["default_variant"] == "openvino-int8-weights"  # what the last export asked for
    for name, v in m["variants"].items():
        ver = v["verification"]
        assert ver["passed"] and ver["tier"] in ("exact", "near", "compressed"), name
        assert ver["batch_invariance_min_cos"] > 0.999 and ver["runtime"].startswith("stedge_runtime"), name
        assert v["outputs"] == ["sentence_embedding", "last_hidden_state"]
        hashes = v["sha256"] if isinstance(v["sha256"], dict) else {v["file"]: v["sha256"]}
        for rel, h in hashes.items():
            assert sha256_file(tiny_artifact.path / rel) == h
    assert m["variants"]["onnx-fp32"]["verification"]["min_cosine"] > 0.99999
    assert m["variants"]["openvino-fp32"]["verification"]["min_cosine"] > 0.99999
    assert (tiny_artifact.path / "openvino" / "openvino_model.xml").is_file()
    assert (tiny_artifact.path / "tokenizer.json").is_file() and (tiny_artifact.path / "modules.json").is_file()
    assert not any(p.name.startswith(".") for p in tiny_artifact.path.rglob("*"))


@pytest.mark.compat
def test_sentence_transformers_loads_the_artifact(tiny_artifact, tiny_model):
    """sentence-transformers 5 runs the artifact through its ONNX and OpenVINO backends (the compatibility line)."""
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(tiny_model), device="cpu").encode(TEXTS)
    for backend, file in [
        ("onnx", "onnx/model.onnx"),
        ("openvino", "openvino/openvino_model.xml"),
        ("onnx", "onnx/model_qint8_avx512_vnni.onnx"),
    ]:
        st = SentenceTransformer(
            str(tiny_artifact.path), backend=backend, model_kwargs={"file_name": file}, device="cpu"
        )
        got = st.encode(TEXTS)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > (0.99999 if "qint8" not in file else 0.99), (backend, file, cos)


_HEAVY = ("torch", "transformers", "sentence_transformers", "datasets", "scipy", "safetensors", "huggingface_hub")
_RUN_CLI = """
import json, sys
from stedge.cli import main
watch = set(json.loads(sys.argv[2]))
sys.argv = ["stedge"] + json.loads(sys.argv[1])
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & watch)
print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
"""


def _cli_modules(*args: str) -> tuple[str, list[str]]:
    """Run the stedge CLI in a fresh interpreter; its stdout and the heavy packages it imported."""
    import os
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, json.dumps(list(args)), json.dumps(_HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(r.stderr.rsplit("HEAVY=", 1)[1])


def test_cli_on_an_artifact_imports_neither_torch_nor_transformers(
    tiny_artifact, tiny_model, tiny_cross_encoder, tmp_path
):
    """embed / rank / info on an artifact run on the torch-free runtime and start as fast as it does."""
    from stedge.export import export_model

    reranker = export_model(str(tiny_cross_encoder), tmp_path / "ce", backend="onnx").path
    out, heavy = _cli_modules("embed", str(tiny_artifact.path), "hello", "world", "--json")
    assert heavy == [] and len(json.loads(out)["embeddings"]) == 2
    out, heavy = _cli_modules("rank", str(reranker), "what is a cat", "A cat.", "Stocks.", "--json")
    assert heavy == [] and sorted(r["corpus_id"] for r in json.loads(out)) == [0, 1]
    out, heavy = _cli_modules("info", str(tiny_artifact.path), "--json")
    assert heavy == [] and json.loads(out)["dimension"] == 32
    _, heavy = _cli_modules("info", str(tiny_model), "--json")  # a torch model folder does load torch
    assert "torch" in heavy


def test_add_keeps_variants_and_refuses_other_models(tiny_artifact, tiny_model, tmp_path):
    import shutil

    from stedge.errors import StedgeError
    from stedge.export import export_model

    out = tmp_path / "copy"
    shutil.copytree(tiny_artifact.path, out)
    res = export_model(str(tiny_model), out, optimize="O2", add=True)
    assert {"onnx-int8-arm64", "openvino-fp32", "onnx-fp32-O2"} <= set(res.manifest["variants"])
    assert res.manifest["default_variant"] == "onnx-fp32-O2"
    kept = [r for r in res.rows if not r["new"]]
    assert {r["variant"] for r in kept} >= {"openvino-fp32", "onnx-int8-arm64"}
    other = make_tiny_bert(tmp_path / "other", seed=3)
    with pytest.raises(StedgeError, match="another model"):
        export_model(str(other), out, add=True)


def test_add_keeps_the_ir_the_bf16_variant_shares(tiny_model, tmp_path):
    """openvino-bf16 runs the fp32 IR's own files. An --add that took OpenVINO again converted that IR anew, and a
    new conversion is not byte-identical (OpenVINO numbers node names per process): openvino-bf16's sha256 no
    longer matched and the runtime refused to load it. Now the IR it shares stays and is verified again as fp32;
    an artifact whose kept variant's files changed anyway is refused with nothing written."""
    from stedge.errors import StedgeError
    from stedge.export import export_model
    from stedge.io import sha256_file

    def stale(root):
        variants = json.loads((root / "stedge.json").read_text())["variants"]
        out = []
        for name, v in variants.items():
            d = {v["file"]: v["sha256"]} if isinstance(v["sha256"], str) else v["sha256"]
            out += [name for rel, h in d.items() if sha256_file(root / rel) != h]
        return out

    art = tmp_path / "art"
    export_model(str(tiny_model), art, backend="openvino", quantize="bf16", show_progress=False)
    ir = art / "openvino" / "openvino_model.xml"
    before = ir.read_bytes()
    res = export_model(str(tiny_model), art, backend="all", quantize="int8", add=True, show_progress=False)
    assert {"openvino-bf16", "openvino-fp32", "openvino-int8-static"} <= set(res.manifest["variants"])
    assert ir.read_bytes() == before and stale(art) == []
    ir.write_bytes(before.replace(b"opset1", b"opset1 ", 1))  # a kept variant's file changed after export
    manifest = (art / "stedge.json").read_bytes()
    with pytest.raises(StedgeError, match="openvino-bf16, openvino-fp32 no longer match their records"):
        export_model(str(tiny_model), art, backend="onnx", optimize="O1", add=True, show_progress=False)
    assert (art / "stedge.json").read_bytes() == manifest and not (art / "onnx" / "model_O1.onnx").exists()
    export_model(str(tiny_model), art, backend="openvino", quantize="bf16", add=True, show_progress=False)
    assert stale(art) == []  # naming them again rebuilds them


def test_cross_encoder_export(tiny_cross_encoder, tmp_path):
    from stedge.export import export_model
    from stedge.export.verify import Runner, graph_scores
    from stedge.models import CrossEncoder

    res = export_model(str(tiny_cross_encoder), tmp_path / "ce", backend="all")
    m = res.manifest
    assert m["task"] == "reranking" and m["num_labels"] == 1 and m["activation"] == "sigmoid"
    assert m["variants"]["onnx-fp32"]["outputs"] == ["logits", "scores"]
    ce = CrossEncoder(tiny_cross_encoder, device="cpu")
    pairs = [("what is stedge", "stedge exports rerankers"), ("a", "b c d e f g")]
    for v in ("onnx-fp32", "openvino-fp32"):
        e = m["variants"][v]
        got = graph_scores(ce, Runner(e["backend"], res.path / e["file"]), pairs)
        assert np.abs(got - ce.predict(pairs)).max() < 1e-5
        assert e["verification"]["passed"] and e["verification"]["agreement"] == "score"
    _old_reranker_verifications_are_noted(res.path)


def _old_reranker_verifications_are_noted(art) -> None:
    """`stedge info` on a reranker: its variants' lines say min_agr (score agreement); variants verified before
    it (no `agreement` in their record: the cosine of the score vectors) get a note to export again."""
    from stedge.cli import app

    info = CliRunner().invoke(app, ["info", str(art)])
    assert info.exit_code == 0 and "min_agr=" in info.stdout and "older stedge" not in info.stderr
    mf = art / "stedge.json"
    data = json.loads(mf.read_text())
    del data["variants"]["onnx-fp32"]["verification"]["agreement"]
    mf.write_text(json.dumps(data))
    info = CliRunner().invoke(app, ["info", str(art)])
    assert info.exit_code == 0 and "note: onnx-fp32: verified by an older stedge" in info.stderr


def test_lora_adapter_is_merged_before_export(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig

    from stedge.export import export_model
    from stedge.export.verify import Runner, graph_embed
    from stedge.models import SentenceEncoder
    from stedge.models.adapters import merge_adapter

    enc = SentenceEncoder(tiny_model, device="cpu")
    enc.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    enc.save(adapter)
    res = export_model(str(adapter), tmp_path / "out")
    assert res.manifest["source"]["adapter"]
    merged = merge_adapter(adapter, device="cpu")
    got = graph_embed(merged, Runner("onnx", res.path / "onnx" / "model.onnx"), TEXTS)
    base = SentenceEncoder(tiny_model, device="cpu").encode(TEXTS)
    assert np.abs(got - merged.encode(TEXTS)).max() < 1e-5
    assert np.abs(got - base).max() > 1e-3  # the adapter changed the model


def test_failed_max_drop_leaves_nothing(tiny_model, tmp_path):
    from stedge.cli import app

    out = tmp_path / "fail"
    r = CliRunner().invoke(
        app, ["export", str(tiny_model), "-o", str(out), "--quantize", "int8", "--max-drop", "1e-9", "--json"]
    )
    from stedge.errors import CheckFailedError

    assert isinstance(r.exception, CheckFailedError) and r.exception.exit_code == 1, r.output
    assert "exceeds --max-drop" in str(r.exception) and "nothing was written" in str(r.exception)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_quantize_auto_builds_the_plan_for_this_cpu_and_the_runtime_picks_from_it(tiny_model, tmp_path):
    """`stedge export --quantize auto` (no --backend): the variants make_plan gives for this CPU's flags, OpenVINO's
    included where it is installed, every one verified with a tier; Encoder.load's rule picks one of them."""
    import importlib.util

    from stedge_runtime import Encoder

    from stedge.cli import app
    from stedge.export.plan import ExportOptions, check_options, make_plan, resolve_backend
    from stedge.export.quantize import cpu_flags

    out = tmp_path / "auto"
    r = CliRunner().invoke(app, ["export", str(tiny_model), "-o", str(out), "--quantize", "auto", "--json"])
    assert r.exit_code == 0, r.output
    built = json.loads(r.stdout)["variants"]
    backend = resolve_backend(None, "auto")
    assert backend == ("all" if importlib.util.find_spec("openvino") else "onnx")
    plan = make_plan(check_options(ExportOptions(backend=backend, quantize="auto")), cpu_flags())
    assert [v["variant"] for v in built] == [v.name for v in plan.variants]
    assert all(v["tier"] for v in built), built
    near = Encoder.load(out, tier="near", profile=False)
    assert near.selection.variant in plan.names and near.selection.source == "rule"


def test_pack_adds_a_variant_for_cpus_without_bf16(tiny_model, tmp_path, monkeypatch):
    """An artifact whose choice here is openvino-bf16 (this CPU made to look like AMX) packs, by default, also what
    Encoder.load picks on an AVX2-class CPU, so the app runs there; --no-portable and --variant pack only what they
    name. The packed artifact loads on both kinds of CPU."""
    import stedge_runtime.machine as machine
    from stedge_runtime import Encoder
    from stedge_runtime.select import select_variant

    from stedge.cli import app
    from stedge.export import quantize
    from stedge.export.pack import PORTABLE_FLAGS

    amx = {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
    for mod in (machine, quantize):
        monkeypatch.setattr(mod, "cpu_flags", lambda: set(amx))
    art = tmp_path / "art[v2]"  # brackets in a path: text to rich, which would read [v2] as a style tag
    r = CliRunner().invoke(app, ["export", str(tiny_model), "-o", str(art), "--backend", "all", "--quantize", "auto"])
    assert r.exit_code == 0 and str(art) in r.stdout, r.output  # the table's title names the folder as it is
    variants = json.loads((art / "stedge.json").read_text())["variants"]
    plain_pick = select_variant(variants, "cpu", installed={"onnx", "openvino"}, tier="near", flags=set(PORTABLE_FLAGS))
    plain_pick = plain_pick.variant
    assert plain_pick != "openvino-bf16"
    r = CliRunner().invoke(app, ["pack", str(art), "-o", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["variants"] == ["openvino-bf16", plain_pick], res
    assert f"{plain_pick} added for CPUs without amx_bf16 or avx512_bf16" in res["notes"][0]
    assert Encoder.load(tmp_path / "p", tier="near").selection.variant == "openvino-bf16"
    for args, want in ((["--no-portable"], ["openvino-bf16"]), (["--variant", "openvino-bf16"], ["openvino-bf16"])):
        r = CliRunner().invoke(app, ["pack", str(art), "-o", str(tmp_path / "q"), "--overwrite", "--json", *args])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["variants"] == want
    monkeypatch.setattr(machine, "cpu_flags", lambda: set(PORTABLE_FLAGS))
    elsewhere = Encoder.load(tmp_path / "p", tier="near")
    assert elsewhere.selection.variant == plain_pick and elsewhere.encode(["a query"]).shape == (1, elsewhere.dimension)


def test_pack_for_the_devices_an_app_runs_on(tiny_model, tmp_path):
    """`stedge pack --device cpu --device npu` packs what Encoder.load picks on each (the NPU by its rule, which
    takes OpenVINO variants only); `--device npu` alone packs the NPU's pick; a device the runtime does not know
    is refused."""
    from stedge_runtime import Encoder
    from stedge_runtime.tune import best_choices

    from stedge.cli import app

    art = tmp_path / "art"
    r = CliRunner().invoke(app, ["export", str(tiny_model), "-o", str(art), "--backend", "all"])
    assert r.exit_code == 0, r.output
    cpu_pick = Encoder.load(art).variant
    npu_pick = best_choices(art, ("near",), device="npu")["near"]["variant"]
    assert cpu_pick.startswith("onnx-") and npu_pick.startswith("openvino-")
    r = CliRunner().invoke(
        app, ["pack", str(art), "-o", str(tmp_path / "p"), "--device", "cpu", "--device", "npu", "--json"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (
        res["variants"] == [cpu_pick, npu_pick]
        and f"{npu_pick}: what Encoder.load picks at tier near on npu" in res["notes"]
    )
    assert Encoder.load(tmp_path / "p").variant == cpu_pick
    r = CliRunner().invoke(app, ["pack", str(art), "-o", str(tmp_path / "q"), "--device", "npu", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["variants"] == [npu_pick], r.output
    r = CliRunner().invoke(app, ["pack", str(art), "-o", str(tmp_path / "r"), "--device", "tpu"])
    assert r.exit_code != 0 and not (tmp_path / "r").exists()


def test_path_traversal_external_data_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from stedge.errors import StedgeError
    from stedge.export.onnx_graph import check_external_data
    from stedge.export.verify import Runner

    art = tmp_path / "art"
    (art / "onnx").mkdir(parents=True)
    (tmp_path / "secret.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    for loc in ("../../secret.bin", str(tmp_path / "secret.bin")):
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", loc), ("offset", "0"), ("length", "16")):
            e = w.external_data.add()
            e.key, e.value = k, v
        node = helper.make_node("Add", ["x", "w"], ["y"])
        g = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
            initializer=[w],
        )
        onnx.save_model(helper.make_model(g), str(art / "onnx" / "model.onnx"))
        with pytest.raises(StedgeError, match="outside the artifact folder"):
            check_external_data(art / "onnx" / "model.onnx", art)
        with pytest.raises(StedgeError, match="outside the artifact folder"):
            Runner("onnx", art / "onnx" / "model.onnx", root=art)


def test_large_models_use_external_data_inside_the_folder(tmp_path, monkeypatch):
    import onnx

    from stedge.export import onnx_graph as ox

    model = make_tiny_bert(tmp_path / "model")
    from stedge.models import SentenceEncoder

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1000)  # pretend the tiny graph is over the threshold
    ox.export_onnx(SentenceEncoder(model, device="cpu"), "embedding", tmp_path / "art" / "onnx" / "model.onnx")
    files = ox.check_external_data(tmp_path / "art" / "onnx" / "model.onnx", tmp_path / "art")
    assert [f.name for f in files] == ["model.onnx_data"]
    assert onnx.load(str(tmp_path / "art" / "onnx" / "model.onnx")).graph.initializer


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_o2_o3_fuse_attention_and_match_torch(level, tiny_model, tmp_path):
    """Export traces eager attention (transformers 5 defaults to SDPA), so onnxruntime fuses Attention again."""
    from stedge.data import pairwise_cosine
    from stedge.export.onnx_graph import export_onnx
    from stedge.export.optimize import optimize
    from stedge.export.verify import Runner, graph_embed
    from stedge.models import SentenceEncoder

    model = SentenceEncoder(tiny_model, device="cpu")
    auto = model.transformer.auto_model
    before = auto.config._attn_implementation
    export_onnx(model, "embedding", tmp_path / "model.onnx")
    assert auto.config._attn_implementation == before  # the model keeps the attention it had
    info = optimize(tmp_path / "model.onnx", tmp_path / f"model_{level}.onnx", level, auto.config)
    assert info["fused_operators"].get("Attention") == auto.config.num_hidden_layers, info["fused_operators"]
    assert info["fused_operators"].get("SkipLayerNormalization", 0) >= auto.config.num_hidden_layers
    cos = pairwise_cosine(
        graph_embed(model, Runner("onnx", tmp_path / f"model_{level}.onnx"), TEXTS), model.encode(TEXTS)
    )
    assert cos.min() >= 0.9999, cos


@pytest.mark.parametrize(
    "version,refused",
    [
        ("4.57.6", False),
        ("5.3.0", False),
        ("5.4.0", True),
        ("5.6.2", True),
        ("5.8.1", True),
        ("5.9.0", False),
        ("5.24.0", False),
        ("5.10.0rc1", False),
    ],
)
def test_transformers_that_cannot_trace_are_refused(version, refused):
    from stedge.errors import StedgeError
    from stedge.export.onnx_graph import check_traceable

    if refused:
        with pytest.raises(StedgeError, match=r"cannot trace.*transformers>=5\.9"):
            check_traceable(version)
    else:
        check_traceable(version)


@pytest.mark.parametrize(
    "quantize,graphs",
    [
        ("int8-dynamic", ["model_qint8_avx2.onnx"]),
        ("int8", ["model_qint8_static.onnx", "model_qint8_rows.onnx"]),
        ("int8-rows", ["model_qint8_rows.onnx"]),
    ],
)
def test_every_graph_uses_one_external_data_name(quantize, graphs, tiny_model, tmp_path, monkeypatch):
    """int8 graphs (onnxruntime.quantization writes <file>.data) end up named like the rest: <file>_data."""
    from stedge.export import export_model
    from stedge.export import onnx_graph as ox

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1000)  # every tiny graph is "large"
    res = export_model(str(tiny_model), tmp_path / "art", backend="onnx", quantize=quantize, isa="avx2")
    onnx_files = sorted(p.name for p in (tmp_path / "art" / "onnx").iterdir())
    expected = ["model.onnx", "model.onnx_data"] + [f for g in graphs for f in (g, g + "_data")]
    assert onnx_files == sorted(expected)
    for name, v in res.manifest["variants"].items():
        assert sorted(v["sha256"]) == [v["file"], v["file"] + "_data"], name
        assert ox.external_data_files(tmp_path / "art" / v["file"]) == [Path(v["file"]).name + "_data"]


def test_artifacts_with_dot_data_external_files_still_load(tiny_model, tmp_path, monkeypatch):
    """Artifacts written before the one naming keep <file>.onnx.data: the runtime and verification read them."""
    import onnx
    from stedge_runtime import Encoder

    from stedge.export import export_model
    from stedge.export import onnx_graph as ox
    from stedge.io import sha256_file

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 1000)
    art = tmp_path / "art"
    export_model(str(tiny_model), art, backend="onnx")
    ref = Encoder.load(art).encode(TEXTS)
    graph = art / "onnx" / "model.onnx"
    proto = onnx.load(str(graph), load_external_data=True)
    (art / "onnx" / "model.onnx_data").unlink()
    onnx.save_model(
        proto,
        str(graph),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    manifest = json.loads((art / "stedge.json").read_text())
    manifest["variants"]["onnx-fp32"]["sha256"] = {
        rel: sha256_file(art / rel) for rel in ("onnx/model.onnx", "onnx/model.onnx.data")
    }
    (art / "stedge.json").write_text(json.dumps(manifest))
    assert [f.name for f in ox.check_external_data(graph, art)] == ["model.onnx.data"]
    np.testing.assert_allclose(Encoder.load(art, verify=True).encode(TEXTS), ref, atol=1e-6)


@pytest.fixture()
def cli():
    from stedge.cli import app

    def run(*args):
        r = CliRunner().invoke(app, ["export", *map(str, args)])
        return r

    return run


def _one_line_error(r, *words):
    from stedge.errors import StedgeError

    # CliRunner sees the StedgeError that stedge.cli.main turns into "error: <one line>" and exit code 2
    assert isinstance(r.exception, StedgeError) and r.exception.exit_code == 2, (r.exception, r.output)
    msg = str(r.exception)
    assert "\n" not in msg.strip(), msg
    for w in words:
        assert re.search(w, msg), (w, msg)


def test_bad_inputs(cli, tiny_model, tmp_path):
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--quantize", "int3"), "--quantize must be one of")
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--backend", "tflite"), "--backend must be one of")
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--optimize", "O9"), "--optimize must be one of")
    _one_line_error(
        cli(
            tiny_model,
            "-o",
            tmp_path / "a",
            "--quantize",
            "int8-static",
            "--calibration-method",
            "avg",
            "--calibration",
            "x.txt",
        ),
        "--calibration-method must be one of",
    )
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--quantize", "int8-static"), "needs --calibration")
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--quantize", "int4-weights"), "--backend openvino")
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--quantize", "int8", "--isa", "sse2"), "--isa must be")
    table = tmp_path / "cal.csv"
    table.write_text("text,label\n" + "".join(f"sentence number {i},1\n" for i in range(40)))
    _one_line_error(
        cli(
            tiny_model,
            "-o",
            tmp_path / "a",
            "--quantize",
            "int8-static",
            "--calibration",
            table,
            "--calibration-column",
            "sentence",
        ),
        "no column 'sentence'",
        "--calibration-column",
    )
    short = tmp_path / "few.txt"
    short.write_text("one text\nanother text\n")
    _one_line_error(
        cli(tiny_model, "-o", tmp_path / "a", "--quantize", "int8-static", "--calibration", short),
        "only 2 texts",
        "at least",
    )
    _one_line_error(cli(tiny_model, "-o", tmp_path / "a", "--device", "tpu"), "--device must be one of")
    (tmp_path / "exists").mkdir()
    _one_line_error(cli(tiny_model, "-o", tmp_path / "exists"), "already exists", "--overwrite")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    _one_line_error(cli(gpt, "-o", tmp_path / "a"), "GPT2LMHeadModel", "not a sentence encoder")
    assert not (tmp_path / "a").exists()


def test_static_int8_and_fp16_on_tiny(tiny_model, tmp_path):
    from stedge.export import export_model

    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(f"calibration sentence {i} about topic {i % 7}" for i in range(40)))
    res = export_model(
        str(tiny_model),
        tmp_path / "s",
        backend="all",
        quantize="int8-static",
        calibration=str(cal),
        calibration_method="percentile",
    )
    v = res.manifest["variants"]
    assert v["onnx-int8-static"]["quantization"]["calibration_method"] == "percentile"
    assert v["onnx-int8-static"]["verification"]["mean_cosine"] > 0.98
    assert v["openvino-int8-static"]["verification"]["mean_cosine"] > 0.98
    _tables_stay_int8(tmp_path / "s" / v["openvino-int8-static"]["file"], v["openvino-int8-static"])
    _int8_groups_are_duelled(tmp_path / "s")
    _older_int8_static_is_rebuilt(tiny_model, tmp_path / "s", cal)
    res16 = export_model(str(tiny_model), tmp_path / "h", quantize="fp16")
    e = res16.manifest["variants"]["onnx-fp16"]
    assert e["precision"] == "fp16" and e["quantization"]["keep_io_types"]
    assert e["verification"] is None or e["verification"]["min_cosine"] > 0.999


def _tables_stay_int8(xml: Path, entry: dict) -> None:
    """The static int8 IR looks its embedding rows up in int8 tables, and compiled for the CPU (dynamic and static
    shapes) it holds no float copy of a table (OpenVINO folded one into every compilation before)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    tables = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Gather" and "embeddings" in op.get_friendly_name():
            data = op.input_value(0)
            assert data.get_node().get_type_name() == "Constant", op.get_friendly_name()
            assert data.get_element_type() in (ov.Type.i8, ov.Type.u8)
            tables[op.get_friendly_name()] = list(data.get_shape())
    assert any("word_embeddings" in n for n in tables) and entry["quantization"]["embeddings"].startswith("int8 rows")
    static = model.clone()
    static.reshape({i.any_name: [1, 8] for i in static.inputs})
    for graph in (model, static):
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        floats = [
            list(op.get_output_shape(0))
            for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f32
        ]
        assert not [s for s in floats if s in tables.values()], floats


def _int8_groups_are_duelled(art: Path) -> None:
    """openvino-int8-static keeps its FFN down-projections' activations out of static quantization; OpenVINO's CPU
    plugin quantizes them per token at run time (engine option dynamic_quantization_group_size, 0 turns it off):
    the tune's int8-group duel times each group where it changes the vectors, and says so where nothing does
    (the fp32 graph)."""
    from stedge_runtime import Encoder
    from stedge_runtime import tune as tune_mod
    from stedge_runtime.errors import RuntimeStedgeError

    texts = ["a short text", "another text about cells and proteins in a longer sentence"]
    vecs = {
        g: Encoder.load(art, variant="openvino-int8-static", threads=1, dynamic_quantization_group_size=g).encode(texts)
        for g in (0, 32)
    }
    # the plugin quantizes at run time where the CPU has int8 dot products (on the Zen 4 and AMX guests here)
    reaches = not np.array_equal(vecs[0], vecs[32])
    assert float(np.sum(vecs[0] * vecs[32], axis=1).min()) > 0.99  # it moves the vectors a little at most
    work = tune_mod._Workloads("embedding", None, True)
    settings = {"threads": 1, "performance_hint": "LATENCY"}
    duel = tune_mod.dq_group_duel(Encoder, art, "openvino-int8-static", settings, work, passes=2)
    assert duel["effect"] is reaches
    if reaches:
        labels = {"default", *(str(g) for g in tune_mod.DQ_GROUPS if g is not None)}
        assert set(duel["bulk_sent_s"]) == set(duel["batch1_ms_p50"]) == labels
        assert duel["chosen"] in tune_mod.DQ_GROUPS and all(v > 0 for v in duel["batch1_ms_p50"].values())
        assert duel["chosen"] is None and all(len(v) == 2 for v in duel["pass_score"].values())  # 2 passes: no interval
        held = tune_mod.dq_group_duel(Encoder, art, "openvino-int8-static", settings, work, passes=2, incumbent=128)
        assert held["incumbent"] == 128 and held["chosen"] == 128  # the previous tune's choice stays likewise
    assert tune_mod.dq_group_duel(Encoder, art, "openvino-fp32", settings, work, passes=2) == {
        "effect": False,
        "chosen": None,
    }
    with pytest.raises(RuntimeStedgeError, match="dynamic_quantization_group_size=-1"):
        Encoder.load(art, variant="openvino-int8-static", dynamic_quantization_group_size=-1)


def _older_int8_static_is_rebuilt(model: Path, art: Path, cal: Path) -> None:
    """An openvino-int8-static record from before the int8 tables (no ``embeddings`` in its quantization): `stedge
    info` says how to export it again, and the harness's build exports it again (with the fp32 IR it is made from),
    keeping the ONNX variants."""
    from stedge.bench.build import build_variants
    from stedge.cli import app

    manifest = json.loads((art / "stedge.json").read_text())
    kept = {n: e["sha256"] for n, e in manifest["variants"].items() if n.startswith("onnx-")}
    del manifest["variants"]["openvino-int8-static"]["quantization"]["embeddings"]
    (art / "stedge.json").write_text(json.dumps(manifest))
    info = CliRunner().invoke(app, ["info", str(art)])
    assert info.exit_code == 0, info.output
    assert "note: openvino-int8-static: its embedding tables are dequantized before their lookup" in info.stderr
    assert "--quantize int8-static --calibration FILE" in info.stderr and str(cal) in info.stderr
    logs: list[str] = []
    build_variants(
        model, art, ["openvino-int8-static", "onnx-int8-static"], calibration=(str(cal), 40), log=logs.append
    )
    assert any("openvino-int8-static was built by an older stedge" in x for x in logs), logs
    again = json.loads((art / "stedge.json").read_text())["variants"]
    assert again["openvino-int8-static"]["quantization"]["embeddings"].startswith("int8 rows")
    assert {n: e["sha256"] for n, e in again.items() if n.startswith("onnx-")} == kept
    info = CliRunner().invoke(app, ["info", str(art)])
    assert "built" not in info.stderr and "dequantized before" not in info.stderr


def test_gather_int8_tables_keeps_the_values(tmp_path):
    """Gather(dequantize(table)) -> dequantize(Gather(table)) for int8 and uint8 tables with per-row scales and per-row
    or shared zero points gives the tables' values (numpy); a table with a scale per element is left alone."""
    import openvino as ov
    import openvino.opset13 as ops

    from stedge.export.openvino import gather_int8_tables

    rng = np.random.default_rng(0)
    ids = ops.parameter([-1, -1], ov.Type.i64, name="ids")
    x = rng.integers(0, 50, (3, 5))

    def table(weights: str, zero: tuple | None, scale: tuple):
        signed = weights == "i8"
        q = rng.integers(-127, 127, (50, 8)) if signed else rng.integers(0, 255, (50, 8))
        q = q.astype(np.int8 if signed else np.uint8)
        node, value = ops.convert(ops.constant(q), "f32"), q.astype(np.float32)
        if zero is not None:
            z = rng.integers(0, 255, zero).astype(np.uint8)
            node, value = ops.subtract(node, ops.convert(ops.constant(z), "f32")), value - z
        s = rng.uniform(0.01, 0.1, scale).astype(np.float32)
        node, value = ops.multiply(node, ops.constant(s)), value * s
        return ops.gather(node, ids, ops.constant(np.int64(0))), value[x]

    tables = [
        table("i8", None, (50, 1)),
        table("u8", (50, 1), (50, 1)),
        table("u8", (1, 8), (50, 1)),
        table("i8", None, (50, 8)),  # a scale per element: left before its Gather
    ]
    model = ov.Model([t for t, _ in tables], [ids])
    assert len(gather_int8_tables(model)) == 3
    assert gather_int8_tables(model) == []
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"ids": x})
    for k, (_, want) in enumerate(tables):
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)


def _cast_graph(duplicate: bool, rename: bool = False):
    """x (fp16) -> Cast to fp32 -> Relu and Neg, as onnxruntime's fp16 converter before 1.32 writes it: one Cast per
    consumer, with the same name and output (``duplicate``), or a second Cast of another name (``rename``)."""
    from onnx import TensorProto, helper

    cast = helper.make_node("Cast", ["x"], ["x_cast_to_fp32"], to=TensorProto.FLOAT, name="x_cast_to_fp32_node")
    nodes = [cast]
    if duplicate:
        again = helper.make_node("Cast", ["x"], ["x_cast_to_fp32"], to=TensorProto.FLOAT, name="x_cast_to_fp32_node")
        if rename:
            again.name = "another_cast"
        nodes.append(again)
    nodes += [
        helper.make_node("Relu", ["x_cast_to_fp32"], ["a"], name="relu"),
        helper.make_node("Neg", ["x_cast_to_fp32"], ["b"], name="neg"),
    ]
    info = helper.make_tensor_value_info("x_cast_to_fp32", TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("a", "b")],
        value_info=[info, info] if duplicate else [info],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_fp16_graphs_with_the_duplicate_casts_of_onnxruntime_1_31_load(tiny_model, tmp_path, monkeypatch):
    """onnxruntime-gpu 1.31 (the newest onnxruntime-gpu in December 2026) writes one Cast per fp32-kept consumer of
    an fp16 value, all with one name and output, and then refuses to load the graph: the H200 run lost its O4
    variant to it. Export drops the repeats; two nodes that really differ under one name still stop it."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.onnx_model import OnnxModel

    from stedge.errors import StedgeError
    from stedge.export.onnx_graph import drop_duplicate_nodes

    broken = _cast_graph(duplicate=True)
    with pytest.raises(Exception, match="same node name"):
        ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    assert drop_duplicate_nodes(broken.graph) == 1 and len(broken.graph.value_info) == 1
    sess = ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = sess.run(None, {"x": np.array([1.5, -2.0], np.float16)})
    assert a.tolist() == [1.5, 0.0] and b.tolist() == [-1.5, 2.0]
    assert drop_duplicate_nodes(_cast_graph(duplicate=False).graph) == 0
    with pytest.raises(StedgeError, match="same output 'x_cast_to_fp32'.*upgrade onnxruntime"):
        drop_duplicate_nodes(_cast_graph(duplicate=True, rename=True).graph)

    # Through export: the converter made to repeat one of its Casts, as 1.31 does; the fp16 variant still verifies.
    real = OnnxModel.convert_float_to_float16

    def like_1_31(self, *args, **kwargs):
        real(self, *args, **kwargs)
        casts = [n for n in self.model.graph.node if n.op_type == "Cast" and n.name.endswith("_cast_to_fp32_node")]
        assert casts, "the fp16 converter kept nothing in fp32 on the tiny model"
        self.model.graph.node.append(onnx.NodeProto.FromString(casts[0].SerializeToString()))

    monkeypatch.setattr(OnnxModel, "convert_float_to_float16", like_1_31)
    from stedge.export import export_model

    res = export_model(str(tiny_model), tmp_path / "h", quantize="fp16")
    e = res.manifest["variants"]["onnx-fp16"]
    assert e["verification"] is not None and e["verification"]["min_cosine"] > 0.999, e.get("note")
    names = [n.name for n in onnx.load(str(tmp_path / "h" / e["file"])).graph.node if n.name]
    assert len(names) == len(set(names))

    # Without the repair the graph is one no device loads: the export stops (it once recorded it as "not verified
    # on cpu", and the artifact shipped a graph that failed on the GPU), and nothing is left behind.
    from stedge.export import optimize

    monkeypatch.setattr(optimize, "drop_duplicate_nodes", lambda graph: 0)
    with pytest.raises(Exception, match="invalid model"):
        export_model(str(tiny_model), tmp_path / "broken", quantize="fp16")
    assert not (tmp_path / "broken").exists()


def test_openvino_straight_from_torch(tmp_path):
    from stedge.export import openvino as ovx
    from stedge.export.verify import Runner, graph_embed
    from stedge.models import SentenceEncoder

    model = SentenceEncoder(make_tiny_bert(tmp_path / "model", dense=8), device="cpu")
    xml, _ = ovx.save(ovx.from_torch(model, "embedding"), tmp_path / "openvino" / "openvino_model.xml")
    run = Runner("openvino", xml)
    assert run.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert run.outputs == ["sentence_embedding", "last_hidden_state"]
    assert np.abs(graph_embed(model, run, TEXTS) - model.encode(TEXTS)).max() < 1e-5
