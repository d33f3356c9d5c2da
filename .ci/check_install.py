"""CI step: `pip install stedge` next to today's Hugging Face stack changes none of it.

Asks pip (dry run, in the running venv) for the newest transformers, sentence-transformers, huggingface-hub
and tokenizers it can install (resolved on their own), then to install stedge and stedge[onnx,openvino]
next to exactly those releases, and stedge[onnx,openvino,train] (peft, datasets, accelerate) too. When stedge's
requirements allowed none of those releases pip would have to pick other versions (or fail); the check
fails unless every one of them resolves to the newest release.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

STACK = ("transformers", "sentence-transformers", "huggingface-hub", "tokenizers")
ROOT = Path(__file__).resolve().parent.parent


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def newest_stack() -> dict[str, str]:
    """The newest release of each STACK package that pip can install here, resolved together on their own."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        r = pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report), *STACK)
        if r.returncode:
            sys.exit(f"check-install: pip cannot resolve {' '.join(STACK)} on their own:\n{r.stderr[-1500:]}")
        chosen = _versions(report)
    return {name: chosen[name] for name in STACK}


def _versions(report: Path) -> dict[str, str]:
    return {
        i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }


def main() -> int:
    pins = newest_stack()
    failed = False
    for target in (".", ".[onnx,openvino]", ".[onnx,openvino,train]"):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            r = pip(
                "install",
                "--dry-run",
                "--quiet",
                "--report",
                str(report),
                "./runtimes/python",
                target,
                *(f"{k}=={v}" for k, v in pins.items()),
            )
            if r.returncode:
                print(f"FAIL stedge {target}: pip cannot install it next to {pins}:\n{r.stderr[-1500:]}")
                failed = True
                continue
            chosen = _versions(report)
        for name, version in pins.items():
            if name in chosen and chosen[name] != version:
                print(f"FAIL stedge {target}: pip would install {name} {chosen[name]} instead of {version}")
                failed = True
        print(
            f"{'FAIL' if failed else 'ok'} stedge {target} installs next to "
            + ", ".join(f"{k} {v}" for k, v in pins.items())
        )
    return 1 if failed else 0


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    sys.exit(main())
