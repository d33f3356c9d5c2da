"""`stedge-runtime tune` / `info` (python -m stedge_runtime): tuning on the machine an app runs on, runtime alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from stedge_runtime import Encoder
from stedge_runtime.cli import main
from stedge_runtime.machine import machine_key

# Runs the command line in a fresh interpreter, then names every heavy package it imported (stedge: the toolchain,
# not stedge_runtime), on the last line.
CLI_CODE = r"""
import json, sys
from stedge_runtime.cli import main
rc = main(sys.argv[1:])
heavy = ("torch", "transformers", "sentence_transformers", "stedge")
print(json.dumps({"rc": rc, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", **(env or {}))
    return subprocess.run([sys.executable, "-c", CLI_CODE, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def app_model(tiny_artifact, tmp_path):
    """A copy of the tiny artifact (onnx-fp32, openvino-fp32) without a profile, as an app would ship it."""
    out = shutil.copytree(tiny_artifact, tmp_path / "app-model")
    shutil.rmtree(out / "tuning", ignore_errors=True)
    return out


def test_tune_writes_this_machines_profile_without_torch_and_load_then_uses_it(app_model):
    """`tune --json` writes tuning/<machine key>.json in a process that never imports torch, transformers or
    stedge, prints the profile, the file and each tier's choice; Encoder.load then chooses from that profile."""
    assert Encoder.load(app_model).selection.source == "rule"  # no profile yet: the CPU rule
    out = _cli("tune", str(app_model), "--quick", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    *printed, last = out.stdout.strip().splitlines()
    assert json.loads(last) == {"rc": 0, "heavy": []}
    res = json.loads("\n".join(printed))
    file = app_model / "tuning" / f"{machine_key()}.json"
    assert res["file"] == str(file) and json.loads(file.read_text())["machine"]["key"] == machine_key()
    assert set(res["profile"]["variants"]) == {"onnx-fp32", "openvino-fp32"}
    assert set(res["choices"]) == {"exact", "near", "compressed"}
    sel = Encoder.load(app_model).selection
    assert sel.source == "profile" and sel.profile == str(file)
    assert sel.variant == res["choices"]["near"]["variant"]


def test_tune_prints_the_table_and_info_says_what_load_picks(app_model):
    """Without --json, tune prints the machine, one row per variant and setting, each tier's choice and the file
    written; `info` lists the variants and what Encoder.load picks per tier here, from the profile (before the
    tune, by the CPU rule, with the command that measures one)."""
    before = _cli("info", str(app_model))
    assert (
        before.returncode == 0
        and f"note: no tuning profile for this machine: `stedge-runtime tune {app_model}`" in (before.stderr)
    )
    out = _cli("tune", str(app_model), "--quick", "--budget", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert f"profile {machine_key()}" in text and "bs=1 p50 ms" in text and "alone vs batch" in text
    assert "bs=1 on short queries (" in text  # the caption: what the batch-1 columns timed
    rows = [line for line in text.splitlines() if line.startswith(("onnx-fp32 ", "openvino-fp32 "))]
    assert len(rows) >= 2 and all(" exact " in r for r in rows)  # the tiny fp32 variants verified exact
    assert any(line.startswith("tier near: ") for line in text.splitlines())
    assert f"profile written to {app_model / 'tuning'}" in text
    info = _cli("info", str(app_model))
    assert info.returncode == 0, info.stderr[-3000:]
    assert "onnx-fp32: onnx fp32, tier=exact" in info.stdout and f"this machine: {machine_key()}" in info.stdout
    created = json.loads((app_model / "tuning" / f"{machine_key()}.json").read_text())["created"]
    profile = f"profile for this machine: {app_model / 'tuning' / machine_key()}.json (tuned {created})"
    assert profile in info.stdout and "\nprofile for this machine: " not in before.stdout  # none before the tune
    near = next(line for line in info.stdout.splitlines() if line.startswith("tier near: "))
    assert "profile" in near and "no tuning profile" not in info.stderr  # chosen from the profile now
    data = json.loads("\n".join(_cli("info", str(app_model), "--json").stdout.strip().splitlines()[:-1]))
    assert data["machine"] == machine_key() and data["selection"]["near"]["variant"] in data["variants"]


def test_dry_run_writes_nothing(app_model, capsys):
    assert main(["tune", str(app_model), "--quick", "--dry-run", "--variant", "onnx-fp32"]) == 0
    assert "profile not written (--dry-run)" in capsys.readouterr().out and not (app_model / "tuning").exists()


def test_errors_name_what_is_wrong_and_write_nothing(app_model, tmp_path, capsys):
    """Bad input: exit 2 and one line naming the folder, file or option; nothing written."""
    plain = tmp_path / "not-an-artifact"
    plain.mkdir()
    assert main(["tune", str(plain), "--quick"]) == 2
    assert f"error: {plain}: not an artifact folder (no stedge.json)" in capsys.readouterr().err
    assert list(plain.iterdir()) == []
    missing = tmp_path / "queries.txt"
    assert main(["tune", str(app_model), "--quick", "--queries", str(missing)]) == 2
    assert f"--queries {missing}: cannot read it as UTF-8 text" in capsys.readouterr().err
    assert main(["tune", str(app_model), "--quick", "--variant", "onnx-int8-nope"]) == 2
    assert "onnx-int8-nope" in capsys.readouterr().err
    assert main(["info", str(plain)]) == 2 and str(plain) in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main(["tune", str(app_model), "--threads", "0"])
    assert bad.value.code == 2 and "expected 1 or more, got 0" in capsys.readouterr().err
    assert not (app_model / "tuning").exists()


def test_the_table_marks_what_fails_a_check(capsys):
    """profile_table (both command lines' table): a variant that failed here, an alone-vs-batch agreement under
    0.999 and a cos to exact under 0.99 are styled (red / yellow in `stedge tune`, "!" here); the chosen row marked."""
    from stedge_runtime.cli import _print_table, profile_table

    machine = {"cpu": "CPU", "cores_physical": 2, "isa_flags": ["avx2"], "cpu_class": "avx2", "key": "k"}
    run = {"settings": {"threads": 2}, "batch1_ms_p50": 1.25, "bulk": {"short": {"32": 100.0}, "passage": {"32": 9.0}}}
    prof = {
        "machine": machine,
        "batch_sizes": [1, 32],
        "variants": {
            "onnx-int8-rows": {
                "status": "ok",
                "batch_invariance_min_cos": 0.99,
                "min_cos_to_exact": 0.95,
                "runs": [run],
            },
            "onnx-fp32": {"status": "ok", "batch_invariance_min_cos": 1.0, "min_cos_to_exact": 1.0, "runs": [run]},
            "openvino-int4": {"status": "failed", "error": "cannot compile"},
        },
    }
    tiers = {"onnx-int8-rows": {"precision": "int8", "verification": {"tier": "compressed"}}}
    choices = {"exact": {"variant": "onnx-fp32", "settings": {"threads": 2}, "reason": "r"}, "near": {"error": "none"}}
    title, cols, rows, caption = profile_table(prof, tiers, choices)
    assert title == "CPU (2 cores, avx2) - profile k" and caption is None
    hybrid = {**prof, "machine": {**machine, "cores_physical": 14, "cores_performance": 6}}
    assert profile_table(hybrid, tiers, choices)[0] == "CPU (14 cores, 6 fast, avx2) - profile k"
    limited = {**prof, "machine": {**machine, "cpu_quota": 1.5}}
    assert profile_table(limited, tiers, choices)[0] == "CPU (2 cores, CPU quota 1.5, avx2) - profile k"
    cell = {r[0][0]: dict(zip(cols, r)) for r in rows}
    assert cell["onnx-int8-rows"]["alone vs batch"] == ("0.99000", "bad")
    assert cell["onnx-int8-rows"]["cos to exact here"] == ("0.9500", "warn")
    assert cell["onnx-int8-rows"]["tier"] == ("compressed", "") and cell["onnx-int8-rows"]["chosen"] == ("", "")
    assert cell["onnx-fp32"]["chosen"] == ("exact", "") and cell["onnx-fp32"]["short bs=32 /s"] == ("100", "")
    assert cell["openvino-int4"]["bs=1 p50 ms"] == ("cannot compile", "bad")
    _print_table(cols, rows)
    out = capsys.readouterr().out
    assert "0.99000!" in out and "0.9500!" in out and "cannot compile!" in out and "1.00000 " in out
    assert "!: the variant failed here" in out


def test_a_reranker_is_tuned_and_described_the_same_way(tiny_ce_artifact, tmp_path, capsys):
    """A reranker artifact: the table's agreement column is score agreement; info gives no embedding dimension."""
    art = shutil.copytree(tiny_ce_artifact, tmp_path / "rr")
    shutil.rmtree(art / "tuning", ignore_errors=True)
    assert main(["tune", str(art), "--quick", "--variant", "onnx-fp32"]) == 0
    out = capsys.readouterr().out
    assert "score agr. to exact here" in out and (art / "tuning" / f"{machine_key()}.json").is_file()
    assert main(["info", str(art)]) == 0
    out = capsys.readouterr().out
    assert f"artifact {art}: task=reranking max_seq_length=" in out and "dim=" not in out
    assert any(line.startswith("tier near: onnx-fp32 ") and "tuning profile" in line for line in out.splitlines())


# --------------------------------------------------------------------------- an artifact installed read-only
def _read_only_writes(monkeypatch, root):
    """Make every profile write inside ``root`` fail as on a read-only install (EACCES), whoever runs the tests."""
    import errno

    from stedge_runtime import profile

    write = profile._write

    def guarded(file, prof):
        if root.resolve() in file.resolve().parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return write(file, prof)

    monkeypatch.setattr(profile, "_write", guarded)


def test_a_read_only_artifact_keeps_its_profile_in_the_users_folder(app_model, tmp_path, monkeypatch, capsys):
    """Where the artifact's folder cannot be written, the tune writes the profile to the user's profile folder
    ($STEDGE_RUNTIME_PROFILES/<stedge.json sha256>), says so, and Encoder.load picks from it; of a profile there
    and one inside the artifact, the newer counts; an artifact changed since (another stedge.json) reads none."""
    from stedge_runtime.profile import PROFILES_ENV, profile_file, user_profiles

    monkeypatch.setenv(PROFILES_ENV, str(tmp_path / "profiles"))
    _read_only_writes(monkeypatch, app_model)
    assert main(["tune", str(app_model), "--quick", "--variant", "onnx-fp32"]) == 0
    out = capsys.readouterr().out
    user = user_profiles(app_model) / f"{machine_key()}.json"
    assert user.parent.parent == tmp_path / "profiles" and user.is_file()
    assert f"profile written to {user}: the artifact's folder cannot be written here" in out
    assert not (app_model / "tuning").exists()
    sel = Encoder.load(app_model).selection
    assert (sel.source, sel.profile, sel.variant) == ("profile", str(user), "onnx-fp32")
    out = capsys.readouterr().out if main(["info", str(app_model)]) == 0 else ""
    assert "tier near: onnx-fp32 " in out and f"profile for this machine: {user} (tuned " in out  # which one

    mine = json.loads(user.read_text())
    inside = profile_file(app_model, machine_key())
    inside.parent.mkdir()
    older = {**mine, "created": "2000-01-01T00:00:00+00:00"}
    inside.write_text(json.dumps(older))  # shipped with the app, tuned earlier on the same machine key
    assert Encoder.load(app_model).selection.profile == str(user)
    inside.write_text(json.dumps({**mine, "created": "2999-01-01T00:00:00+00:00"}))
    assert Encoder.load(app_model).selection.profile == str(inside)
    inside.write_text("{broken")  # one that does not read is passed over while the other does
    assert Encoder.load(app_model).selection.profile == str(user)
    user.write_text("{broken")
    sel = Encoder.load(app_model).selection
    assert sel.source == "rule" and any("tuning profile ignored" in n for n in sel.notes)
    assert main(["info", str(app_model)]) == 0
    said = capsys.readouterr()
    assert "note: the tuning profile for this machine does not read: `stedge-runtime tune" in said.err
    assert "\nprofile for this machine: " not in said.out

    shutil.rmtree(inside.parent)
    user.write_text(json.dumps(mine))
    manifest = app_model / "stedge.json"
    manifest.write_text(manifest.read_text() + "\n")  # the artifact written again: another id
    assert Encoder.load(app_model).selection.source == "rule"


def test_tune_on_a_read_only_mount(app_model, tmp_path):
    """The real thing, where this process may mount (root): the artifact on a read-only tmpfs, tuned by
    `stedge-runtime tune` in a fresh interpreter; the profile lands in the user's folder and info picks from it."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a read-only tmpfs needs root")
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        art = shutil.copytree(app_model, disk / "model")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
        with pytest.raises(OSError):
            (art / "probe").write_text("x")
        env = {"STEDGE_RUNTIME_PROFILES": str(tmp_path / "profiles")}
        out = _cli("tune", str(art), "--quick", "--variant", "onnx-fp32", env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "the artifact's folder cannot be written here" in out.stdout
        assert len(list((tmp_path / "profiles").glob(f"*/{machine_key()}.json"))) == 1
        info = _cli("info", str(art), env=env)
        assert info.returncode == 0 and "tier near: onnx-fp32 " in info.stdout and "tuning profile" in info.stdout
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_note_every_tier_gives_is_printed_once():
    """A note about the machine (every tier's choice carries it) is printed under the first tier only; each
    tier's own notes and its warnings stay."""
    from stedge_runtime.cli import all_choice_lines

    machine_note = "the CPU's flags come from numpy's run-time detection here"
    choices = {
        t: {"variant": v, "reason": "rule", "notes": [machine_note, f"{t} note"], "warnings": ["careful"]}
        for t, v in (("exact", "openvino-bf16"), ("near", "onnx-int8-rows"), ("compressed", "onnx-int8-rows"))
    }
    lines = all_choice_lines(choices)
    assert [notes for _, _, _, notes in lines] == [[machine_note, "exact note"], ["near note"], ["compressed note"]]
    assert [w for _, _, w, _ in lines] == [["careful"]] * 3
    assert lines[1][1].startswith("tier near: onnx-int8-rows - rule")


def test_info_names_what_it_knows_of_the_machine(monkeypatch):
    """`info`'s machine line: the key, the cores (the fast ones on a hybrid CPU), a container's CPU quota and
    memory limit, and where the flags came from when /proc/cpuinfo did not give them."""
    from stedge_runtime import machine
    from stedge_runtime.cli import machine_line

    facts = {"cpu": "CPU", "cores_physical": 14, "cores_logical": 20, "isa_flags_from": "/proc/cpuinfo"}
    monkeypatch.setattr(machine, "machine_facts", lambda: dict(facts))
    monkeypatch.setattr(machine, "memory_limit_mb", lambda: None)
    key = machine.machine_key(facts)
    assert machine_line() == f"this machine: {key} (14 cores)"
    facts.update(cores_performance=6, cpu_quota=2.5, isa_flags_from="numpy")
    monkeypatch.setattr(machine, "memory_limit_mb", lambda: 1536.0)
    line = machine_line()
    assert line.endswith("(14 cores, 6 fast, CPU quota 2.5, memory limit 1536 MB, CPU flags from numpy)")
    assert line.startswith(f"this machine: {machine.machine_key(facts)} ") and machine.machine_key(facts) != key


def test_info_chooses_for_another_device(app_model):
    """`info --device npu` says what Encoder.load(..., device="npu") takes per tier, by the device's rule, without
    the CPU profile's notes; a device the runtime does not know is exit 2 with the ones it knows."""
    out = _cli("info", str(app_model), "--device", "npu")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "device npu: each tier's choice by the device's rule" in out.stdout
    assert "tier near: openvino-fp32 - rule for device npu" in out.stdout and "no tuning profile" not in out.stderr
    printed = _cli("info", str(app_model), "--device", "npu", "--json").stdout.strip().splitlines()[:-1]
    js = json.loads("\n".join(printed))
    assert js["device"] == "npu" and js["selection"]["near"]["variant"] == "openvino-fp32"
    assert js["selection"]["near"]["excluded"]["onnx-fp32"].startswith("does not run on npu")
    bad = _cli("info", str(app_model), "--device", "tpu")
    assert json.loads(bad.stdout.strip().splitlines()[-1])["rc"] == 2
    assert "device 'tpu' is not one stedge_runtime knows" in bad.stderr
