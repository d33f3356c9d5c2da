"""`stedge tune`, the profile it writes, and `--add` keeping the runtime's choice (tiny models, a few seconds each)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stedge.errors import StedgeError


@pytest.fixture(scope="module")
def tiny_onnx_artifact(tiny_model, tmp_path_factory) -> Path:
    from stedge.export import export_model

    return Path(
        export_model(str(tiny_model), tmp_path_factory.mktemp("tune") / "art", backend="onnx", show_progress=False).path
    )


@pytest.fixture()
def art(tiny_onnx_artifact, tmp_path) -> Path:
    out = tmp_path / "art"
    shutil.copytree(tiny_onnx_artifact, out)
    return out


def _cli(*args: str):
    from stedge.cli import app

    return CliRunner().invoke(app, list(args))


def _words(text: str) -> str:
    """``text`` with every run of whitespace as one space: rich wraps a long line where its width ends, and where
    that falls moves with the figures and the temporary path in it."""
    return " ".join(text.split())


def _full_profile(art: Path, pad: int | None = None, group: int | None = None, **fields) -> dict:
    """A profile of this machine that covers every variant of ``art`` with today's settings grid at 2 threads, the
    token budget and the paired final (what the harness needs not to re-tune); ``pad``: the static-padding duel
    chose that padding, so the OpenVINO runs with static compilations carry it; ``group``: the int8-group duel chose
    that group, so every OpenVINO run carries it."""
    from stedge_runtime.machine import machine_key
    from stedge_runtime.tune import DQ_KEY, settings_grid, tunable_variants

    def runs(backend: str) -> list[dict]:
        grid = settings_grid(backend, 2)
        grid = [{**g, "static_pad": pad} if pad and g.get("static_batch1") else g for g in grid]
        return [{"settings": {**g, DQ_KEY: group} if group is not None and backend == "openvino" else g} for g in grid]

    todo, _ = tunable_variants(art)
    return {
        "format_version": 1,
        "machine": {"key": machine_key()},
        "quick": False,
        "variants": {n: {"status": "ok", "sha256": v["sha256"], "runs": runs(v["backend"])} for n, v in todo.items()},
        "batch_tokens": {"best": 1024},
        "paired": {"cycles": 0, "reference": None, "contenders": {}},
        **fields,
    }


def test_tune_cli_writes_the_profile_and_prints_the_choice(art):
    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import read_profile

    dry = _cli("tune", str(art), "--quick", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert not (art / "tuning").exists()
    res = _cli("tune", str(art), "--quick", "--json", "-b", "4")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["file"] == str(art / "tuning" / f"{machine_key()}.json")
    prof = read_profile(art, machine_key())
    assert prof == out["profile"] and prof["batch_sizes"] == [1, 4]
    assert set(prof["variants"]["onnx-fp32"]["runs"][0]["bulk"]["passage"]) == {"4"}
    run = prof["variants"]["onnx-fp32"]["runs"][0]
    assert run["batch1_ms_p50"] > 0 and run["batch1_ms_p50_long"] > 0  # batch 1 at two query lengths
    lengths = prof["workloads"]
    assert lengths["batch1_long"]["mean_tokens"] > 1.5 * lengths["batch1"]["mean_tokens"] > 0
    assert out["choices"]["exact"]["variant"] == "onnx-fp32" and out["choices"]["exact"]["source"] == "profile"
    table = _cli("tune", str(art), "--quick", "--dry-run")
    assert table.exit_code == 0 and "tier exact: onnx-fp32" in table.stdout and "alone vs batch" in table.stdout
    bad = _cli("tune", str(art), "--variant", "nope")
    assert getattr(bad.exception, "exit_code", None) == 2 and "no variant(s) nope" in str(bad.exception)


def test_tune_queries_option_times_batch1_on_the_apps_queries(art, tmp_path):
    """`stedge tune --queries FILE`: batch-1 calls run on the app's queries (the profile says so and keeps their
    fingerprint; the table's caption too); bulk workloads stay the built-in ones; empty or unreadable files are
    named."""
    from stedge_runtime.tune import texts_sha256

    queries = [f"does protein {i} bind the receptor in human cells" for i in range(40)]
    q = tmp_path / "queries.txt"
    q.write_text("\n".join(queries) + "\n\n", encoding="utf-8")
    res = _cli("tune", str(art), "--quick", "--dry-run", "--json", "--queries", str(q))
    assert res.exit_code == 0, res.output
    w = json.loads(res.stdout)["profile"]["workloads"]
    base = json.loads(_cli("tune", str(art), "--quick", "--dry-run", "--json").stdout)["profile"]["workloads"]
    assert w["batch1"]["source"] == "queries" and w["batch1"]["sha256"] == texts_sha256(queries)
    assert w["batch1"]["mean_tokens"] != base["batch1"]["mean_tokens"] and base["batch1"]["source"] == "built-in"
    assert w["short"] == base["short"] and w["passage"] == base["passage"]
    table = _cli("tune", str(art), "--quick", "--dry-run", "--queries", str(q))
    assert table.exit_code == 0 and "bs=1 on your queries" in table.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    for path, why in ((empty, "no non-empty lines"), (tmp_path / "nope.txt", "cannot read it")):
        bad = _cli("tune", str(art), "--quick", "--dry-run", "--queries", str(path))
        assert getattr(bad.exception, "exit_code", None) == 2 and f"--queries {path}: {why}" in str(bad.exception)


def test_tune_notes_a_missing_bf16_variant_on_a_bf16_cpu(art, monkeypatch):
    """On a CPU that runs bf16, `stedge tune` and `stedge info` on an artifact without openvino-bf16 name the export
    that adds it (the artifact's source model in the command); elsewhere they say nothing of it."""
    import stedge_runtime.machine as machine

    flags = machine.cpu_flags()
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags | {"amx_bf16"})
    res = _cli("tune", str(art), "--quick", "--dry-run")
    assert res.exit_code == 0, res.output
    source = json.loads((art / "stedge.json").read_text())["source"]["model"]
    said = " ".join(res.stderr.split())
    assert "has no openvino-bf16" in said and f"stedge export {source} -o {art} --add --backend openvino" in said
    info = _cli("info", str(art))
    assert info.exit_code == 0 and "note: this CPU runs bf16" in info.stderr and "--quantize auto" in info.stderr
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags - {"amx_bf16", "avx512_bf16"})
    for args in (("tune", str(art), "--quick", "--dry-run"), ("info", str(art))):
        quiet = _cli(*args)
        assert quiet.exit_code == 0 and "openvino-bf16" not in quiet.stderr, args


def test_tune_text_prints_engine_messages_as_they_are():
    """Engine errors and selection notes are printed as text, never read as rich markup: an install hint keeps its
    extra ([openvino] is a style tag to rich, and vanished), and a path in brackets does not stop the report (a
    closing tag such as [/tmp] that opens nothing is a markup error)."""
    import io

    from rich.console import Console

    from stedge.tune.cli import _render_paired, render_choice

    out = io.StringIO()
    con = Console(file=out, width=300)
    msg = "[/tmp/models/x] [bold] not found; needs openvino: pip install 'stedge-runtime[openvino]'"
    render_choice(
        {"exact": {"error": msg}, "near": {"variant": "v", "reason": msg, "notes": [msg], "warnings": [msg]}}, con
    )
    _render_paired({"cycles": 2, "reference": "v", "contenders": {"v": {"error": msg}}}, con)
    assert out.getvalue().count(msg) == 5, out.getvalue()


def test_full_tune_has_its_paired_final(art):
    """A full tune ends with the paired final. With one variant, its engine settings are what is paired: the
    settings the rounds gave it (spinning: the default, which no-spin rarely beats by 10 %) and the other setting,
    when it came within 0.85 of it in the rounds, timed side by side; --paired-cycles 0 skips the timing."""
    from stedge_runtime.select import bulk_score, settled_run

    res = _cli("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "2", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    prof = json.loads(res.stdout)["profile"]
    final, runs = prof["paired"], prof["variants"]["onnx-fp32"]["runs"]
    settled = settled_run(runs)["settings"]  # the rounds' rule
    mine = next(bulk_score(r) for r in runs if r["settings"] == settled)
    others = [r for r in runs if r["settings"] != settled and bulk_score(r) >= 0.85 * mine]
    assert [c["settings"] for c in final["contenders"].values()] == [settled] + [r["settings"] for r in others]
    assert final["cycles"] == (2 if others else 0)
    text = _cli("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "2", "--dry-run")
    assert text.exit_code == 0 and "paired final: " in text.stdout and "onnx-fp32 (2t, " in text.stdout
    out = _cli("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "0", "--dry-run", "--json")
    final = json.loads(out.stdout)["profile"]["paired"]
    assert final["cycles"] == 0 and {c["variant"] for c in final["contenders"].values()} == {"onnx-fp32"}
    bad = _cli("tune", str(art), "--paired-cycles", "-1")
    assert bad.exit_code == 2 and "--paired-cycles" in bad.output


def test_tune_measures_each_tiers_memory_in_a_fresh_process(art):
    """Once the profile is written, each tier's choice runs in a fresh process and its peak RSS goes into the
    profile (tiers with the same choice share one measurement); Encoder.load's notes and `stedge info` quote it.
    --no-memory, --quick and --dry-run skip it."""
    from stedge_runtime import Encoder

    res = _cli("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "0", "--json")
    assert res.exit_code == 0, res.output
    mem = json.loads(res.stdout)["profile"]["memory"]
    tiers = mem["tiers"]
    assert set(tiers) == {"exact", "near", "compressed"} and mem["created"]
    assert 30 < tiers["exact"]["peak_rss_mb"] < 4096  # numpy + tokenizers + onnxruntime alone are > 30 MB
    assert tiers["near"] == tiers["exact"] == tiers["compressed"]  # one variant: one choice, measured once
    assert "route_off_mb" not in tiers["exact"]  # no batch-1 route to turn off
    assert 0 <= tiers["exact"]["growth_mb"] < tiers["exact"]["peak_rss_mb"]  # what the probe's second half added
    note = f"peak RSS of a process running this tier's choice here: {tiers['near']['peak_rss_mb']:.0f} MB"
    assert any(n.startswith(note) for n in Encoder.load(art).selection.notes)
    assert note in _words(_cli("info", str(art)).stdout)
    # a tier whose choice has changed since (a variant exported again, say) does not quote the old choice's figure
    file = next((art / "tuning").glob("*.json"))
    kept = file.read_text()
    changed = json.loads(kept)
    changed["memory"]["tiers"]["near"]["choice"]["variant"] = "openvino-int8-static"
    file.write_text(json.dumps(changed))
    notes = Encoder.load(art, tier="near").selection.notes
    assert not any(n.startswith(note) for n in notes)
    assert any(n.startswith("peak RSS not measured for this choice") and "(openvino-int8-static)" in n for n in notes)
    assert any(n.startswith(note) for n in Encoder.load(art, tier="exact").selection.notes)
    file.write_text(kept)
    # what a memory budget may fall back to: the variant's settings measured here (the tier's own figure reused)
    configs = {json.dumps(c["settings"], sort_keys=True): c for c in mem["configs"]}
    assert {c["variant"] for c in mem["configs"]} == {"onnx-fp32"} and len(configs) == len(mem["configs"]) >= 1
    chosen = json.dumps(tiers["near"]["choice"]["settings"], sort_keys=True)
    assert configs[chosen]["peak_rss_mb"] == tiers["near"]["peak_rss_mb"]
    roomy = _cli("info", str(art), "--max-memory-mb", "100000", "--json")
    sel = json.loads(roomy.stdout)["selection"]["near"]
    assert sel["max_memory_mb"] == 100000 and sel["peak_rss_mb"] == tiers["near"]["peak_rss_mb"] and not sel["warnings"]
    with pytest.warns(RuntimeWarning, match="fits max_memory_mb=1: .* running the lightest"):
        tight = Encoder.load(art, max_memory_mb=1)
    assert tight.variant == "onnx-fp32" and tight.encode("still runs").shape == (32,)
    out = _cli("embed", str(art), "one text", "--max-memory-mb", "1", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["count"] == 1
    assert "running the lightest" in _words(_cli("info", str(art), "--max-memory-mb", "1").stdout)
    packed = _cli("pack", str(art), "-o", str(art.parent / "app"), "--max-memory-mb", "100000", "--json")
    assert packed.exit_code == 0 and json.loads(packed.stdout)["variants"] == ["onnx-fp32"]
    with pytest.warns(RuntimeWarning, match="fits max_memory_mb=1"):  # pack says what Encoder.load would say
        from stedge.export.pack import default_pack_variants

        assert default_pack_variants(art, "near", 1) == ["onnx-fp32"]
    from stedge.bench.subjects import RuntimeVariant  # the harness's auto subject with a budget: "near@MB"

    sub = RuntimeVariant("m", str(art), "cpu", "auto:near@1")
    assert (sub.tier, sub.max_memory_mb, sub.label) == ("near", 1.0, "stedge auto near <= 1 MB (onnx-fp32)")
    assert sub.facts()["auto_tier"] == "near@1" and "running the lightest" in sub.selection()["warnings"][0]
    run = sub.load(1)
    assert run(["a text"], 1).shape == (1, 32) and run.info["selection"]["max_memory_mb"] == 1.0
    assert any("running the lightest" in w for w in run.info["warnings"])
    for flags in (["--no-memory"], ["--quick"]):
        out = _cli("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "0", "--json", *flags)
        assert out.exit_code == 0 and "memory" not in json.loads(out.stdout)["profile"]


def test_a_re_tune_keeps_the_memory_figures_it_may(art, monkeypatch):
    """A second `stedge tune` keeps the memory figures the first measured on the same variant files, workloads and
    token budget (the table says so, each figure says when it was measured) and probes nothing;
    --remeasure-memory probes them all again, and a variant whose files changed is probed again."""
    from stedge_runtime import tune as tune_mod

    probes: list[str] = []

    def fake(spec):
        probes.append(spec.get("tier") or spec["variant"])
        return 200.0 + len(probes), 1.0

    monkeypatch.setattr(tune_mod, "_memory_in_child", fake)
    # one engine setting and one token budget: the re-tunes' choices cannot move with the machine's noise
    monkeypatch.setattr(tune_mod, "settings_grid", lambda backend, threads=None, quick=False: [{"threads": 1}])
    monkeypatch.setattr(tune_mod, "BATCH_TOKEN_GRID", (tune_mod.default_batch_tokens("cpu"),))
    args = ("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "0")
    first = _cli(*args, "--json")
    assert first.exit_code == 0, first.output
    mem = json.loads(first.stdout)["profile"]["memory"]
    assert probes and mem["basis"]["batch_sizes"] == [4] and mem["basis"]["max_batch_tokens"]
    assert not any("measured" in e for e in [*mem["tiers"].values(), *mem["configs"]])
    n = len(probes)
    again = _cli(*args)
    assert again.exit_code == 0, again.output
    assert len(probes) == n  # every figure kept: the budget's tokens, the files and the texts are the same
    total = len(mem["tiers"]) + len(mem["configs"])
    assert f"memory: {total} of {total} figures kept from the tune of {mem['created']}" in _words(again.stdout)
    file = next((art / "tuning").glob("*.json"))
    kept = json.loads(file.read_text())["memory"]
    assert [c["peak_rss_mb"] for c in kept["configs"]] == [c["peak_rss_mb"] for c in mem["configs"]]
    assert {e["measured"] for e in [*kept["tiers"].values(), *kept["configs"]]} == {mem["created"]}
    fresh = _cli(*args, "--remeasure-memory", "--json")
    assert fresh.exit_code == 0 and len(probes) > n
    assert not any("measured" in c for c in json.loads(fresh.stdout)["profile"]["memory"]["configs"])
    prof = json.loads(file.read_text())  # as if onnx-fp32 had been exported again since
    prof["variants"]["onnx-fp32"]["sha256"] = {"onnx/model.onnx": "0" * 64}
    file.write_text(json.dumps(prof))
    n = len(probes)
    changed = _cli(*args, "--json")
    assert changed.exit_code == 0 and len(probes) > n  # its tiers' and configurations' probes
    assert not any("measured" in c for c in json.loads(changed.stdout)["profile"]["memory"]["configs"])


def test_a_tune_stopped_in_its_memory_probes_keeps_what_it_measured(art, monkeypatch):
    """`stedge tune` writes the profile after each memory probe: one stopped in them (the harness's timeout,
    Ctrl-C) leaves its timings and the figures it measured, marked partial; a memory budget says why figures are
    missing; the next tune keeps those figures and probes only the rest, and its section is whole."""
    from stedge_runtime import tune as tune_mod
    from stedge_runtime.select import PROBES_STOPPED

    from stedge.tune.cli import run_tune

    probes: list[str] = []
    stop_at = [0]

    def fake(spec):
        probes.append(spec.get("tier") or spec["variant"])
        if len(probes) == stop_at[0]:
            raise KeyboardInterrupt  # as a timeout's kill or Ctrl-C would stop it, in the middle of a probe
        return 200.0 + len(probes), 1.0

    listed = tune_mod.memory_configs
    extra = [{"threads": 1, "allow_spinning": False}, {"threads": 2}]  # two more for a budget to fall back to

    def configs(root, prof):
        return [*listed(root, prof), *({"variant": "onnx-fp32", "settings": s} for s in extra)]

    monkeypatch.setattr(tune_mod, "_memory_in_child", fake)
    monkeypatch.setattr(tune_mod, "memory_configs", configs)
    monkeypatch.setattr(tune_mod, "settings_grid", lambda backend, threads=None, quick=False: [{"threads": 1}])
    monkeypatch.setattr(tune_mod, "BATCH_TOKEN_GRID", (tune_mod.default_batch_tokens("cpu"),))
    kw = {"budget_s": 1, "batch_sizes": (4,), "paired_cycles": 0, "show_progress": False}
    full, _ = run_tune(art, **kw)
    assert probes == ["exact", "onnx-fp32", "onnx-fp32"] and "partial" not in full["memory"]  # tiers share one
    file = next((art / "tuning").glob("*.json"))

    def stopped(at: int, **more) -> dict:
        probes.clear()
        stop_at[0] = at
        with pytest.raises(KeyboardInterrupt):
            run_tune(art, **kw, **more)
        return json.loads(file.read_text())

    left = stopped(1, reuse_memory=False)  # every figure probed again, stopped in the first probe
    assert left["memory"]["partial"] is True and left["created"] != full["created"] and left["variants"]
    assert left["memory"]["tiers"] == {} and left["memory"]["configs"] == []
    said = tune_mod.best_choices(art, max_memory_mb=1e6)
    assert all(any(PROBES_STOPPED in w for w in said[t].get("warnings", [])) for t in said), said
    left = stopped(3)  # nothing to keep; stopped in the third probe, after the tiers' and one configuration's
    mem = left["memory"]
    assert mem["partial"] is True and set(mem["tiers"]) == {"exact", "near", "compressed"}
    assert [c.get("peak_rss_mb") for c in mem["configs"]] == [201.0, 202.0]  # a tier's figure, then a probe's
    probes.clear()
    stop_at[0] = 0
    again, _ = run_tune(art, **kw)
    assert probes == ["onnx-fp32"]  # only what the stopped tune had not measured
    assert "partial" not in again["memory"] and "partial" not in json.loads(file.read_text())["memory"]
    kept = [e for e in [*again["memory"]["tiers"].values(), *again["memory"]["configs"]] if e.get("measured")]
    assert len(kept) == 5 and {e["measured"] for e in kept} == {mem["created"]}


def test_a_re_tune_starts_from_the_previous_choices_unless_told_to_choose_afresh(art, monkeypatch):
    """`stedge tune` hands this machine's previous profile to the tune (its token budget is the incumbent of the
    sweep; its tier choices stay where the paired final cannot tell the new ones from them: tune.kept_choices);
    --fresh-choices hands it nothing."""
    from stedge_runtime import tune as tune_mod

    real, seen = tune_mod.tune, []

    def spy(*args, **kw):
        seen.append(args[10] if len(args) > 10 else kw.get("previous"))
        return real(*args, **kw)

    monkeypatch.setattr(tune_mod, "tune", spy)
    monkeypatch.setattr(tune_mod, "settings_grid", lambda backend, threads=None, quick=False: [{"threads": 1}])
    args = ("tune", str(art), "--budget", "1", "-b", "4", "--paired-cycles", "0", "--no-memory", "--json")
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    made = json.loads(first.stdout)["profile"]
    assert seen == [None] and "incumbent" not in made["batch_tokens"]
    assert all(len(v) == tune_mod.ROUNDS for r in made["batch_tokens"]["rounds"].values() for v in r.values())
    again = _cli(*args)
    assert again.exit_code == 0, again.output
    assert seen[-1]["created"] == made["created"]
    assert json.loads(again.stdout)["profile"]["batch_tokens"]["incumbent"] == made["batch_tokens"]["best"]
    fresh = _cli(*args, "--fresh-choices")
    assert fresh.exit_code == 0 and seen[-1] is None
    assert "incumbent" not in json.loads(fresh.stdout)["profile"]["batch_tokens"]


def test_info_shows_the_choice_and_ignores_other_machines(art):
    from stedge_runtime.artifact import Manifest
    from stedge_runtime.profile import PROFILE_FORMAT, write_profile

    foreign = {
        "format_version": PROFILE_FORMAT,
        "machine": {"key": "other-cpu-64c-0123456789", "cpu": "other"},
        "variants": {},
    }
    write_profile(art, foreign)
    res = _cli("info", str(art), "--json")
    assert res.exit_code == 0, res.output
    sel = json.loads(res.stdout)["selection"]
    assert sel["near"]["variant"] == "onnx-fp32" and sel["near"]["source"] == "rule"
    assert any("other-cpu-64c-0123456789.json" in n for n in sel["near"]["notes"])
    text = _cli("info", str(art))
    assert "tier=exact" in text.stdout and "tier near: onnx-fp32" in text.stdout
    assert f"note: no tuning profile for this machine: `stedge-runtime tune {art}`" in _words(text.stderr)
    assert "profile for this machine:" not in text.stdout  # only the other machine's, which is not read
    rows = [ln for ln in text.stdout.splitlines() if "alone-vs-batch=" in ln]  # one row per variant, aligned
    assert len(rows) == len(Manifest.read(art).variants) and len({ln.index(" MB ") for ln in rows}) == 1
    assert all(re.search(r"min_cos=\d\.\d{6}  tier=\w+  alone-vs-batch=\d\.\d{6}$", ln) for ln in rows), rows


def test_info_device_option(art, tiny_model):
    """`stedge info ARTIFACT --device cuda` shows the CUDA rule's choices (no CPU profile notes); a model folder
    without stedge.json refuses the option."""
    text = _cli("info", str(art), "--device", "cuda")
    assert text.exit_code == 0, text.output
    assert "device cuda: each tier's choice by the device's rule" in text.stdout
    assert "tier near: onnx-fp32 - rule for device cuda" in text.stdout and "no tuning profile" not in text.stderr
    assert json.loads(_cli("info", str(art), "--device", "cuda", "--json").stdout)["device"] == "cuda"
    res = _cli("info", str(tiny_model), "--device", "npu")
    assert isinstance(res.exception, StedgeError) and res.exception.exit_code == 2
    assert "--device applies to exported artifacts only" in str(res.exception)


def test_add_keeps_the_choice(art, tiny_model):
    """The last --add sets default_variant; the runtime's choice does not follow it."""
    from stedge_runtime import Encoder
    from stedge_runtime.artifact import Manifest
    from stedge_runtime.profile import write_profile
    from stedge_runtime.tune import tune

    from stedge.export import export_model

    before = Encoder.load(art).variant
    assert before == "onnx-fp32"
    export_model(str(tiny_model), art, backend="openvino", add=True, show_progress=False)
    m = Manifest.read(art)
    assert set(m.variants) >= {"onnx-fp32", "openvino-fp32"}
    assert Encoder.load(art).variant == before  # no profile: the rule, not the order of exports
    write_profile(art, tune(art, variants=["onnx-fp32"], quick=True, budget_s=1))
    export_model(str(tiny_model), art, backend="onnx", optimize="O3", add=True, show_progress=False)
    enc = Encoder.load(art, tier="exact")
    assert enc.variant == before and enc.selection.source == "profile"
    assert any(n.startswith("onnx-fp32-O3: not tuned") for n in enc.selection.notes)
    assert any(n.startswith("openvino-fp32: not tuned") for n in enc.selection.notes)


def test_embed_tier_option(art):
    ok = _cli("embed", str(art), "hello", "--tier", "exact", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["count"] == 1
    bad = _cli("embed", str(art), "hello", "--tier", "fast")
    assert getattr(bad.exception, "exit_code", None) == 2
    assert "tier must be one of exact, near, compressed" in str(bad.exception)


def test_export_tune_writes_the_profile(tiny_model, tmp_path):
    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import read_profile

    missing = _cli("export", str(tiny_model), "-o", str(tmp_path / "a"), "--tune-queries", str(tmp_path / "q.txt"))
    assert "--tune-queries" in str(missing.exception) and not (tmp_path / "a").exists()  # refused before the export
    (tmp_path / "q.txt").write_text("which cells express the receptor\nis p53 mutated in most tumours\n")
    res = _cli(
        "export", str(tiny_model), "-o", str(tmp_path / "a"), "--tune-queries", str(tmp_path / "q.txt"), "--json"
    )
    assert res.exit_code == 0, res.output  # --tune-queries implies --tune
    out = json.loads(res.stdout)
    assert out["tuning"]["file"] == str(tmp_path / "a" / "tuning" / f"{machine_key()}.json")
    assert Path(out["tuning"]["file"]).is_file() and out["tuning"]["choices"]["exact"]["source"] == "profile"
    assert read_profile(tmp_path / "a", machine_key())["workloads"]["batch1"]["source"] == "queries"


def test_bench_tunes_only_when_the_profile_is_missing_stale_or_quick(art, monkeypatch):
    import subprocess

    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import write_profile
    from stedge_runtime.tune import settings_grid, tunable_variants

    from stedge.bench import runner

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    suite = runner.Suite(name="t", file="t.toml", models=[])
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 1 and calls[0][-5:] == ["tune", str(art), "--threads", "2", "--json"]  # no profile yet
    todo, _ = tunable_variants(art)
    prof = {
        "format_version": 1,
        "machine": {"key": machine_key()},
        "quick": False,
        "variants": {
            n: {
                "status": "ok",
                "sha256": v["sha256"],
                "runs": [{"settings": g} for g in settings_grid(v["backend"], 2)],
            }
            for n, v in todo.items()
        },
    }
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 2  # written before stedge tuned the token budget: re-tuned
    prof["batch_tokens"] = {"best": 1024, "default": 1024, "rates": {}}
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 3  # written before stedge tune had its paired final: re-tuned
    prof["paired"] = {"cycles": 0, "reference": None, "contenders": {}}
    write_profile(art, prof)
    calls.clear()
    calls.append("first")
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 1  # covered: not re-tuned
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, budgets=True)
    assert len(calls) == 2  # an auto subject with a memory budget needs each configuration's figure: re-tuned
    prof["memory"] = {"tiers": {}, "configs": [], "partial": True}
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, budgets=True)
    assert len(calls) == 3  # a tune stopped in its memory probes left figures out: re-tuned
    calls.pop()
    prof["memory"] = {"tiers": {}, "configs": []}
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, budgets=True)
    assert len(calls) == 2
    calls.pop()
    name = next(iter(todo))
    runs = prof["variants"][name]["runs"]
    prof["variants"][name]["runs"] = runs[:1]  # measured before the tuner tried the settings it tries today
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 2
    prof["variants"][name]["runs"] = runs
    calls.pop()
    quick = {
        n: {**e, "runs": [{"settings": g} for g in settings_grid(todo[n]["backend"], 2, quick=True)]}
        for n, e in prof["variants"].items()
    }
    write_profile(art, {**prof, "quick": True, "variants": quick})
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 2 and "--quick" not in calls[1]  # a quick profile is re-tuned by a full run
    runner.ensure_profile(art, suite.quick(), 2, {}, lambda m: None)
    assert len(calls) == 2  # ... but is enough for a quick one


def test_bench_tunes_batch1_on_the_suites_queries(art, monkeypatch):
    """The harness passes its batch-1 queries to `stedge tune --queries` (one a line), and re-tunes a profile whose
    batch-1 calls ran on other queries, or on none."""
    import subprocess

    from stedge_runtime.profile import write_profile
    from stedge_runtime.tune import texts_sha256

    from stedge.bench import runner

    calls, sent = [], []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if "--queries" in cmd:
            sent.append(Path(cmd[cmd.index("--queries") + 1]).read_text(encoding="utf-8").splitlines())
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    suite = runner.Suite(name="t", file="t.toml", models=[])
    queries = ["what binds\nthe receptor", "is p53 a tumour suppressor", "  "]
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, queries=queries)
    assert sent == [["what binds the receptor", "is p53 a tumour suppressor"]]
    prof = _full_profile(art, workloads={"batch1": {"source": "built-in"}})
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 1  # no queries asked: the profile covers the run
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, queries=queries)
    assert len(calls) == 2  # tuned on the built-in texts: re-tuned on the queries
    prof["workloads"]["batch1"] = {"source": "queries", "sha256": texts_sha256(sent[0])}
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, queries=queries)
    assert len(calls) == 2  # tuned on these queries: kept
    runner.ensure_profile(art, suite, 2, {}, lambda m: None, queries=queries[1:])
    assert len(calls) == 3  # other queries: re-tuned


def test_bench_keeps_a_profile_whose_duels_chose_other_than_the_default(art, tiny_model, monkeypatch):
    """`stedge tune` writes the static-padding duel's choice into the OpenVINO runs it padded (static_pad), and the
    int8-group duel's into every run of its variant (dynamic_quantization_group_size); the harness compares those
    runs with today's settings grid without them, so it does not re-tune on every run."""
    import subprocess

    from stedge_runtime.profile import write_profile
    from stedge_runtime.select import STATIC_PADS

    from stedge.bench import runner
    from stedge.export import export_model

    export_model(str(tiny_model), art, backend="openvino", add=True, show_progress=False)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    prof = _full_profile(art, pad=STATIC_PADS[-1], group=128)
    ov_runs = prof["variants"]["openvino-fp32"]["runs"]
    assert any("static_pad" in r["settings"] for r in ov_runs)
    assert all(r["settings"]["dynamic_quantization_group_size"] == 128 for r in ov_runs)
    write_profile(art, prof)
    suite = runner.Suite(name="t", file="t.toml", models=[])
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert calls == []  # the duel's padding is part of the tune, not a setting missing from the grid
    prof["variants"]["openvino-fp32"]["runs"].pop()
    write_profile(art, prof)
    runner.ensure_profile(art, suite, 2, {}, lambda m: None)
    assert len(calls) == 1  # a setting of today's grid missing: re-tuned


def test_bench_says_what_a_tune_stopped_in_its_memory_probe_left(art, monkeypatch):
    """`stedge tune` writes its timings, then probes memory: stopped there (the harness's timeout), the auto
    subjects still use the timings, and the harness says so; stopped before them, they fall back to the rule."""
    import subprocess

    from stedge_runtime.machine import machine_key
    from stedge_runtime.profile import write_profile
    from stedge_runtime.tune import tunable_variants

    from stedge.bench import runner

    todo, _ = tunable_variants(art)
    timings = {
        "format_version": 1,
        "machine": {"key": machine_key()},
        "created": "2026-12-05T18:56:24+00:00",
        "variants": {n: {"status": "ok", "sha256": v["sha256"], "runs": []} for n, v in todo.items()},
    }

    def stopped_in_memory_probe(cmd, **kw):
        write_profile(art, timings)
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    logs: list[str] = []
    suite = runner.Suite(name="t", file="t.toml", models=[])
    monkeypatch.setattr(subprocess, "run", stopped_in_memory_probe)
    runner.ensure_profile(art, suite, 2, {}, logs.append)
    assert f"timed out after {runner.TUNE_TIMEOUT_S} s" in logs[-1] and "the auto subjects use them" in logs[-1]
    (art / "tuning" / f"{machine_key()}.json").unlink()

    def stopped_before(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(subprocess, "run", stopped_before)
    runner.ensure_profile(art, suite, 2, {}, logs.append)
    assert "fall back to the selection rule" in logs[-1]


def test_the_table_labels_every_engine_setting():
    """Each setting the tune times has a readable label; the budget-only one says so; an unknown one shows as k=v."""
    from stedge_runtime.cli import settings_text as _settings

    lean = {"threads": 2, "performance_hint": "LATENCY", "shape_cache": 50}
    assert _settings(lean) == "2t, latency, 50 shapes cached (budgets only)"
    assert _settings({"threads": 1, "allow_spinning": False, "new_knob": 3}) == "1t, no spin, new_knob=3"
    static = {"threads": 2, "performance_hint": "LATENCY", "static_batch1": 8, "static_pad": 8}
    assert _settings(static) == "2t, latency, static batch-1 x8, padded to 8"


def test_the_table_marks_memory_still_growing():
    """A peak figure whose probe was still growing at its end carries a "+" (a memory budget does not take it);
    one that leveled off, or from a profile before the measure, does not."""
    from stedge_runtime.cli import peak_text as _mb
    from stedge_runtime.cli import table_caption as _caption

    assert (_mb(300.0, 30.0), _mb(300.0, 2.0), _mb(300.0), _mb(None)) == ("300+", "300", "300", "-")
    assert "peak MB +: still growing" in _caption([12.0, 23.0], ["300+", "-"])
    assert _caption([None, None], ["300"]) is None and "+" not in _caption([12.0, 23.0], ["300"])


def test_tune_prints_the_paired_finals_intervals():
    """`stedge tune` prints each contender's speedup over the reference with its 95 % interval, and names the
    contenders the cycles did not tell from the reference in bulk (an interval spanning 1), with what narrows it."""
    import io

    from rich.console import Console

    from stedge.tune.cli import _render_paired

    def contender(variant: str, bulk: float, bulk_ci: list | None, one: float, one_ci: list | None) -> dict:
        return {
            "variant": variant,
            "settings": {"threads": 2},
            "speedup": {"batch1": one, "short bs=32": bulk},
            "speedup_ci": {"batch1": one_ci, "short bs=32": bulk_ci} if bulk_ci else {},
            "bulk_speedup": bulk,
            "bulk_speedup_ci": bulk_ci,
        }

    final = {
        "cycles": 7,
        "ci_level": 0.95,
        "reference": "a",
        "contenders": {
            "a": contender("a", 1.0, [1.0, 1.0], 1.0, [1.0, 1.0]),
            "b": contender("b", 1.04, [0.97, 1.12], 0.8, [0.75, 0.86]),
            "c": contender("c", 0.7, [0.66, 0.75], 1.1, [1.02, 1.2]),
        },
    }
    out = io.StringIO()
    _render_paired(final, Console(file=out, width=400))
    text = out.getvalue()
    assert "a (2t): the reference" in text
    assert "b (2t): bulk 1.040x (95 % CI 0.97-1.12, within noise) (batch1 0.800x (95 % CI 0.75-0.86)" in text
    assert "c (2t): bulk 0.700x (95 % CI 0.66-0.75) (batch1 1.100x (95 % CI 1.02-1.20)" in text
    assert "within noise in bulk: b (2t) (" in text and "--paired-cycles" in text
    out = io.StringIO()
    short = {
        **final,
        "cycles": 3,
        "contenders": {"a": final["contenders"]["a"], "c": contender("c", 0.7, None, 1.1, None)},
    }
    _render_paired(short, Console(file=out, width=400))
    text = out.getvalue()
    assert "(95 % intervals need 6 cycles or more)" in text and "c (2t): bulk 0.700x (batch1 1.100x" in text
    assert "within noise" not in text
