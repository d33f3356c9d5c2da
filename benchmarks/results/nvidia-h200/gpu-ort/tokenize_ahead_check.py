"""Run on the H200 (2026-12-04, 14:34 and 14:45 UTC): SentenceEncoder.encode on CUDA with the next batch tokenized in a
second thread ("ahead", the change in tokenize_ahead.diff) against the plain loop, alternately in one process, random
weights of MiniLM's shape (speed only). Logs: tokenize_ahead_check_first.log (2 rounds), tokenize_ahead_check.log
(3 rounds). No consistent gain (fp32 0.86-0.99x in the second run), so the change was not kept. To rerun, apply the diff
and run from a folder holding the model's config/tokenizer files and data/ (STS-B test, SciFact corpus), with stedge
on PYTHONPATH; DEV, REPS and ROUNDS set the device, passes and rounds."""
import gzip, json, os, shutil, statistics, sys, time
import numpy as np, torch, transformers
root = os.path.dirname(os.path.abspath(__file__))
rand = "/tmp/rand"
shutil.copytree(root, rand, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data", "*.py"))
torch.manual_seed(0)
transformers.BertModel(transformers.BertConfig.from_json_file(os.path.join(root, "config.json"))).save_pretrained(rand)
from stedge import SentenceEncoder
from stedge.models import encoder as E
real = E.tokenized_ahead
texts = []
with gzip.open(os.path.join(root, "data/stsb/test.tsv.gz"), "rt") as fh:
    next(fh)
    for line in fh:
        p = line.split("\t"); texts += [p[0], p[1]]
texts = texts[:2048]
passages = []
with gzip.open(os.path.join(root, "data/ir/scifact/corpus.jsonl.gz"), "rt") as fh:
    for line in fh:
        d = json.loads(line); passages.append((d.get("title", "") + " " + d.get("text", "")).strip())
        if len(passages) == 1024: break
DEV = os.environ.get("DEV", "cuda"); REPS = int(os.environ.get("REPS", "5")); ROUNDS = int(os.environ.get("ROUNDS", "3"))
enc = SentenceEncoder(rand, device=DEV)
def rate(items, bs):
    reps = REPS
    enc.encode(items[: 2 * bs], batch_size=bs)
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); enc.encode(items, batch_size=bs); ts.append(time.perf_counter() - t)
    return len(items) / statistics.median(ts)
res = {}
t0 = time.time()
for rnd in range(ROUNDS):
    for code, ahead in (("plain", False), ("ahead", True)) if rnd % 2 == 0 else (("ahead", True), ("plain", False)):
        E.tokenized_ahead = lambda tok, b, ahead, _a=ahead: real(tok, b, ahead=_a)
        for wdt in (("fp32", "fp16-weights") if DEV == "cuda" else ("fp32",)):
            enc.float() if wdt == "fp32" else enc.half()
            for what, items, bss in (("sts", texts, (32, 128, 512)), ("passages", passages, (128, 512))):
                for bs in bss:
                    res.setdefault(f"{wdt} {what} bs={bs} {code}", []).append(round(rate(items, bs)))
    print(f"round {rnd} done at {time.time() - t0:.0f} s", flush=True)
for k in sorted(res): print(k, res[k], "median", statistics.median(res[k]))
for k in sorted(res):
    if k.endswith(" ahead"):
        base = k[: -len(" ahead")]
        a, p = res[k], res[base + " plain"]
        print(f"{base}: ahead/plain median {statistics.median(a) / statistics.median(p):.2f}x, "
              f"worst-vs-best {min(a) / max(p):.2f}x, best-vs-worst {max(a) / min(p):.2f}x")
enc.float()
E.tokenized_ahead = lambda tok, b, ahead: real(tok, b, ahead=False); a = enc.encode(texts, batch_size=128)
E.tokenized_ahead = lambda tok, b, ahead: real(tok, b, ahead=True); b = enc.encode(texts, batch_size=128)
print("fp32 plain vs ahead max abs diff", float(np.abs(a - b).max()))
print("threads", torch.get_num_threads(), "cpu count", os.cpu_count())
