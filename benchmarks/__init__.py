"""stedge benchmark harness: every backend side by side, accuracy beside speed.

Two doors: ``stedge bench SUITE`` and ``python -m benchmarks SUITE``. A suite (a TOML file in
``benchmarks/suites/`` or any path) names models and the subjects to measure; each subject runs in
its own subprocess (``benchmarks.worker``); the parent (``benchmarks.runner``) builds missing
artifacts, computes the PyTorch fp32 reference, measures a GEMM peak, and writes the results JSON,
a Markdown table and PNG plots (``benchmarks.report``).
"""
from __future__ import annotations

from pathlib import Path

# Also defined in runner.py (which does not import them from here, so the package works even where an
# old editable install registered benchmarks/ as a namespace package).
SUITES_DIR = Path(__file__).resolve().parent / "suites"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
