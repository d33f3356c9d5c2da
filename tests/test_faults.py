"""Faults and hostile files (issue 15): nothing lost, nothing outside the artifact, no traceback.

--overwrite only replaces what stedge wrote; writers of one output take a lock; killed writers leave
temporaries that the next write removes; full, unwritable and vanished outputs leave user files
intact; every error is one line with the exit-code contract (2 bad input, 1 failed check, 3 bug);
training never loses checkpoints; every file of an artifact and of a model folder damaged in turn
gives a clear error or the right vectors (tests/faults.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tiny import make_tiny_bert

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtimes" / "python"), env.get("PYTHONPATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def stedge(*args, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`stedge ARGS` in a subprocess (the real entry point with its exit codes)."""
    return subprocess.run(
        [sys.executable, "-m", "stedge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=timeout,
    )


def main_rc(capsys, *args) -> tuple[int, str]:
    """`stedge ARGS` in this process through stedge.cli.main: (exit code, stderr)."""
    from stedge.cli import main

    capsys.readouterr()  # what the test printed before (transformers 5 draws bars when the test saves models)
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
        raise SystemExit(0)
    err = capsys.readouterr().err
    return int(e.value.code or 0), err


def one_line_error(rc: int, err: str, code: int, *words: str) -> None:
    assert rc == code, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("waiting", "warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def artifact(tiny_model, tmp_path_factory) -> Path:
    """A tiny artifact with onnx-fp32 and one int8 variant."""
    from stedge.export import export_model

    out = tmp_path_factory.mktemp("faults") / "art"
    export_model(str(tiny_model), out, quantize="int8-dynamic", isa="avx2")
    return out


@pytest.fixture(scope="module")
def artifact_external(tiny_model, tmp_path_factory) -> Path:
    """A tiny artifact whose graphs keep their weights in external data files (as graphs over 32 MB do)."""
    from stedge.export import export_model
    from stedge.export import onnx_graph as ox

    out = tmp_path_factory.mktemp("faults") / "art-ext"
    saved = ox.EXTERNAL_DATA_THRESHOLD
    ox.EXTERNAL_DATA_THRESHOLD = 1 << 10
    try:
        export_model(str(tiny_model), out)
    finally:
        ox.EXTERNAL_DATA_THRESHOLD = saved
    assert any("data" in p.name for p in (out / "onnx").iterdir())
    return out


# ------------------------------------------------------------------ 1. --overwrite
def test_overwrite_refuses_what_stedge_did_not_write(tiny_model, tmp_path, capsys, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    (proj / "main.py").write_text("print(1)")
    before = snapshot(proj)
    monkeypatch.chdir(proj)
    cases = [
        (".", "is the working directory"),
        (str(proj), "is the working directory"),
        (str(tmp_path), "ancestor of the working directory"),
        ("main.py", "is a file"),
        (str(tiny_model), "source model"),
        (str(tiny_model / "1_Pooling"), "source model"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    cases.append((str(other), "not a model folder"))
    mixed = make_tiny_bert(tmp_path / "mixed")
    (mixed / "train.py").write_text("# my script")
    cases.append((str(mixed), "train.py"))
    link = tmp_path / "link"
    link.symlink_to(other)
    cases.append((str(link), "symbolic link"))
    for out, words in cases:
        rc, err = main_rc(capsys, "export", tiny_model, "-o", out, "--overwrite")
        one_line_error(rc, err, 2, "--overwrite", words)
    assert snapshot(proj) == before and (other / "thesis.tex").read_text() == "years of work"
    assert (mixed / "train.py").exists() and (tiny_model / "1_Pooling" / "config.json").exists()


def test_overwrite_replaces_an_artifact_and_add_refuses_a_model_folder(artifact, tiny_model, tmp_path, capsys):
    from stedge.export import export_model
    from stedge.io import check_replaceable

    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    check_replaceable(copy)  # an artifact stedge wrote: replaceable
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    res = export_model(str(tiny_model), copy, overwrite=True)
    assert set(res.manifest["variants"]) == {"onnx-fp32"}
    model_copy = tmp_path / "m"
    shutil.copytree(tiny_model, model_copy)
    rc, err = main_rc(capsys, "export", tiny_model, "-o", model_copy, "--add")
    one_line_error(rc, err, 2, "--add", "no stedge.json")


# ------------------------------------------------------------------ 2. locks, kills, stale temporaries
HOLDER = textwrap.dedent("""
    import sys, time
    from stedge.io import atomic_dir
    with atomic_dir(sys.argv[1], overwrite=True) as tmp:
        (tmp / "modules.json").write_text("[]")
        (tmp / "big.bin").write_bytes(b"x" * 1000)
        print("inside", flush=True)
        time.sleep(float(sys.argv[2]))
        (tmp / "done.txt").write_text(sys.argv[3])
""")


def _holder(out: Path, sleep: float, tag: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(sleep), tag],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return p


def test_kill_9_leaves_the_old_output_and_the_next_write_cleans_up(tmp_path):
    from stedge.io import atomic_dir

    out = tmp_path / "out"
    make_tiny_bert(out)
    before = snapshot(out)
    p = _holder(out, 60, "a")
    assert p.stdout.readline().strip() == "inside"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    stale = [q for q in tmp_path.iterdir() if ".stedge-tmp." in q.name]
    assert stale and snapshot(out) == before  # killed mid-write: the old output is whole
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "modules.json").write_text("[]")
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")], list(tmp_path.iterdir())


def test_killed_during_the_final_swap_puts_the_old_version_back(tmp_path):
    from stedge.io import OLD_TAG, clean_stale

    out = tmp_path / "out"
    out.mkdir()
    (out / "stedge.json").write_text("{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out.rename(tmp_path / f".out.{OLD_TAG}.{pid}")  # renamed away, then killed before the new one moved in
    nested = tmp_path / f"..out.stedge-tmp.{pid}.ab12cd34.stedge-tmp.{pid}.ef56ab78"  # older stedge nested these
    nested.mkdir()
    mine = tmp_path / f".out.stedge-tmp.{os.getpid()}.0123abcd"  # a live writer's: kept
    mine.mkdir()
    clean_stale(out)
    assert (out / "stedge.json").read_text() == "{}" and not nested.exists() and mine.exists()


def test_second_writer_waits_for_the_lock_then_sees_the_first(tmp_path):
    out = tmp_path / "out"
    first = _holder(out, 3, "first")
    assert first.stdout.readline().strip() == "inside"
    second = _holder(out, 0, "second")
    _, err2 = second.communicate(timeout=120)
    first.wait(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err2
    assert "waiting: another stedge process" in err2
    assert (out / "done.txt").read_text() == "second"  # in turn, never interleaved
    env = dict(os.environ, STEDGE_LOCK_TIMEOUT="0.5")
    holder = _holder(out, 5, "x")
    assert holder.stdout.readline().strip() == "inside"
    r = subprocess.run(
        [sys.executable, "-c", HOLDER, str(out), "0", "y"],
        env={**_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    holder.wait(timeout=60)
    assert r.returncode != 0 and "being written by another stedge process" in r.stderr


def test_concurrent_add_keeps_both_variants_and_concurrent_exports_do_not_clobber(artifact, tiny_model, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)

    def add(level: str) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "stedge.cli",
            "export",
            str(tiny_model),
            "-o",
            str(copy),
            "--add",
            "--optimize",
            level,
            "--json",
        ]
        return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a, b = add("O1"), add("O2")
    new = tmp_path / "new"
    c = stedge("export", tiny_model, "-o", new)
    d = stedge("export", tiny_model, "-o", new)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    variants = json.loads((copy / "stedge.json").read_text())["variants"]
    assert {"onnx-fp32-O1", "onnx-fp32-O2", "onnx-int8-avx2"} <= set(variants)
    assert c.returncode == 0 and d.returncode == 2 and "already exists" in d.stderr


# ------------------------------------------------------------------ 7. exit codes, one-line errors
def test_exit_code_contract(tmp_path, capsys, monkeypatch):
    rc, err = main_rc(capsys, "embed", tmp_path / "nope", "x")
    assert rc == 2 and err.startswith("error: model") and "not found" in err and "Traceback" not in err
    rc, err = main_rc(capsys, "nosuchcommand")
    assert rc == 2
    import stedge.models.cli as mcli

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(mcli, "_load_encoder", bug)
    rc, err = main_rc(capsys, "embed", tmp_path, "x")
    one_line_error(rc, err, 3, "internal error", "ZeroDivisionError", "--debug")
    monkeypatch.setenv("STEDGE_DEBUG", "1")
    rc, err = main_rc(capsys, "embed", tmp_path, "x")
    assert rc == 3 and "Traceback" in err and "internal error" in err


def test_bad_text_and_files_are_one_line(tiny_model, artifact, tmp_path, capsys):
    binary = tmp_path / "blob.dat"
    binary.write_bytes(bytes(range(256)) * 10)
    for model in (artifact, tiny_model):
        rc, err = main_rc(capsys, "embed", model, "caf\udce9")
        one_line_error(rc, err, 2, "not valid Unicode")
        rc, err = main_rc(capsys, "embed", model, "--file", binary)
        one_line_error(rc, err, 2, "blob.dat", "not UTF-8")
        rc, err = main_rc(capsys, "embed", model, "--file", tmp_path)
        one_line_error(rc, err, 2, "is a folder")
    existing = tmp_path / "existing"
    existing.mkdir()
    for out, words in (
        (existing, "is a folder"),
        (".", "is a folder"),
        (tmp_path / "e.txt", ".npy"),
        (tmp_path / "nodir" / "e.npy", "does not exist"),
    ):
        rc, err = main_rc(capsys, "embed", artifact, "hello", "-o", out)
        one_line_error(rc, err, 2, words)
    assert not (tmp_path / "existing.npy").exists() and list(existing.iterdir()) == []


def test_encode_refuses_dicts_and_sets(tiny_model, artifact):
    from stedge_runtime import Encoder

    from stedge.models import SentenceEncoder

    for enc in (SentenceEncoder(tiny_model, device="cpu"), Encoder.load(artifact)):
        for bad in ({"a": 1}, {"a", "b"}, b"bytes"):
            with pytest.raises(TypeError, match="sequence of strings"):
                enc.encode(bad)
        with pytest.raises(ValueError, match="lone surrogate"):
            enc.encode(["ok", "\ud800"])
        assert enc.encode(("a", "b")).shape == (2, 32)


def test_folder_with_graphs_but_no_manifest(artifact, tmp_path, capsys):
    graphs_only = tmp_path / "g"
    (graphs_only / "onnx").mkdir(parents=True)
    shutil.copy(artifact / "onnx" / "model.onnx", graphs_only / "onnx" / "model.onnx")
    shutil.copy(artifact / "tokenizer.json", graphs_only / "tokenizer.json")
    rc, err = main_rc(capsys, "embed", graphs_only, "x")
    one_line_error(rc, err, 2, "no stedge.json")
    lost = tmp_path / "lost"
    shutil.copytree(artifact, lost)
    (lost / "stedge.json").unlink()
    rc, err = main_rc(capsys, "embed", lost, "x", "--json")
    assert rc == 0 and "no stedge.json: running its torch weights with PyTorch" in err


def test_eval_limit_zero_is_an_error(tiny_model, tmp_path, capsys):
    data = tmp_path / "sts.tsv"
    data.write_text("sentence1\tsentence2\tscore\n" + "".join(f"a {i}\tb {i}\t{i % 5}\n" for i in range(10)))
    rc, err = main_rc(capsys, "eval", tiny_model, "--data", data, "--task", "sts", "--limit", "0")
    one_line_error(rc, err, 2, "--limit must be an integer >= 1")


# ------------------------------------------------------------------ full, unwritable, vanished outputs
def _tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_full_disk_during_export_leaves_nothing_and_the_old_output_whole(
    artifact, tiny_model, tmp_path, capsys, monkeypatch
):
    disk = tmp_path / "disk"
    if _tmpfs(disk, "size=1m"):  # a real full disk: the model is 4 MB
        try:
            (disk / "keep.txt").write_text("user file")
            rc, err = main_rc(capsys, "export", tiny_model, "-o", disk / "art")
            one_line_error(rc, err, 2, "cannot write", "nothing was written")
            assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]
        finally:
            _umount(disk)
    # simulated ENOSPC (machines without tmpfs): while replacing an existing artifact
    import errno

    from stedge.export import onnx_graph as ox

    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    before = snapshot(out)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ox, "export_onnx", full)
    rc, err = main_rc(capsys, "export", tiny_model, "-o", out, "--overwrite")
    one_line_error(rc, err, 2, "No space left on device", "nothing was written")
    assert snapshot(out) == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unwritable_output_is_found_before_the_work(artifact, tiny_model, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    mounted = _tmpfs(ro, "ro,size=1m")
    if not mounted:
        ro.chmod(0o555)
        if os.access(ro, os.W_OK):
            pytest.skip("cannot make an unwritable folder here (root without mount)")
    import stedge_runtime

    import stedge.export.core as core

    calls = []

    def must_not_load(*a, **k):
        calls.append(a)
        raise AssertionError("loaded before checking the output")

    monkeypatch.setattr(core, "load_model", must_not_load)
    monkeypatch.setattr(stedge_runtime.Encoder, "load", must_not_load)
    try:
        rc, err = main_rc(capsys, "export", tiny_model, "-o", ro / "art")
        one_line_error(rc, err, 2, "cannot write")
        rc, err = main_rc(capsys, "embed", artifact, "hello", "-o", ro / "e.npy")
        one_line_error(rc, err, 2, "cannot write")
        assert calls == []  # refused before loading anything
    finally:
        if mounted:
            _umount(ro)
        else:
            ro.chmod(0o755)


def test_vanished_output_folder(tiny_model, tmp_path, capsys, monkeypatch):
    """The output's parent disappears while the export runs: one line, and nothing written elsewhere."""
    import stedge.export.build as build

    parent = tmp_path / "gone"
    parent.mkdir()
    real = build.build_all

    def vanish(*a, **k):
        m = real(*a, **k)
        shutil.rmtree(parent)
        return m

    monkeypatch.setattr(build, "build_all", vanish)
    rc, err = main_rc(capsys, "export", tiny_model, "-o", parent / "art")
    one_line_error(rc, err, 2, "vanished", "nothing was written")
    assert not parent.exists()


# ------------------------------------------------------------------ 6. training recovery
def test_rerun_without_resume_keeps_checkpoints_and_resume_reports_the_right_loss(tiny_model, tmp_path):
    from stedge.errors import StedgeError
    from stedge.training.config import config_from_dict, run_training

    data = tmp_path / "sts.tsv"
    rows = "".join(f"text {i}\tother {i % 7}\t{(i % 5) / 4}\n" for i in range(64))
    data.write_text("sentence1\tsentence2\tscore\n" + rows)
    out = tmp_path / "out"

    def cfg(steps: int):
        return config_from_dict(
            {
                "model": str(tiny_model),
                "output": str(out),
                "train_data": str(data),
                "loss": "cosent",
                "args": {
                    "max_steps": steps,
                    "save_steps": 2,
                    "logging_steps": 1,
                    "per_device_train_batch_size": 8,
                    "use_cpu": True,
                    "report_to": [],
                },
            },
            where="test",
        )

    run_training(cfg(4), device="cpu", keep_checkpoints=True)
    shutil.rmtree(out)  # as if killed after checkpoint-4, before the final save
    ckpts = sorted(p.name for p in Path(f"{out}_checkpoints").iterdir())
    with pytest.raises(StedgeError, match="checkpoints of an earlier run.*--resume"):
        run_training(cfg(8), device="cpu")
    assert sorted(p.name for p in Path(f"{out}_checkpoints").iterdir()) == ckpts
    summary = run_training(cfg(8), resume=True, device="cpu", keep_checkpoints=True)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    state = json.loads((Path(f"{out}_checkpoints") / "checkpoint-8" / "trainer_state.json").read_text())
    step_losses = [e["loss"] for e in state["log_history"] if "loss" in e and e["step"] > 4]
    assert len(step_losses) == 4
    assert summary["train_loss"] == pytest.approx(float(np.mean(step_losses)), abs=1e-3)
    assert f"| train_loss | {summary['train_loss']:.4f} |" in (out / "README.md").read_text()


def test_bench_suite_with_a_wrong_type_is_one_line(tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text('name = "x"\nthreads = "many"\n[[models]]\nref = "all-MiniLM-L6-v2"\n')
    rc, err = main_rc(capsys, "bench", suite)
    one_line_error(rc, err, 2, "threads must be an integer", "'many'")


# ------------------------------------------------------------------ 3/4/7. hostile or wrong manifests
def _edit(folder: Path, fn) -> None:
    data = json.loads((folder / "stedge.json").read_text())
    fn(data)
    (folder / "stedge.json").write_text(json.dumps(data))


MANIFEST_FAULTS = {
    "dimension wrong": (lambda m: m.update(dimension=31), "dimension"),
    "dimension a string": (lambda m: m.update(dimension="32"), "dimension"),
    "max_seq_length beyond the positions": (lambda m: m.update(max_seq_length=4096), "max_seq_length"),
    "max_seq_length zero": (lambda m: m.update(max_seq_length=0), "max_seq_length"),
    "format_version newer": (lambda m: m.update(format_version=99), "format_version"),
    "file ../..": (lambda m: m["variants"]["onnx-fp32"].update(file="../../etc/passwd"), "inside the artifact"),
    "file absolute": (lambda m: m["variants"]["onnx-fp32"].update(file="/etc/passwd"), "inside the artifact"),
    "tokenizer absolute": (lambda m: m.update(tokenizer="/etc/passwd"), "tokenizer"),
    "sha256 key ../": (
        lambda m: m["variants"]["onnx-fp32"].update(
            sha256={"onnx/model.onnx": m["variants"]["onnx-fp32"]["sha256"]["onnx/model.onnx"], "../x": "0" * 64}
        ),
        "inside the artifact",
    ),
    "sha256 removed": (lambda m: m["variants"]["onnx-fp32"].pop("sha256"), "sha256"),
    "variants empty": (lambda m: m.update(variants={}), "variants"),
    "not an object": (lambda m: m.clear(), "format_version"),
}


@pytest.mark.parametrize("fault", list(MANIFEST_FAULTS))
def test_wrong_manifest_is_one_line(artifact, tmp_path, capsys, fault):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    edit, words = MANIFEST_FAULTS[fault]
    _edit(art, edit)
    long_text = " ".join(["word"] * 300)
    rc, err = main_rc(capsys, "embed", art, "hello", long_text, "--variant", "onnx-fp32")
    one_line_error(rc, err, 2, words)


def test_symlinks_out_of_the_artifact_and_to_devices(artifact, tmp_path):
    from stedge_runtime import Encoder
    from stedge_runtime.errors import ArtifactError

    outside = tmp_path / "outside.onnx"
    shutil.copy(artifact / "onnx" / "model.onnx", outside)
    for target in (outside, Path("/dev/zero")):
        art = tmp_path / f"art-{target.name}"
        shutil.copytree(artifact, art)
        (art / "onnx" / "model.onnx").unlink()
        (art / "onnx" / "model.onnx").symlink_to(target)
        with pytest.raises(ArtifactError, match="outside the artifact|not a regular file"):
            Encoder.load(art, variant="onnx-fp32", verify=True)
    art = tmp_path / "art-manifest"
    shutil.copytree(artifact, art)
    (art / "stedge.json").unlink()
    (art / "stedge.json").symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="not a regular file"):
        Encoder.load(art)


def test_cached_verification_catches_a_rewrite_that_keeps_the_mtime(artifact, tmp_path, monkeypatch):
    from stedge_runtime import Encoder
    from stedge_runtime.errors import ArtifactError

    monkeypatch.setenv("STEDGE_RUNTIME_CACHE", str(tmp_path / "cache"))
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    Encoder.load(art, variant="onnx-fp32")  # hashed once, remembered
    graph = art / "onnx" / "model.onnx"
    st = graph.stat()
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime, same inode
    import stedge_runtime.artifact as artifact_mod

    artifact_mod._verified.clear()  # a new process: only the on-disk cache remains
    with pytest.raises(ArtifactError, match="sha256"):
        Encoder.load(art, variant="onnx-fp32")


# ------------------------------------------------------------------ 9. runtime-only artifacts
def test_pack_ships_only_what_the_runtime_reads(artifact, tmp_path, capsys):
    from stedge_runtime import Encoder

    out = tmp_path / "app"
    rc, err = main_rc(capsys, "pack", artifact, "-o", out, "--variant", "onnx-int8-avx2")
    assert rc == 0, err
    assert f"`stedge-runtime tune {out}` there" in err  # how the device it ships to gets its profile
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["onnx/model_qint8_avx2.onnx", "stedge.json", "tokenizer.json"]
    m = json.loads((out / "stedge.json").read_text())
    assert list(m["variants"]) == ["onnx-int8-avx2"] and m["default_variant"] == "onnx-int8-avx2"
    texts = ["A man is playing a guitar.", "ok"]
    got = Encoder.load(out, variant="onnx-int8-avx2", verify=True).encode(texts)
    ref = Encoder.load(artifact, variant="onnx-int8-avx2").encode(texts)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    rc, err = main_rc(capsys, "pack", artifact, "-o", tmp_path / "x", "--variant", "onnx-fp99")
    one_line_error(rc, err, 2, "onnx-fp99")
    # without --variant: what Encoder.load picks for the tier here (not the last export's default_variant)
    for tier in ("exact", "compressed"):
        rc, err = main_rc(capsys, "pack", artifact, "-o", tmp_path / tier, "--tier", tier)
        assert rc == 0, err
        packed = json.loads((tmp_path / tier / "stedge.json").read_text())
        want = Encoder.load(artifact, tier=tier).selection
        assert list(packed["variants"]) == [n for n in (want.variant, want.latency_variant) if n]
        assert Encoder.load(tmp_path / tier, tier=tier).variant == want.variant
    rc, err = main_rc(capsys, "pack", artifact, "-o", artifact, "--overwrite")
    one_line_error(rc, err, 2, "source model")
    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    graph = bad / "onnx" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    rc, err = main_rc(capsys, "pack", bad, "-o", tmp_path / "y", "--variant", "onnx-fp32")
    one_line_error(rc, err, 2, "sha256")
    assert not (tmp_path / "y").exists()


def test_every_writing_command_refuses_an_unwritable_output_before_its_work(artifact, tiny_model, tmp_path, capsys):
    ro = tmp_path / "ro"
    mounted = _tmpfs(ro, "ro,size=1m")
    if not mounted:
        ro.chmod(0o555)
        if os.access(ro, os.W_OK):
            pytest.skip("cannot make an unwritable folder here (root without mount)")
    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"sentence {i}" for i in range(40)))
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "x"\n[[models]]\nref = "{tiny_model}"\n')
    commands = {
        "export": ["export", tiny_model, "-o", ro / "o"],
        "embed": ["embed", artifact, "x", "-o", ro / "o.npy"],
        "train": ["train", tiny_model, "--train-data", data, "--loss", "mnrl", "-o", ro / "o"],
        "pca": ["pca", tiny_model, "--dim", "4", "--data", data, "-o", ro / "o"],
        "distill": ["distill", tiny_model, "--num-layers", "1", "--data", data, "-o", ro / "o"],
        "pack": ["pack", artifact, "-o", ro / "o"],
        "bench": ["bench", suite, "--out", ro / "o"],
    }
    try:
        for name, argv in commands.items():
            t0 = time.perf_counter()
            rc, err = main_rc(capsys, *argv)
            one_line_error(rc, err, 2, "cannot write")
            assert time.perf_counter() - t0 < 60, name  # refused before the work, not after it
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            _umount(ro)
        else:
            ro.chmod(0o755)


@pytest.fixture(scope="module")
def reranker_artifact(tiny_cross_encoder, tmp_path_factory) -> Path:
    from stedge.export import export_model

    out = tmp_path_factory.mktemp("faults") / "rr-art"
    export_model(str(tiny_cross_encoder), out)
    return out


def test_fault_injection_over_every_file(
    artifact, artifact_external, reranker_artifact, tiny_model, tiny_cross_encoder, tmp_path
):
    """tests/faults.py in a subprocess (memory-capped): every fault on every file gives a clear error or
    the right vectors, never a hang, a traceback or silently wrong vectors."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "faults.json"
    r = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("faults.py")),
            "--json",
            str(out),
            f"artifact={artifact}",
            f"artifact-external-data={artifact_external}",
            f"model={model}",
            f"reranker-artifact={reranker_artifact}",
            f"reranker-model={tiny_cross_encoder}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    outcomes = json.loads(out.read_text())
    bad = [o for kind in outcomes.values() for o in kind if o["kind"] not in ("error", "same")]
    assert not bad, bad
    assert sum(o["kind"] == "error" for o in outcomes["artifact"]) >= 8 * 4  # manifest, tokenizer, two graphs
    ext = [o for o in outcomes["artifact-external-data"] if "data" in o["file"] and o["file"].startswith("onnx/")]
    assert ext and all(o["kind"] == "error" for o in ext), ext
    assert sum(o["kind"] == "error" for o in outcomes["model"]) >= 8 * 5


def test_embed_output_folder_vanishes_during_the_work(artifact, tmp_path, capsys, monkeypatch):
    import stedge.models.cli as mcli

    parent = tmp_path / "gone"
    parent.mkdir()
    real = mcli._encode

    def vanish(*a, **k):
        out = real(*a, **k)
        shutil.rmtree(parent)
        return out

    monkeypatch.setattr(mcli, "_encode", vanish)
    rc, err = main_rc(capsys, "embed", artifact, "hello", "-o", parent / "e.npy")
    one_line_error(rc, err, 2, "gone")
    assert not parent.exists() and not list(tmp_path.rglob("*.npy"))


def test_pack_and_embed_on_a_full_disk_leave_the_user_files(artifact, tmp_path, capsys, monkeypatch):
    import errno

    disk = tmp_path / "disk"
    if _tmpfs(disk, "size=1m"):  # the artifact's graphs are 5 MB
        try:
            (disk / "keep.txt").write_text("user file")
            rc, err = main_rc(capsys, "pack", artifact, "-o", disk / "app", "--variant", "onnx-fp32")
            one_line_error(rc, err, 2, "cannot write")
            assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]
        finally:
            _umount(disk)
    import numpy

    out = tmp_path / "e.npy"
    numpy.save(out, numpy.zeros(3))
    before = out.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(numpy, "save", full)
    rc, err = main_rc(capsys, "embed", artifact, "hello", "-o", out)
    one_line_error(rc, err, 2, "No space left on device")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["disk", "e.npy"]


def test_missing_hashes_need_an_explicit_opt_out(artifact, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    _edit(art, lambda m: [v.pop("sha256") for v in m["variants"].values()])
    rc, err = main_rc(capsys, "embed", art, "hello", "--variant", "onnx-fp32", "--json")
    one_line_error(rc, err, 2, "sha256", "--no-verify")
    rc, err = main_rc(capsys, "embed", art, "hello", "--variant", "onnx-fp32", "--json", "--no-verify")
    assert rc == 0, err


def _wait_for_temporary(parent: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not [q for q in parent.iterdir() if ".stedge-tmp." in q.name]:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


# `stedge export` whose verification waits for a signal: the export sits inside its temporary folder for as long
# as a test needs (a plain tiny export leaves it after about a second, too short to hit reliably under load)
# (HELD_MARKER is created when it gets there: a signal then lands in Python code, not inside a native library;
# the wait is in short sleeps because the kernel may hand SIGINT to an engine's thread, which does not wake the main
# thread from one long sleep, and Python raises KeyboardInterrupt only when the main thread runs again)
_HELD_EXPORT = """
import faulthandler, os, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # _interrupted: where a process that hangs is stuck
import stedge.export.verify as verify
compare = verify.Reference.compare
def held(self, *args, **kwargs):
    open(os.environ["HELD_MARKER"], "w").close()
    for _ in range(6000):
        time.sleep(0.1)
    return compare(self, *args, **kwargs)
verify.Reference.compare = held
from stedge.cli import run
run()
"""


def _ctrl_c_default() -> None:
    """Run in the child before exec: SIGINT at its default, as for a command started from a terminal. A shell's
    background job (`make test &`, a CI step run so) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so a test's Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(p: subprocess.Popen, timeout: float = 120, sig: int = signal.SIGINT) -> str:
    """Ctrl-C (or ``sig``) to ``p``; its stderr once it has exited. A process still running after ``timeout`` seconds
    is made to print every thread's stack (SIGUSR1, registered by _HELD_EXPORT) and killed, and the test fails with
    that."""
    p.send_signal(sig)
    try:
        return p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGUSR1)
        time.sleep(2)
        p.kill()
        err = p.communicate(timeout=60)[1]
        pytest.fail(f"still running {timeout:.0f} s after signal {sig}; its threads then:\n{err}")


def _held_export(tiny_model: Path, tmp_path: Path) -> tuple[subprocess.Popen, list[str], dict[str, str]]:
    """Start _HELD_EXPORT into ``tmp_path / "art"`` and wait until it sits in its temporary folder; the process, its
    command and environment."""
    cmd = [sys.executable, "-c", _HELD_EXPORT, "export", str(tiny_model), "-o", str(tmp_path / "art")]
    marker = tmp_path.parent / f"{tmp_path.name}.held"
    env = {**_env(), "HELD_MARKER": str(marker), "PYTHONFAULTHANDLER": "1"}
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default
    )
    deadline = time.time() + 300
    while not marker.exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.05)
    assert [q for q in tmp_path.iterdir() if ".stedge-tmp." in q.name]
    return p, cmd, env


def test_killed_or_interrupted_export_leaves_nothing_behind_after_the_next_run(tiny_model, tmp_path):
    out = tmp_path / "art"
    p, cmd, env = _held_export(tiny_model, tmp_path)
    err = _interrupted(p)
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, (p.returncode, err)
    assert list(tmp_path.iterdir()) == []  # Ctrl-C: the temporary is removed at once
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_temporary(tmp_path, p)
    p.kill()
    p.wait(timeout=60)
    assert not out.exists() and [q for q in tmp_path.iterdir() if ".stedge-tmp." in q.name]
    r = stedge("export", tiny_model, "-o", out)
    assert r.returncode == 0, r.stderr
    assert [q.name for q in tmp_path.iterdir()] == ["art"]  # the dead writer's temporary is gone


def test_a_terminated_export_removes_its_temporary_at_once_and_exits_143(tiny_model, tmp_path):
    """SIGTERM (a `kill`, `timeout`, a container or CI job stopping) unwinds like Ctrl-C: by default it killed the
    process where it stood, and the temporary output waited for the next export to the same place to clean it."""
    p, _, _ = _held_export(tiny_model, tmp_path)
    err = _interrupted(p, sig=signal.SIGTERM)
    assert p.returncode == 143 and "terminated" in err and "Traceback" not in err, (p.returncode, err)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_after_the_output_is_in_place_breaks_nothing(tiny_model, artifact, tmp_path):
    """Ctrl-C pressed again and again once the artifact is in place: what is left (the report, then about a second
    of interpreter teardown with torch loaded) stops cleanly, 0 or 130, and the artifact is whole. In teardown it
    was a KeyboardInterrupt from an atexit hook, death by SIGINT (-2) or, now and then, a crash."""
    from stedge_runtime import Encoder

    out = tmp_path / "art"
    cmd = [sys.executable, "-m", "stedge.cli", "export", str(tiny_model), "-o", str(out)]
    p = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default
    )
    deadline = time.time() + 300
    while not out.exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.01)
    while p.poll() is None and time.time() < deadline:
        p.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = p.communicate(timeout=120)
    assert p.returncode in (0, 130) and "Traceback" not in err and "KeyboardInterrupt" not in err, (p.returncode, err)
    assert Encoder.load(out).encode(["a"]).shape == Encoder.load(artifact).encode(["a"]).shape


def test_typer_exit_codes_pass_through_main(capsys, monkeypatch):
    import typer

    import stedge.models.cli as mcli

    def failed(*a, **k):
        raise typer.Exit(1)

    monkeypatch.setattr(mcli, "_load_encoder", failed)
    rc, _ = main_rc(capsys, "embed", ".", "x")
    assert rc == 1


def test_tables_are_read_by_the_one_streaming_reader_and_bad_records_name_their_line(tmp_path):
    """read_rows (training/eval tables) and iter_table (corpus) parse alike; read_rows is strict."""
    import gzip

    from stedge.data import read_rows
    from stedge.errors import InvalidInputError

    good = tmp_path / "pairs.tsv.gz"
    with gzip.open(good, "wt", encoding="utf-8") as f:
        f.write('\ufeffsentence1\tsentence2\tscore\n"a, quoted"\tb\t1.5\n\nc\td\t0\n')
    assert read_rows(good) == [
        {"sentence1": "a, quoted", "sentence2": "b", "score": "1.5"},
        {"sentence1": "c", "sentence2": "d", "score": "0"},
    ]
    short = tmp_path / "short.csv"
    short.write_text("anchor,positive\nx,y\nlonely\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"short\.csv:3: 1 fields, the header has 2"):
        read_rows(short)
    broken = tmp_path / "rows.jsonl"
    broken.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InvalidInputError, match=r"rows\.jsonl:2: not UTF-8 \(byte 0xe9"):
        read_rows(broken)
