"""Calls of a few texts on an OpenVINO THROUGHPUT engine: one batch on one stream (how the runtime ran them before
2026-12-08: "one batch") against the rows cut evenly over the streams ("cut"), each as a ratio to a LATENCY engine
of the same variant; interleaved cycles in one process, median and p10-p90 of the per-cycle ratios.

    python one_round_check.py ARTIFACT [VARIANT] [CYCLES]    (data: $STEDGE_DATA or ../shared/data)
"""

import csv
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import stedge_runtime.encoder as encoder_module
from stedge_runtime import Encoder

DATA = Path(os.environ.get("STEDGE_DATA") or Path(__file__).resolve().parents[4].parent / "shared" / "data")
rows = list(csv.reader(gzip.open(DATA / "stsb" / "test.tsv.gz", "rt"), delimiter="\t"))[1:]
texts = [r[0] for r in rows] + [r[1] for r in rows]
corpus = gzip.open(DATA / "ir" / "scifact" / "corpus.jsonl.gz", "rt")
passages = [json.loads(line)["text"] for _, line in zip(range(400), corpus)]
art = sys.argv[1]
variant = sys.argv[2] if len(sys.argv) > 2 else "openvino-bf16"
cycles = int(sys.argv[3]) if len(sys.argv) > 3 else 7

cutting = True
batches = encoder_module.batches


def one_batch_or_cut(lengths, batch_size, max_tokens):
    """The runtime's batches, or, with cutting off, batches of 32 as before (every call here uses 32)."""
    return batches(lengths, batch_size if cutting else 32, max_tokens)


encoder_module.batches = one_batch_or_cut
lat = Encoder.load(art, variant=variant, performance_hint="latency", snippets_above=64)
thr = Encoder.load(art, variant=variant, performance_hint="throughput", snippets_above=64)
print(f"{art} {variant}: throughput engine with {thr._engine.parallel} streams", flush=True)
work = {f"{n} short texts": [texts[i : i + n] for i in range(0, n * (1200 // n), n)] for n in (2, 4, 8, 16, 32, 33)}
work["8 passages"] = [passages[i : i + 8] for i in range(0, 8 * 12, 8)]


def rate(enc, calls, cut):
    global cutting
    cutting = cut
    start = time.perf_counter()
    for call in calls:
        enc.encode(call)
    cutting = True
    return sum(map(len, calls)) / (time.perf_counter() - start)


for name, calls in work.items():
    for enc in (lat, thr):
        enc.encode(calls[0])
    got = {"latency": [], "throughput, one batch": [], "throughput, cut": []}
    for _ in range(cycles):
        got["latency"].append(rate(lat, calls, True))
        got["throughput, one batch"].append(rate(thr, calls, False))
        got["throughput, cut"].append(rate(thr, calls, True))
    base = np.array(got["latency"])
    cells = []
    for k, v in got.items():
        r = np.array(v) / base
        spread = f"{np.percentile(r, 10):.2f}-{np.percentile(r, 90):.2f}"
        cells.append(f"{k} {np.median(v):.0f}/s = {np.median(r):.2f}x ({spread})")
    print(f"{name}: " + "; ".join(cells), flush=True)
ref, cut = lat.encode(texts[:64]), thr.encode(texts[:64])
print(f"min cos, cut throughput calls vs the latency engine (64 sentences): {float((ref * cut).sum(1).min()):.7f}")
