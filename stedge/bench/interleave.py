"""The interleaved phase: every measured subject alive at once, one timed pass each in turn, cycle after cycle.

A cloud guest has slow spells that last minutes (benchmarks/README.md). The rounds of runner.py measure one
subject after another, a minute or two each, so a spell can fall on one subject and not on the one it is
compared with. Here every subject's worker stays loaded (``python -m stedge.bench.worker JOB --serve``) and
the parent asks each in turn for one timed pass at a batch size, then each at the next batch size (the
suite's ``interleave_batch_sizes``, then the passage batch sizes over the passages), cycle after cycle.
All subjects' passes at one batch size follow one another within seconds, so a spell slows all of them
alike and two subjects' ratio *in the same cycle* keeps its value. The order reverses from one cycle to
the next (no subject always follows the same one), and the parent waits ``GAP_S`` between passes so the
previous engine's spinning threads are asleep when the next pass starts.

The ratios this phase reports are medians of per-cycle ratios
(stedge_runtime.tune.paired_speedup; `stedge tune`'s paired final takes the same medians), each with the 95 %
confidence interval of that median (``ratio_interval``): on a guest whose speed changes within a second, one
cycle's ratio can land far from the next (AMX guest, 2026-12-06: 1.03-2.26 within one run of 6 cycles), and
the interval says how closely the run pins the ratio down; more cycles narrow it. The rates beside them are
medians over cycles. The isolated rounds still give everything else (batch sizes, latency, memory, cold
start, accuracy).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

from . import work_root
from .subjects import Subject

GAP_S = 0.2  # idle between two passes: ONNX Runtime and OpenMP pools spin for a while after their last task


CI_LEVEL = 0.95  # of the interval beside each interleaved ratio


def ratio_interval(seconds: Sequence[float], base_seconds: Sequence[float]) -> list[float] | None:
    """The CI_LEVEL confidence interval, ``[low, high]``, of the median per-cycle ratio of one subject's rate over
    another's (stedge_runtime.tune.median_interval over paired_ratios); None with too few cycles (under 6)."""
    from stedge_runtime.tune import median_interval, paired_ratios

    ci = median_interval(paired_ratios(seconds, base_seconds), CI_LEVEL)
    return None if ci is None else [ci[0], ci[1]]


def summarize(seconds: Sequence[float], n_texts: int) -> dict[str, Any]:
    """Rates over the cycles of one subject at one batch size: median, min and max sentences/s, pass times."""
    rates = [n_texts / s for s in seconds]
    return {
        "sentences_per_s": statistics.median(rates),
        "sentences_per_s_min": min(rates),
        "sentences_per_s_max": max(rates),
        "seconds": [float(s) for s in seconds],
    }


def run_interleaved(
    subjects: Sequence[tuple[Hashable, Subject]],
    job: dict[str, Any],
    work: Path,
    env: dict[str, str],
    cycles: int,
    timeout_s: float,
    on_cycle: Callable[[int], None] | None = None,
) -> dict[Hashable, dict[str, Any]]:
    """Start every subject's serving worker (one after another, each ``READY`` before the next starts),
    then run ``cycles`` cycles: per batch size of ``job["serve_batch_sizes"]`` (``"p32"``: passages at 32),
    one timed pass of each; return ``{key: {"seconds": {size: [...]}}}`` (one entry per cycle), or
    ``{key: {"error": ...}}`` for a subject whose worker failed (the others go on without it)."""
    sizes = [str(b) for b in job["serve_batch_sizes"]]
    live: list[tuple[Hashable, subprocess.Popen, Path]] = []
    out: dict[Hashable, dict[str, Any]] = {}
    logs = []
    try:
        for i, (key, sub) in enumerate(subjects):
            folder = work / f"serve-{i:02d}"
            folder.mkdir(parents=True)
            job_file = folder / "job.json"
            job_file.write_text(json.dumps({**job, "subject": sub.spec(), "work_dir": str(folder)}), encoding="utf-8")
            logs.append(open(folder / "stderr.log", "w", encoding="utf-8"))
            proc = subprocess.Popen(
                [sub.python or sys.executable, "-m", "stedge.bench.worker", str(job_file), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[-1],
                text=True,
                env=env,
                cwd=work_root(),
            )
            if _answer(proc, "READY", timeout_s) is None:
                out[key] = {"error": _failure(proc, folder, "did not load")}
                continue
            live.append((key, proc, folder))
            out[key] = {"seconds": {b: [] for b in sizes}}
        for c in range(cycles):
            for k, b in enumerate(sizes):  # all subjects at one batch size, then the next: pairs seconds apart
                for key, proc, folder in live[::-1] if (c + k) % 2 else live:
                    if "error" in out[key]:
                        continue
                    time.sleep(GAP_S)
                    line = _ask(proc, f"PASS {b}", "SECONDS ", timeout_s)
                    if line is None:
                        out[key] = {"error": _failure(proc, folder, "stopped")}
                    else:
                        out[key]["seconds"][b].append(float(line.split()[1]))
            if on_cycle:
                on_cycle(c + 1)
    finally:
        for _key, proc, _folder in live:
            _stop(proc)
        for f in logs:
            f.close()
    return out


def _ask(proc: subprocess.Popen, command: str, prefix: str, timeout_s: float) -> str | None:
    """Send one command line to the worker and return its answer (see _answer); None when it is gone."""
    try:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
    except OSError:  # its end of the pipe is closed: the worker exited
        return None
    return _answer(proc, prefix, timeout_s)


def _answer(proc: subprocess.Popen, prefix: str, timeout_s: float) -> str | None:
    """The worker's next stdout line starting with ``prefix`` (other lines skipped); None when it exits first
    or takes longer than ``timeout_s`` (then it is killed)."""
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                return line.strip()
        return None
    finally:
        timer.cancel()


def _failure(proc: subprocess.Popen, folder: Path, what: str) -> str:
    proc.kill()
    proc.wait()
    tail = (folder / "stderr.log").read_text(encoding="utf-8", errors="replace")[-800:].strip()
    return f"interleaved worker {what} (exit code {proc.returncode}): {tail or 'no output on stderr'}"


def _stop(proc: subprocess.Popen) -> None:
    try:
        if proc.poll() is None:
            proc.stdin.write("QUIT\n")
            proc.stdin.close()
            proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
