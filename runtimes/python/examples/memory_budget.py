"""What each memory budget runs, and what that process really peaks at.

    python memory_budget.py ARTIFACT [--tier near] [--more] [BUDGET_MB ...]   (default budgets: none 400 300 200)

For each budget ("none" for no budget) a fresh Python process loads ``Encoder.load(ARTIFACT, tier=...,
max_memory_mb=...)``, runs the workloads of `stedge tune`'s memory probe (``stedge_runtime.tune.memory_workloads``),
then, with ``--more``, 4,000 further texts of varied lengths (other words, the same lengths) in rounds of 1,000
(``varied_sweep``, one-text calls once), and prints one JSON line: the choice, the peak the profile predicted
(``selection.peak_rss_mb``), the peak it measured after the probe's workloads and, with ``--more``, after each
round, and any warning. Run `stedge tune ARTIFACT` on this machine first: the budget is checked against the memory
figures it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings


def child(root: str, tier: str, budget: float | None, more: bool = False) -> None:
    """Load with the budget, run the probe's workloads (and ``more``), print one JSON line."""
    from stedge_runtime import Encoder, machine
    from stedge_runtime.samples import SHORT, varied
    from stedge_runtime.tune import memory_workloads, varied_sweep

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = Encoder.load(root, tier=tier, max_memory_mb=budget)
    after = [memory_workloads(enc, "embedding")[0]]
    short = [SHORT[i % len(SHORT)] for i in range(256)]
    for r in range(1, 5) if more else ():
        varied_sweep(enc, "embedding", varied(short[r:] + short[:r], 1000), one_at_a_time=1)
        after.append(round(machine.peak_rss_bytes() / 2**20, 1))
    s = enc.selection
    print(
        json.dumps(
            {
                "max_memory_mb": budget,
                "variant": s.variant,
                "settings": s.settings,
                "batch1_variant": s.latency_variant,
                "predicted_mb": s.peak_rss_mb,
                "peak_rss_mb": after[0],
                "after_more_rounds_mb": after[1:],
                "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
            }
        )
    )


def main(argv: list[str]) -> None:
    """One fresh process per budget."""
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    root, rest, tier = argv[0], argv[1:], "near"
    if "--tier" in rest:
        i = rest.index("--tier")
        tier, rest = rest[i + 1], rest[:i] + rest[i + 2 :]
    more = "--more" in rest
    rest = [r for r in rest if r != "--more"]
    for b in rest or ["none", "400", "300", "200"]:
        code = "import sys; sys.path[:0] = [sys.argv[1]]; from memory_budget import child; child(*sys.argv[2:4], "
        code += "None if sys.argv[4] == 'none' else float(sys.argv[4]), sys.argv[5] == '1')"
        here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
        args = [sys.executable, "-c", code, here, root, tier, b, "1" if more else "0"]
        out = subprocess.run(args, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        print(lines[-1] if lines else json.dumps({"max_memory_mb": b, "error": out.stderr.strip()[-300:]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
