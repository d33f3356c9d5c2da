"""`stedge bench-pool RUN...`: a subject's interleaved ratio pooled over several runs of the harness.

One run's interleaved phase gives, per subject, the median of its per-cycle ratios to a baseline and the 95 %
interval of that median. On a noisy host one run cannot always settle a line (the interval spans it), and the
runs of one suite are then read together: every cycle of every run is one paired ratio (the same texts, the
subject and its baseline measured in turn), so the ratios of all runs pool into one median and one interval
(stedge_runtime.tune.paired_ratios / median_interval, as within a run). A subject is the same across runs when
its model and its auto tier (or, for a named subject, its label) are; the variant an auto tier ran may differ
from run to run, and the result says which ran.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from stedge.errors import StedgeError


def load_run(path: Path) -> dict[str, Any]:
    """The results of one harness run: a folder holding ``results.json``, or that file."""
    file = Path(path)
    file = file / "results.json" if file.is_dir() else file
    if not file.is_file():
        raise StedgeError(f"{path}: no results.json there; pass a folder `stedge bench` wrote, or its results.json")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StedgeError(f"{file}: not readable as JSON ({e}); pass a results.json `stedge bench` wrote") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise StedgeError(f"{file}: no 'rows' list; this is not a results.json of `stedge bench`")
    return results


def subject_key(row: dict[str, Any]) -> str:
    """What a subject is across runs: its model and auto tier (``auto near``), else its label; with its device."""
    name = f"stedge auto {row['auto_tier']}" if row.get("auto_tier") else row["label"]
    device = row.get("device") or "cpu"
    return f"{row['model']} / {name}" + ("" if device == "cpu" else f" @{device}")


def _seconds(row: dict[str, Any] | None, batch: str, what: str) -> list[float]:
    return ((((row or {}).get("interleaved") or {}).get(what) or {}).get(batch) or {}).get("seconds") or []


def _baseline(row: dict[str, Any], rows: Sequence[dict[str, Any]], against: str | None, what: str) -> dict | None:
    """The row ``row`` is compared with: the best peer its run named (on passages: the best peer there), or the
    peer of its model (else of its baseline model) whose label contains ``against``."""
    mine = [r for r in rows if r.get("peer") and r["model"] == row["model"]]
    theirs = [r for r in rows if r.get("peer") and r["model"] == row.get("baseline_model")]
    if against is not None:
        hits = [r for r in mine if against.lower() in r["label"].lower()]
        hits = hits or [r for r in theirs if against.lower() in r["label"].lower()]
        if len(hits) > 1:
            raise StedgeError(
                f"--against {against!r} names {len(hits)} peers of {row['model']}: "
                f"{', '.join(r['label'] for r in hits)}; pass more of one label"
            )
        return hits[0] if hits else None
    from .runner import _peer_label

    named = ((row.get("interleaved") or {}).get("passage_best_peer" if what == "passages" else "best_peer")) or ""
    return next((r for r in mine + theirs if _peer_label(r, row["model"]) == named), None)


def machine_of(results: dict[str, Any]) -> str:
    """Where a run ran, as far as pooling cares: the machine key (CPU model, cores, ISA), its GPU, the thread budget."""
    m = results.get("machine") or {}
    gpu = (m.get("gpu") or {}).get("name") if isinstance(m.get("gpu"), dict) else m.get("gpu")
    key = m.get("machine_key") or m.get("cpu") or "unknown machine"
    threads = results.get("threads")
    threads = threads.get("budget") if isinstance(threads, dict) else threads  # the harness records {"budget": N, ...}
    return f"{key}" + (f", {gpu}" if gpu else "") + f", {threads if threads is not None else '?'} threads"


def pool(
    runs: Sequence[Path],
    batch_size: int | None = None,
    passages: bool = False,
    against: str | None = None,
    subject: str | None = None,
    peers: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Each subject's per-cycle ratios to its baseline, pooled over ``runs`` (folders or results.json files).

    ``batch_size``: the interleaved batch size (default: each run's headline batch size); ``passages``: the
    passage passes instead of the short texts; ``against``: a peer label to compare with (a substring, e.g.
    "torch" or "fastembed"; default: the best peer each run named); ``subject``: only subjects whose key contains
    it; ``peers``: the peers' own rows too. A subject is pooled over the runs where it and its baseline have
    interleaved cycles. Returns one dict per subject: ``subject``, ``runs`` (each run's name, label, baseline,
    cycles, median, ci), ``cycles``, ``median`` and ``ci`` (the 95 % interval; None under 6 cycles). Runs from
    different machines or thread budgets pool all the same, but ``log`` is told which ran where."""
    from stedge_runtime.tune import median_interval, paired_ratios

    from .interleave import CI_LEVEL
    from .runner import _peer_label

    what = "passages" if passages else "throughput"
    pooled: dict[str, dict[str, Any]] = {}
    where: dict[str, list[str]] = {}
    for path in runs:
        results = load_run(path)
        name = (results.get("suite") or {}).get("name") or Path(path).name
        where.setdefault(machine_of(results), []).append(name)
        batch = str(batch_size or (results.get("suite") or {}).get("headline_batch_size") or 32)
        for row in results["rows"]:
            key = subject_key(row)
            if (row.get("peer") and not peers) or (subject and subject.lower() not in key.lower()):
                continue
            base = _baseline(row, results["rows"], against, what)
            ratios = paired_ratios(_seconds(row, batch, what), _seconds(base, batch, what)) if base else []
            if base is row or not ratios:
                continue
            ci = median_interval(ratios, CI_LEVEL)
            entry = pooled.setdefault(key, {"subject": key, "runs": [], "ratios": []})
            entry["ratios"] += ratios
            entry["runs"].append(
                {
                    "run": name,
                    "label": row["label"],
                    "baseline": _peer_label(base, row["model"]),
                    "batch_size": int(batch),
                    "cycles": len(ratios),
                    "median": statistics.median(ratios),
                    "ci": None if ci is None else list(ci),
                }
            )
    if len(where) > 1 and log is not None:
        log(
            "note: these runs come from different machines or thread budgets, and a ratio measured on one does not "
            "hold on another: " + "; ".join(f"{', '.join(names)} on {m}" for m, names in where.items())
        )
    out = []
    for entry in pooled.values():
        ratios = entry.pop("ratios")
        ci = median_interval(ratios, CI_LEVEL)
        out.append({**entry, "cycles": len(ratios), "median": statistics.median(ratios), "ci": ci and list(ci)})
    return out


def pool_table(pooled: Sequence[dict[str, Any]], line: float | None = None) -> str:
    """A markdown table of ``pool``'s result; with ``line``, whether each pooled interval clears it."""

    def ratio(median: float, ci: Sequence[float] | None) -> str:
        return f"{median:.2f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else " (under 6 cycles: no interval)")

    head = "| subject | baseline | runs | cycles | pooled × baseline (95 % CI) | each run |"
    rows = [head + (" ≥ line? |" if line else ""), "|---|---|---:|---:|---:|---|" + ("---|" if line else "")]
    for p in pooled:
        each = "; ".join(f"{r['run']} {ratio(r['median'], r['ci'])}" for r in p["runs"])
        bases = ", ".join(dict.fromkeys(r["baseline"] for r in p["runs"]))
        cells = [p["subject"], bases, str(len(p["runs"])), str(p["cycles"]), ratio(p["median"], p["ci"]), each]
        if line:
            ci = p["ci"]
            cells.append(
                "no interval"
                if not ci
                else "met with confidence"
                if ci[0] > line
                else "not met"
                if ci[1] < line
                else "within the interval"
            )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
