"""Run on the H200 (2026-12-04, about 12:35 UTC): encode speed of the old and new CUDA encode loops, alternately, on random
weights of MiniLM's shape (speed only). Output: encode_loop_check.log. Run from a folder holding model_small/ (the model's
config and tokenizer files) and data/ (STS-B test, SciFact corpus), with stedge on PYTHONPATH."""
import gzip, json, os, shutil, statistics, time
import numpy as np, torch, transformers
root = os.path.dirname(os.path.abspath(__file__))
small = os.path.join(root, "model_small")
rand = "/tmp/rand"
shutil.copytree(small, rand, dirs_exist_ok=True)
torch.manual_seed(0)
transformers.BertModel(transformers.BertConfig.from_json_file(os.path.join(small, "config.json"))).save_pretrained(rand)
from stedge import SentenceEncoder
from stedge.models import encoder as E

def old_forward_sorted(self, items, batch_size, plen, compute, normalize, show_progress_bar):
    dev = self.device
    order = np.argsort([-len(t) for t in items], kind="stable")
    results = []
    self.eval()
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            idx = order[start : start + batch_size]
            feats = {k: v.to(dev) for k, v in self.tokenize([items[i] for i in idx]).items()}
            if compute != torch.float32:
                with torch.autocast(device_type=dev.type, dtype=compute):
                    out = self.forward(feats)["sentence_embedding"]
            else:
                out = self.forward(feats)["sentence_embedding"]
            out = out.float()
            results.append(out.cpu())
    emb = torch.cat(results)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order)] = torch.arange(len(order))
    return emb[inverse]

new_forward_sorted = E.SentenceEncoder._forward_sorted
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
        if len(passages) == 512: break
enc = SentenceEncoder(rand, device="cuda")
def rate(items, bs, dtype=None, reps=5):
    enc.encode(items[: 2 * bs], batch_size=bs, dtype=dtype)
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); enc.encode(items, batch_size=bs, dtype=dtype); ts.append(time.perf_counter() - t)
    return len(items) / statistics.median(ts)
res = {}
for code, fn in (("old", old_forward_sorted), ("new", new_forward_sorted), ("old", old_forward_sorted), ("new", new_forward_sorted)):
    E.SentenceEncoder._forward_sorted = fn
    enc.float()
    for what, items, bss in (("sts", texts, (32, 128, 512)), ("passages", passages, (128,))):
        for bs in bss:
            res.setdefault(f"{code} fp32 {what} bs={bs}", []).append(round(rate(items, bs)))
            res.setdefault(f"{code} fp16-autocast {what} bs={bs}", []).append(round(rate(items, bs, "float16")))
    enc.half()
    for what, items, bss in (("sts", texts, (32, 128, 512)), ("passages", passages, (128,))):
        for bs in bss:
            res.setdefault(f"{code} fp16-weights {what} bs={bs}", []).append(round(rate(items, bs, "float16")))
for k in sorted(res): print(k, res[k])
enc.float(); E.SentenceEncoder._forward_sorted = old_forward_sorted; a = enc.encode(texts, batch_size=128)
E.SentenceEncoder._forward_sorted = new_forward_sorted; b = enc.encode(texts, batch_size=128)
print("fp32 old vs new max abs diff", float(np.abs(a - b).max()))
