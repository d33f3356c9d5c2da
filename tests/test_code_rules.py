"""Rules that hold over the whole code base (issue 12): they read the source, they run no model."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "stedge", ROOT / "runtimes" / "python" / "stedge_runtime"]
RUNTIME = ROOT / "runtimes" / "python" / "stedge_runtime"
# What the runtime may import: the standard library, numpy, tokenizers, and one engine.
RUNTIME_THIRD_PARTY = {"numpy", "tokenizers", "onnxruntime", "openvino"}
FILE_OPS = {"read_text", "read_bytes", "open", "write_text", "write_bytes", "is_file", "exists", "stat", "unlink"}


def _files(*roots: Path) -> list[Path]:
    return sorted(f for r in roots for f in r.rglob("*.py"))


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body: the signature (one parameter a line once formatted) and docstring not counted."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:] or body
    return node.end_lineno - body[0].lineno + 1


def test_no_function_over_80_lines():
    long = []
    for f in _files(*PACKAGES):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > 80:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines: " + "; ".join(long)


def test_runtime_imports_only_numpy_tokenizers_and_engines():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for f in _files(RUNTIME):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in RUNTIME_THIRD_PARTY and top != "stedge_runtime":
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "; ".join(bad)


def test_only_the_contract_module_opens_the_manifest():
    """Code names stedge.json only in docstrings and messages; reading it is stedge_runtime.artifact's job."""
    contract = RUNTIME / "artifact.py"
    bad = []
    for f in _files(*PACKAGES, ROOT / "stedge" / "bench"):
        if f == contract:
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            # (root / "stedge.json").read_text() and friends, or open(root / "stedge.json")
            target = None
            if isinstance(node, ast.Attribute) and node.attr in FILE_OPS:
                target = node.value
            elif (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open" and node.args
            ):
                target = node.args[0]
            if (
                isinstance(target, ast.BinOp)
                and isinstance(target.op, ast.Div)
                and isinstance(target.right, ast.Constant)
                and target.right.value == "stedge.json"
            ):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "stedge.json opened outside stedge_runtime.artifact: " + ", ".join(bad)
