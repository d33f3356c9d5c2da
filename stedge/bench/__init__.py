"""stedge benchmark harness: every backend side by side, accuracy beside speed.

Two doors: ``stedge bench SUITE`` and ``python -m stedge.bench SUITE``. A suite (a TOML file in
``stedge/bench/suites/`` (linked from ``benchmarks/suites/``) or any path) names models and the
subjects to measure; each subject runs in its own subprocess (``stedge.bench.worker``); the parent
(``stedge.bench.runner``) builds missing artifacts, computes the PyTorch fp32 reference, measures a
GEMM peak, and writes the results JSON, a Markdown table and PNG plots (``stedge.bench.report``).
"""

from __future__ import annotations

from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent / "suites"  # shipped in the wheel; benchmarks/suites links here


def work_root() -> Path:
    """Where relative suite paths (``models_dir``, results) live: the current directory.

    In a checkout that is the project root (``benchmarks/results/`` exists there); an installed
    wheel run from anywhere writes under the current directory too, never into site-packages.
    """
    return Path.cwd()


def default_results_dir(suite_name: str, quick: bool, models_dir: str = "models", device: str = "cpu") -> Path:
    """``benchmarks/results/<machine slug>/<suite>`` in a checkout, else ``stedge-bench/<machine slug>/<suite>``.

    One folder per CPU (e.g. ``amd-epyc-avx512-bf16/cpu``), or per GPU for a CUDA / TensorRT suite (e.g.
    ``nvidia-h200/gpu``); quick runs go to ``models_dir``."""
    from stedge_runtime.machine import cpu_slug

    from .machine import gpu_slug

    root = work_root()
    if quick:
        return root / models_dir / f"bench-{suite_name}-quick"
    slug = (gpu_slug() if device.split(":", 1)[0] in ("cuda", "tensorrt") else None) or cpu_slug()
    if (root / "benchmarks" / "results").is_dir():
        return root / "benchmarks" / "results" / slug / suite_name
    return root / "stedge-bench" / slug / suite_name
