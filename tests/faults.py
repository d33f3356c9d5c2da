"""Fault injection over the files of an artifact or a model folder (used by test_faults.py).

Each fault damages one file of a copy of a known-good folder, then loads and runs it the way a user
would (the torch-free runtime for an artifact, SentenceEncoder for a model folder) in a worker
thread with a time limit, and classifies what happened:

* ``error``: a StedgeError (one line, meant for people) - fine;
* ``same``: the result equals the undamaged folder's (the file is not used on this path) - fine;
* ``WRONG``: it ran and gave other vectors without a word - a defect;
* ``TRACEBACK``: another exception (what the CLI would show as an internal error) - a defect;
* ``HANG``: it did not finish in time - a defect.

``python tests/faults.py ARTIFACT MODEL`` prints the table as markdown.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

TEXTS = ["A man is playing a guitar.", "café au lait", "ok", "The quarterly report shows revenue grew."]
FAULTS = ("delete", "truncate", "corrupt", "garbage", "empty", "symlink-dev-zero", "swap", "folder")
TIME_LIMIT_S = 120.0


@dataclass
class Outcome:
    fault: str
    file: str
    kind: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.kind in ("error", "same")


def files_of(folder: Path) -> list[str]:
    """Every regular file under ``folder``, relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def inject(folder: Path, rel: str, fault: str) -> None:
    """Damage ``folder/rel`` in place."""
    p = folder / rel
    data = p.read_bytes()
    if fault == "delete":
        p.unlink()
    elif fault == "truncate":
        p.write_bytes(data[: len(data) // 2])
    elif fault == "corrupt":  # same size, bytes in the middle changed
        mid = len(data) // 2
        n = max(1, min(64, len(data) // 8))
        p.write_bytes(data[:mid] + bytes((b ^ 0x5A) for b in data[mid : mid + n]) + data[mid + n :])
    elif fault == "garbage":
        p.write_bytes(os.urandom(max(16, min(len(data), 4096))))
    elif fault == "empty":
        p.write_bytes(b"")
    elif fault == "symlink-dev-zero":
        p.unlink()
        p.symlink_to("/dev/zero")
    elif fault == "swap":  # this file gets the content of another file of the folder
        others = [f for f in files_of(folder) if f != rel and (folder / f).stat().st_size != len(data)]
        other = min(others, key=lambda f: abs((folder / f).stat().st_size - len(data)))
        p.write_bytes((folder / other).read_bytes())
    elif fault == "folder":
        p.unlink()
        p.mkdir()
        (p / "x").write_text("x")
    else:
        raise ValueError(fault)


def run_limited(fn: Callable[[], np.ndarray], limit: float = TIME_LIMIT_S) -> tuple[str, object]:
    """Run ``fn`` in a daemon thread: ('ok', value) / ('exc', exception) / ('hang', None)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - classified by the caller
            box["exc"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        return "hang", None
    return ("exc", box["exc"]) if "exc" in box else ("ok", box["value"])


def classify(fault: str, rel: str, status: str, value: object, reference: np.ndarray) -> Outcome:
    from stedge_runtime.errors import RuntimeStedgeError

    from stedge.errors import StedgeError

    if status == "hang":
        return Outcome(fault, rel, "HANG", f"no result in {TIME_LIMIT_S:g} s")
    if status == "exc":
        e = value
        msg = " ".join(str(e).split())[:160]
        if isinstance(e, (StedgeError, RuntimeStedgeError)) and "\n" not in str(e).strip():
            return Outcome(fault, rel, "error", msg)
        return Outcome(fault, rel, "TRACEBACK", f"{type(e).__name__}: {msg}")
    got = np.asarray(value)
    if got.shape == reference.shape and np.allclose(got, reference, atol=1e-5):
        return Outcome(fault, rel, "same", "")
    diff = np.abs(got - reference).max() if got.shape == reference.shape else "n/a"
    return Outcome(fault, rel, "WRONG", f"shape {got.shape}, max diff {diff}")


def encode_artifact(folder: Path, variants: list[str]) -> np.ndarray:
    """Every variant of ``variants`` (those of the undamaged artifact), each loaded by name, hashes checked."""
    from stedge_runtime import Encoder

    return np.concatenate([Encoder.load(folder, variant=n, verify=True).encode(TEXTS) for n in variants])


def artifact_runner(good: Path) -> Callable[[Path], np.ndarray]:
    from stedge_runtime.artifact import Manifest

    m = Manifest.read(good)
    names = list(m.variants)
    if m.task == "reranking":
        return lambda folder: score_artifact(folder, names)
    return lambda folder: encode_artifact(folder, names)


PAIRS = [("what is a cat", "A cat is a small feline."), ("what is a cat", "Stocks fell."), ("q", "")]


def score_artifact(folder: Path, variants: list[str]) -> np.ndarray:
    """Reranker artifacts: scores of every variant of the undamaged artifact, hashes checked."""
    from stedge_runtime import Reranker

    return np.concatenate([Reranker.load(folder, variant=n, verify=True).predict(PAIRS) for n in variants])


def score_model(folder: Path) -> np.ndarray:
    from stedge.models import CrossEncoder

    return np.asarray(CrossEncoder(folder, device="cpu").predict(PAIRS))


def encode_model(folder: Path) -> np.ndarray:
    from stedge.models import SentenceEncoder

    return SentenceEncoder(folder, device="cpu").encode(TEXTS)


def run_fault(
    good: Path, work: Path, rel: str, fault: str, runner: Callable[[Path], np.ndarray], reference: np.ndarray
) -> Outcome:
    """Copy ``good`` to ``work``, damage ``rel`` with ``fault``, run, classify; ``work`` is removed after."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(good, work, symlinks=True)
    status = "exc"
    try:
        inject(work, rel, fault)
        status, value = run_limited(lambda: runner(work))
        return classify(fault, rel, status, value, reference)
    finally:
        if status != "hang":
            shutil.rmtree(work, ignore_errors=True)


def table(outcomes: list[Outcome]) -> str:
    """Markdown: one row per file, one column per fault, cells = outcome kind."""
    files = sorted({o.file for o in outcomes})
    faults = [f for f in FAULTS if any(o.fault == f for o in outcomes)]
    cell = {(o.file, o.fault): o.kind for o in outcomes}
    lines = ["| file | " + " | ".join(faults) + " |", "|---|" + "---|" * len(faults)]
    for f in files:
        lines.append(f"| {f} | " + " | ".join(cell.get((f, k), "") for k in faults) + " |")
    return "\n".join(lines)


def sweep(
    name: str, good: Path, runner: Callable[[Path], np.ndarray], work: Path, faults: tuple[str, ...] = FAULTS
) -> list[Outcome]:
    """Every fault on every file of ``good``."""
    ref = runner(good)
    outs = []
    for rel in files_of(good):
        for fault in faults:
            o = run_fault(good, work / "w", rel, fault, runner, ref)
            outs.append(o)
            if not o.ok:
                print(f"{name}: {fault} {rel}: {o.kind} {o.detail}", file=sys.stderr, flush=True)
    return outs


def main(argv: list[str]) -> None:
    """``faults.py [--json OUT] NAME=PATH...``: run the sweeps (a NAME with "artifact" runs the runtime on
    every variant, else a torch model folder is loaded: CrossEncoder when NAME has "reranker", else
    SentenceEncoder), print the tables."""
    import json
    import resource
    import tempfile

    # a fault that makes a reader consume without end (a symlink to /dev/zero) must not take the machine down
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    out_json = None
    if argv[:1] == ["--json"]:
        out_json, argv = Path(argv[1]), argv[2:]
    targets = dict(a.split("=", 1) for a in argv)

    def runner_for(name: str, good: Path) -> Callable[[Path], np.ndarray]:
        if "artifact" in name:
            return artifact_runner(good)
        return score_model if "reranker" in name else encode_model

    outcomes: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in targets.items():
            outcomes[name] = sweep(name, Path(path), runner_for(name, Path(path)), Path(tmp))
    if out_json is not None:
        out_json.write_text(json.dumps({k: [o.__dict__ for o in v] for k, v in outcomes.items()}, indent=1))
    for name, outs in outcomes.items():
        print(f"\n### {name}\n\n{table(outs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
