"""What an untuned machine gets: the runtime's CPU rule (no profile for this machine) against the settings
`stedge tune` picked for bulk on this CPU (OpenVINO THROUGHPUT + snippets_above=64), same variant, bulk passes over
the STS-B test sentences at batch 32; interleaved cycles in one process, median and p10-p90 of per-cycle ratios.

    python untuned_check.py ARTIFACT [CYCLES]    (data: $STEDGE_DATA or ../shared/data)
"""

import csv
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np
from stedge_runtime import Encoder

DATA = Path(os.environ.get("STEDGE_DATA") or Path(__file__).resolve().parents[4].parent / "shared" / "data")
rows = list(csv.reader(gzip.open(DATA / "stsb" / "test.tsv.gz", "rt"), delimiter="\t"))[1:]
texts = [r[0] for r in rows] + [r[1] for r in rows]
art = sys.argv[1]
cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 7

rule = Encoder.load(art)
sel = rule.selection
assert sel.source == "rule", f"{art} has a profile for this machine ({sel.source}); this check is for the rule"
tuned = Encoder.load(art, variant=rule.variant, performance_hint="throughput", snippets_above=64)
print(
    f"{art}: rule -> {rule.variant} {rule._engine.config.get('PERFORMANCE_HINT')}; tuned settings: THROUGHPUT "
    f"+ snippets_above=64 ({tuned._engine.parallel} streams)",
    flush=True,
)


def rate(enc):
    start = time.perf_counter()
    enc.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - start)


for enc in (rule, tuned):
    enc.encode(texts[:256], batch_size=32)
got = {"rule": [], "tuned settings": []}
for _ in range(cycles):
    got["rule"].append(rate(rule))
    got["tuned settings"].append(rate(tuned))
r = np.array(got["tuned settings"]) / np.array(got["rule"])
print(
    f"rule {np.median(got['rule']):.0f}/s; tuned settings {np.median(got['tuned settings']):.0f}/s; "
    f"tuned / rule {np.median(r):.2f}x ({np.percentile(r, 10):.2f}-{np.percentile(r, 90):.2f})",
    flush=True,
)
