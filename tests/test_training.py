"""Training layer: data rules, arguments/prompts, collator, samplers, adapters, trainer, config, CLI, resume."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from stedge.errors import StedgeError

STS = {
    "sentence1": ["a cat sits", "a dog runs", "the sun is hot", "rain falls today", "a man eats", "kids play ball"] * 4,
    "sentence2": [
        "a kitten sits",
        "a puppy runs",
        "the moon is cold",
        "sunny day",
        "a person eats food",
        "children play",
    ]
    * 4,
    "score": [0.9, 0.8, 0.3, 0.1, 0.7, 0.6] * 4,
}
TRIPLETS = {
    "anchor": [f"question number {i}" for i in range(16)],
    "positive": [f"answer number {i}" for i in range(16)],
    "negative": [f"unrelated text {i}" for i in range(16)],
}


def _encoder(path):
    from stedge.models import SentenceEncoder

    return SentenceEncoder(str(path), device="cpu")


def _checkpointing_flag() -> str:
    """transformers 5.23 renamed the argument (the old name warns and goes in v6); older ones know only the old."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _args(tmp_path, **kw):
    from stedge.training.arguments import SentenceEncoderTrainingArguments

    base = dict(
        output_dir=str(tmp_path / "ckpt"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    base.update(kw)
    return SentenceEncoderTrainingArguments(**base)


class FakeEvaluator:
    """Counts calls; metric = mean cosine of the first pair (changes as the model trains)."""

    primary_metric = "score"

    def __init__(self):
        self.calls = []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls.append(steps)
        e = model.encode(["a cat sits", "a kitten sits"])
        return {"score": float((e[0] * e[1]).sum()) + 0.001 * steps}


# ------------------------------------------------------------------ data rules
def test_dict_list_and_dataset_sources():
    import datasets

    from stedge.training.data import load_dataset

    ds = load_dataset({"a": ["x", "y"], "b": ["z", "w"]})
    assert isinstance(ds, datasets.Dataset) and ds.column_names == ["a", "b"] and len(ds) == 2
    assert load_dataset([{"a": "x", "b": "y"}]).column_names == ["a", "b"]
    assert load_dataset(ds) is ds
    dd = load_dataset({"one": {"a": ["x"]}, "two": [{"b": "y"}]})
    assert isinstance(dd, datasets.DatasetDict) and list(dd) == ["one", "two"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "tsv.gz", "json", "jsonl", "parquet"])
def test_local_file_formats(tmp_path, fmt):
    from stedge.training.data import load_dataset, prepare_dataset
    from stedge.training.losses import CoSENTLoss

    rows = [{"sentence1": "a b", "sentence2": "c d", "score": 0.5}, {"sentence1": "e", "sentence2": "f", "score": 1}]
    p = tmp_path / f"data.{fmt}"
    if fmt in ("csv", "tsv", "tsv.gz"):
        sep = "," if fmt == "csv" else "\t"
        text = sep.join(rows[0]) + "\n" + "\n".join(sep.join(str(v) for v in r.values()) for r in rows) + "\n"
        p.write_bytes(gzip.compress(text.encode()) if fmt.endswith(".gz") else text.encode())
    elif fmt == "json":
        p.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), p)
    ds = prepare_dataset(load_dataset(str(p)), CoSENTLoss(torch.nn.Identity()))
    assert ds.column_names == ["sentence1", "sentence2", "score"]
    assert ds["score"] == [0.5, 1.0]


def test_columns_must_fit_the_loss():
    from stedge.training.data import prepare_dataset
    from stedge.training.losses import CoSENTLoss, MultipleNegativesRankingLoss

    data = {"sentence1": ["a"], "sentence2": ["b"], "genre": ["news"], "score": [1.0]}
    with pytest.raises(StedgeError) as e:
        prepare_dataset(data, CoSENTLoss(torch.nn.Identity()))
    msg = str(e.value)
    assert "CoSENTLoss expects 2 input columns" in msg and "sentence1, sentence2, genre" in msg and "score" in msg
    ok = prepare_dataset(data, CoSENTLoss(torch.nn.Identity()), columns=["sentence1", "sentence2", "score"])
    assert ok.column_names == ["sentence1", "sentence2", "score"]
    with pytest.raises(StedgeError, match="a label column"):
        prepare_dataset({"a": ["x"], "b": ["y"]}, CoSENTLoss(torch.nn.Identity()))
    with pytest.raises(StedgeError, match="at least 2 input columns"):
        prepare_dataset({"a": ["x"]}, MultipleNegativesRankingLoss(torch.nn.Identity()))
    with pytest.raises(StedgeError, match="no column 'nope'"):
        prepare_dataset(data, None, columns=["nope"])


@pytest.mark.parametrize("labels", [[1.0, float("nan")], ["1", "high"], [1.0, None], ["0.5", "inf"]])
def test_bad_labels_name_the_row(labels):
    from stedge.training.data import prepare_dataset

    with pytest.raises(StedgeError) as e:
        prepare_dataset({"a": ["x", "y"], "b": ["u", "v"], "label": labels}, None)
    assert "row 2" in str(e.value) and "label" in str(e.value)


def test_empty_dataset_and_non_text_input():
    from stedge.training.data import prepare_dataset

    with pytest.raises(StedgeError, match="empty"):
        prepare_dataset({"a": [], "b": []}, None)
    with pytest.raises(StedgeError, match="row 1, column 'a'"):
        prepare_dataset({"a": [3], "b": ["x"]}, None)


def test_label_range_rescales_labels_onto_0_1():
    """Labels outside what the loss can learn from (cosine: -1..1) are an error that names --label-range; a label range
    maps them onto 0..1, refuses labels outside it, and is parsed from LO:HI or [LO, HI] per dataset or for all."""
    from stedge.training.config import config_from_dict
    from stedge.training.data import prepare_dataset
    from stedge.training.losses import CosineSimilarityLoss, MatryoshkaLoss

    data = {"a": ["x", "y", "z"], "b": ["u", "v", "w"], "score": ["0", "2.5", "5"]}
    loss = CosineSimilarityLoss(torch.nn.Identity())
    with pytest.raises(
        StedgeError, match=r"holds 0 to 5; CosineSimilarityLoss needs labels from -1 to 1.*-label-range"
    ):
        prepare_dataset(data, loss)
    assert prepare_dataset(data, loss, label_range=(0.0, 5.0))["score"] == [0.0, 0.5, 1.0]
    assert prepare_dataset(data, None, label_range=(-5.0, 5.0))["score"] == [0.5, 0.75, 1.0]
    wrapped = MatryoshkaLoss(torch.nn.Identity(), loss, [4, 2])
    with pytest.raises(StedgeError, match="needs labels from -1 to 1"):
        prepare_dataset(data, wrapped)
    with pytest.raises(StedgeError, match="row 3: score 5 lies outside the label range 0 to 4"):
        prepare_dataset(data, loss, label_range=(0.0, 4.0))
    with pytest.raises(StedgeError, match="no label column"):
        prepare_dataset({"a": ["x"], "b": ["y"]}, None, label_range=(0.0, 5.0))
    base = {"model": "m", "output": "o", "loss": "cosine"}
    assert config_from_dict({**base, "train_data": "t", "label_range": "0:5"}).datasets["train"].label_range == (0, 5)
    multi = config_from_dict(
        {**base, "label_range": [0, 5], "datasets": {"a": {"data": "x"}, "b": {"data": "y", "label_range": "-1:1"}}}
    )
    assert multi.datasets["a"].label_range == (0, 5) and multi.datasets["b"].label_range == (-1, 1)
    for bad in ("5:0", "a:b", [1], "1:1", "0:inf"):
        with pytest.raises(StedgeError, match="expected two numbers LO < HI"):
            config_from_dict({**base, "train_data": "t", "label_range": bad})
    ranges = {"sts": (0.0, 5.0), "pairs": None}
    both = prepare_dataset({"sts": data, "pairs": {**data, "score": ["0", "1", "0"]}}, loss, label_range=ranges)
    assert both["sts"]["score"] == [0.0, 0.5, 1.0] and both["pairs"]["score"] == [0, 1, 0]


def test_integer_labels_stay_integers():
    from stedge.training.data import prepare_dataset

    assert prepare_dataset({"a": ["x", "y"], "b": ["u", "v"], "label": ["0", "2"]}, None)["label"] == [0, 2]


# ------------------------------------------------------------------ arguments and prompts
def test_arguments_samplers_and_prompt_forms(tmp_path):
    from stedge.training.arguments import SentenceEncoderTrainingArguments, prompt_for

    a = SentenceEncoderTrainingArguments(
        output_dir=str(tmp_path),
        batch_sampler="no-duplicates",
        multi_dataset_batch_sampler="round-robin",
        prompts={"anchor": "q: "},
    )
    assert (a.batch_sampler, a.multi_dataset_batch_sampler, a.remove_unused_columns) == (
        "no_duplicates",
        "round_robin",
        False,
    )
    with pytest.raises(StedgeError, match="batch_sampler must be one of"):
        SentenceEncoderTrainingArguments(output_dir=str(tmp_path), batch_sampler="random")
    with pytest.raises(StedgeError, match="prompts"):
        SentenceEncoderTrainingArguments(output_dir=str(tmp_path), prompts={"x": 3})
    assert prompt_for("p: ", "ds", "anchor") == "p: "
    assert (
        prompt_for({"anchor": "q: "}, None, "anchor") == "q: "
        and prompt_for({"anchor": "q: "}, None, "positive") is None
    )
    assert prompt_for({"nli": "n: "}, "nli", "anything") == "n: " and prompt_for({"nli": "n: "}, "sts", "a") is None
    nested = {"nli": {"anchor": "q: "}, "sts": {"s1": "s: "}}
    assert prompt_for(nested, "nli", "anchor") == "q: " and prompt_for(nested, "nli", "positive") is None
    assert prompt_for(nested, "sts", "s1") == "s: "


def test_collator_prompts_and_prompt_length(tiny_model):
    from stedge.training.collator import SentenceEncoderDataCollator

    m = _encoder(tiny_model)
    rows = [{"anchor": "hello", "positive": "world", "label": 1.0}, {"anchor": "a b c", "positive": "d", "label": 0.0}]
    plain = SentenceEncoderDataCollator(m.tokenize)(rows)
    assert set(plain) == {
        "anchor_input_ids",
        "anchor_attention_mask",
        "anchor_token_type_ids",
        "positive_input_ids",
        "positive_attention_mask",
        "positive_token_type_ids",
        "label",
    } - ({"anchor_token_type_ids", "positive_token_type_ids"} - set(plain))
    c = SentenceEncoderDataCollator(
        m.tokenize, prompts={"anchor": "query: "}, prompt_length_fn=m.prompt_length, include_prompt=False
    )
    b = c(rows)
    plen = m.prompt_length("query: ")
    assert b["anchor_prompt_length"].tolist() == [plen, plen] and "positive_prompt_length" not in b
    assert b["anchor_input_ids"][0, 1:plen].tolist() == m.tokenize(["query: "])["input_ids"][0, 1:plen].tolist()
    assert b["positive_input_ids"].tolist() == plain["positive_input_ids"].tolist()
    assert b["label"].tolist() == [1.0, 0.0]


# ------------------------------------------------------------------ samplers
def test_default_sampler_is_seeded_per_epoch():
    from stedge.training.samplers import DefaultBatchSampler

    s = DefaultBatchSampler(10, 3, seed=5)
    e0 = list(s)
    assert sorted(i for b in e0 for i in b) == list(range(10)) and len(e0) == len(s) == 4
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    assert len(DefaultBatchSampler(10, 3, drop_last=True)) == 3 == len(list(DefaultBatchSampler(10, 3, drop_last=True)))


def test_no_duplicates_sampler():
    import datasets

    from stedge.training.samplers import NoDuplicatesBatchSampler

    ds = datasets.Dataset.from_dict(
        {"a": ["x", "x", "x", "y", "z", "w", "v", "u"], "b": ["p", "q", "r", "x", "s", "t", "o", "n"], "label": [1] * 8}
    )
    s = NoDuplicatesBatchSampler(ds, 3, seed=1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        texts = [t for i in b for t in (ds[i]["a"], ds[i]["b"])]
        assert len(texts) == len(set(texts)), b
    assert batches == list(NoDuplicatesBatchSampler(ds, 3, seed=1))


def test_round_robin_and_proportional():
    from stedge.training.samplers import DefaultBatchSampler, ProportionalBatchSampler, RoundRobinBatchSampler

    sizes = [8, 20]
    subs = [DefaultBatchSampler(n, 4, seed=0) for n in sizes]
    rr = list(RoundRobinBatchSampler(subs, sizes, seed=0))
    assert len(rr) == 4 == len(RoundRobinBatchSampler(subs, sizes))
    owners = [0 if max(b) < 8 else 1 for b in rr]
    assert owners == [0, 1, 0, 1]
    assert all(all((i < 8) == (b[0] < 8) for i in b) for b in rr)
    pr = ProportionalBatchSampler(subs, sizes, seed=0)
    batches = list(pr)
    assert len(batches) == 7 == len(pr)
    assert sorted(i for b in batches for i in b) == list(range(28))
    assert all(all((i < 8) == (b[0] < 8) for i in b) for b in batches)
    pr.set_epoch(3)
    assert list(pr) != batches


# ------------------------------------------------------------------ adapters
def test_adapter_methods_and_save_load(tiny_model, tmp_path):
    import peft

    from stedge.models import SentenceEncoder

    m = _encoder(tiny_model)
    base = m.encode(["hello there"])
    assert not m.has_adapters
    with pytest.raises(StedgeError, match="no adapter"):
        m.active_adapters()
    m.add_adapter(peft.LoraConfig(r=4, init_lora_weights=False))
    assert m.active_adapters() == ["default"]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or not n.startswith("0.") for n in trainable)
    with_ad = m.encode(["hello there"])
    assert abs(with_ad - base).max() > 1e-4
    m.disable_adapters()
    assert abs(m.encode(["hello there"]) - base).max() < 1e-6
    m.enable_adapters()
    m.add_adapter(peft.LoraConfig(r=2, init_lora_weights=False), adapter_name="second")
    m.set_adapter("second")
    assert m.active_adapters() == ["second"]
    with pytest.raises(StedgeError):
        m.set_adapter("nope")
    m.set_adapter("default")
    sd = m.get_adapter_state_dict()
    assert sd and all("lora" in k for k in sd)
    out = m.save(tmp_path / "ad")
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "modules.json",
        "config_sentence_transformers.json",
    } <= names
    assert "model.safetensors" not in names and "config.json" not in names
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == Path(tiny_model).resolve()
    loaded = SentenceEncoder(str(out), device="cpu")
    assert loaded.has_adapters and abs(loaded.encode(["hello there"]) - with_ad).max() < 1e-5
    fresh = _encoder(tiny_model)
    fresh.load_adapter(out)
    assert abs(fresh.encode(["hello there"]) - with_ad).max() < 1e-5
    with pytest.raises(StedgeError, match="adapter_config.json"):
        fresh.load_adapter(tiny_model)


# ------------------------------------------------------------------ trainer
def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_the_writing_process_saves(tiny_model, tmp_path, monkeypatch):
    """transformers 5 calls Trainer._save on every torchrun process; the others must not touch the folder
    (two processes writing one checkpoint's temporary folder raced: a CI-style failure of the DDP test)."""
    from stedge.training import SentenceEncoderTrainer

    tr = SentenceEncoderTrainer(_encoder(tiny_model), _args(tmp_path, max_steps=1), train_dataset=STS, loss="cosent")
    monkeypatch.setattr(type(tr.args), "should_save", property(lambda self: False))
    tr._save(str(tmp_path / "other_rank"))
    assert not (tmp_path / "other_rank").exists()
    monkeypatch.undo()
    tr._save(str(tmp_path / "writer"))
    assert (tmp_path / "writer" / "model.safetensors").exists()


def test_trainer_cosent_prompts_and_card(tiny_model, tmp_path):
    from stedge.models import SentenceEncoder
    from stedge.training import SentenceEncoderTrainer

    m = _encoder(tiny_model)
    before = _weights(m)
    ev = FakeEvaluator()
    args = _args(tmp_path, prompts={"sentence1": "query: "}, eval_strategy="steps", eval_steps=1, max_steps=3)
    tr = SentenceEncoderTrainer(m, args, train_dataset=STS, loss="cosent", evaluator=ev)
    tr.train()
    assert ev.calls == [1, 2, 3]
    assert [h["eval_score"] for h in tr.state.log_history if "eval_score" in h]
    changed = [k for k, v in _weights(m).items() if not torch.equal(v, before[k])]
    assert changed
    tr.save_model(str(tmp_path / "final"))
    out = tmp_path / "final"
    assert (out / "modules.json").exists() and (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "CoSENTLoss" in card and str(tiny_model) in card and "eval_score" in card and "learning_rate" in card
    loaded = SentenceEncoder(str(out), device="cpu")
    assert loaded.prompts["sentence1"] == "query: "
    a = loaded.encode(["x y"], prompt_name="sentence1")
    assert abs(a - loaded.encode(["query: x y"])).max() < 1e-6


def test_single_prompt_becomes_default_and_include_prompt(tmp_path):
    from tiny import make_tiny_bert

    from stedge.training import SentenceEncoderTrainer

    path = make_tiny_bert(tmp_path / "noprompt", include_prompt=False)
    m = _encoder(path)
    seen = {}

    from stedge.training.losses import CoSENTLoss

    class Spy(CoSENTLoss):
        def forward(self, features, labels=None):
            seen.setdefault("keys", [sorted(f) for f in features])
            return super().forward(features, labels)

    tr = SentenceEncoderTrainer(m, _args(tmp_path, prompts="doc: ", max_steps=1), train_dataset=STS, loss=Spy(m))
    tr.train()
    assert all("prompt_length" in k for k in seen["keys"])
    assert m.default_prompt_name == "default" and m.prompts["default"] == "doc: "


def test_multi_dataset_routes_losses(tiny_model, tmp_path):
    from stedge.training import SentenceEncoderTrainer
    from stedge.training.losses import CoSENTLoss, MultipleNegativesRankingLoss

    m = _encoder(tiny_model)
    calls = []

    class Rec(MultipleNegativesRankingLoss):
        def forward(self, features, labels=None):
            calls.append(("mnrl", len(features), labels is None))
            return super().forward(features, labels)

    class Rec2(CoSENTLoss):
        def forward(self, features, labels=None):
            calls.append(("cosent", len(features), labels is None))
            return super().forward(features, labels)

    for sampler in ("round_robin", "proportional"):
        calls.clear()
        tr = SentenceEncoderTrainer(
            m,
            _args(
                tmp_path,
                multi_dataset_batch_sampler=sampler,
                batch_sampler="no_duplicates",
                prompts={"nli": {"anchor": "q: "}, "sts": "s: "},
            ),
            train_dataset={"sts": STS, "nli": TRIPLETS},
            loss={"sts": Rec2(m), "nli": Rec(m)},
        )
        tr.train()
        assert ("mnrl", 3, True) in calls and ("cosent", 2, False) in calls
        assert set(calls) == {("mnrl", 3, True), ("cosent", 2, False)}
        n = 4 if sampler == "round_robin" else 5
        assert len(calls) == n
    assert m.prompts["anchor"] == "q: " and m.prompts["sts"] == "s: "
    with pytest.raises(StedgeError, match="no loss for dataset 'nli'"):
        SentenceEncoderTrainer(m, _args(tmp_path), train_dataset={"sts": STS, "nli": TRIPLETS}, loss={"sts": "cosent"})


def test_unknown_loss_lists_known(tiny_model, tmp_path):
    from stedge.training import SentenceEncoderTrainer

    with pytest.raises(StedgeError, match="known losses: .*cosent"):
        SentenceEncoderTrainer(_encoder(tiny_model), _args(tmp_path), train_dataset=STS, loss="nope")


def test_lora_trains_only_adapter(tiny_model, tmp_path):
    import peft

    from stedge.models import SentenceEncoder
    from stedge.training import SentenceEncoderTrainer

    m = _encoder(tiny_model)
    m.add_adapter(peft.LoraConfig(r=4))
    before = _weights(m)
    tr = SentenceEncoderTrainer(m, _args(tmp_path, learning_rate=1e-2, max_steps=3), train_dataset=STS, loss="cosent")
    tr.train()
    changed = {k for k, v in _weights(m).items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    tr.save_model(str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "adapter_model.safetensors").exists() and not (
        tmp_path / "lora" / "model.safetensors"
    ).exists()
    e1 = m.encode(["some text"])
    assert abs(SentenceEncoder(str(tmp_path / "lora"), device="cpu").encode(["some text"]) - e1).max() < 1e-5


def test_checkpoints_best_model_accumulation_checkpointing(tiny_model, tmp_path):
    from stedge.training import SentenceEncoderTrainer

    m = _encoder(tiny_model)
    ev = FakeEvaluator()
    args = _args(
        tmp_path,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        **{_checkpointing_flag(): True},
    )
    tr = SentenceEncoderTrainer(m, args, train_dataset=STS, loss="cosent", evaluator=ev)
    tr.train()
    assert tr.args.metric_for_best_model == "eval_score"
    ck = tmp_path / "ckpt" / "checkpoint-2"
    assert (
        (ck / "modules.json").exists()
        and (ck / "model.safetensors").exists()
        and (ck / "1_Pooling" / "config.json").exists()
    )
    assert tr.state.best_model_checkpoint.endswith("checkpoint-4")  # eval_score grows with steps in FakeEvaluator
    auto = m.transformer.auto_model
    assert getattr(auto, "is_activation_checkpointing", None) or auto.is_gradient_checkpointing


def test_eval_dataset_loss(tiny_model, tmp_path):
    from stedge.training import SentenceEncoderTrainer

    tr = SentenceEncoderTrainer(
        _encoder(tiny_model),
        _args(tmp_path, max_steps=1),
        train_dataset=STS,
        eval_dataset=STS,
        loss="cosent",
        evaluator=FakeEvaluator(),
    )
    metrics = tr.evaluate()
    assert "eval_loss" in metrics and "eval_score" in metrics and math.isfinite(metrics["eval_loss"])
    ev = FakeEvaluator()
    tr = SentenceEncoderTrainer(
        _encoder(tiny_model),
        _args(tmp_path),
        train_dataset={"sts": STS, "nli": TRIPLETS},
        eval_dataset={"sts": STS, "nli": TRIPLETS},
        loss={"sts": "cosent", "nli": "mnrl"},
        evaluator=ev,
    )
    metrics = tr.evaluate()
    assert {"eval_sts_loss", "eval_nli_loss", "eval_score"} <= set(metrics) and len(ev.calls) == 1


# ------------------------------------------------------------------ kill and resume
RESUME_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    from transformers import TrainerCallback
    from stedge.models import SentenceEncoder
    from stedge.training import SentenceEncoderTrainer, SentenceEncoderTrainingArguments

    out, mode = sys.argv[1], sys.argv[2]

    class PauseAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if mode == "kill" and state.global_step == 8:
                open(os.path.join(out, "SAVED"), "w").close()
                time.sleep(120)

    data = {{"anchor": [f"question {{i}} about topic {{i % 5}}" for i in range(48)],
             "positive": [f"answer {{i}} on subject {{i % 5}}" for i in range(48)]}}
    m = SentenceEncoder({model!r}, device="cpu")
    args = SentenceEncoderTrainingArguments(output_dir=out, per_device_train_batch_size=8, num_train_epochs=2,
        save_strategy="steps", save_steps=4, use_cpu=True, disable_tqdm=True, seed=7, learning_rate=1e-3,
        batch_sampler="no_duplicates", warmup_ratio=0.2)
    tr = SentenceEncoderTrainer(m, args, train_dataset=data, loss="mnrl", callbacks=[PauseAfterSave()])
    tr.train(resume_from_checkpoint=(mode == "resume") or None)
    torch.save({{k: v.cpu() for k, v in m.state_dict().items()}}, os.path.join(out, "final.pt"))
""")


def test_kill_and_resume_matches_uninterrupted(tiny_model, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(tests=str(Path(__file__).parent), model=str(tiny_model)))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(
        [sys.executable, str(script), str(full), "full"], check=True, env=env, capture_output=True, timeout=300
    )
    killed.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), "kill"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (killed / "SAVED").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before writing checkpoint-8"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.pt").exists() and (killed / "checkpoint-8" / "modules.json").exists()
    assert not (killed / "checkpoint-12").exists()  # killed mid-epoch 2 (6 steps per epoch)
    r = subprocess.run(
        [sys.executable, str(script), str(killed), "resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(full / "final.pt"), torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    start = torch.load(full / "final.pt")  # sanity: training moved the weights away from the start
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    from stedge.models import SentenceEncoder

    init = SentenceEncoder(str(tiny_model), device="cpu").state_dict()
    assert any(not torch.allclose(init[k], start[k]) for k in init)


# ------------------------------------------------------------------ config files and CLI
def _write_sts(path: Path, n: int = 24) -> Path:
    lines = ["sentence1\tsentence2\tscore\tgenre"]
    for i in range(n):
        lines.append(f"{STS['sentence1'][i % 24]}\t{STS['sentence2'][i % 24]}\t{STS['score'][i % 24] * 5}\tnews")
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_triplets(path: Path) -> Path:
    rows = ["anchor\tpositive\tnegative"] + [f"{a}\t{p}\t{n}" for a, p, n in zip(*TRIPLETS.values())]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
def test_config_files(tmp_path, fmt):
    from stedge.training.config import load_config, merged_prompts

    d = {
        "model": "m",
        "output": "out",
        "prompts": {"anchor": "q: "},
        "datasets": {
            "sts": {"data": "a.tsv", "loss": "cosent", "columns": ["sentence1", "sentence2", "score"]},
            "nli": {"data": "b.tsv", "loss": {"name": "mnrl", "scale": 10.0}, "prompts": {"anchor": "n: "}},
        },
        "eval": {"data": "c.tsv", "task": "sts"},
        "lora": {"r": 4},
        "args": {"num_train_epochs": 2, "learning_rate": 1e-4},
    }
    p = tmp_path / f"c.{fmt}"
    if fmt == "yaml":
        import yaml

        p.write_text(yaml.safe_dump(d, sort_keys=False))
    elif fmt == "json":
        p.write_text(json.dumps(d))
    else:
        p.write_text(
            textwrap.dedent("""
            model = "m"
            output = "out"
            [prompts]
            anchor = "q: "
            [datasets.sts]
            data = "a.tsv"
            loss = "cosent"
            columns = ["sentence1", "sentence2", "score"]
            [datasets.nli]
            data = "b.tsv"
            loss = {name = "mnrl", scale = 10.0}
            prompts = {anchor = "n: "}
            [eval]
            data = "c.tsv"
            task = "sts"
            [lora]
            r = 4
            [args]
            num_train_epochs = 2
            learning_rate = 1e-4
        """)
        )
    cfg = load_config(p)
    assert (
        cfg.multi
        and list(cfg.datasets) == ["sts", "nli"]
        and cfg.datasets["nli"].loss == {"name": "mnrl", "scale": 10.0}
    )
    assert cfg.datasets["sts"].columns == ["sentence1", "sentence2", "score"] and cfg.lora == {"r": 4}
    assert cfg.args["learning_rate"] == 1e-4 and cfg.eval["task"] == "sts"
    assert merged_prompts(cfg) == {"sts": {"anchor": "q: "}, "nli": {"anchor": "n: "}}


def test_config_errors(tmp_path):
    from stedge.training.config import config_from_dict, load_config

    with pytest.raises(StedgeError, match="unknown key.*lr"):
        config_from_dict({"model": "m", "output": "o", "train_data": "x", "loss": "cosent", "lr": 1})
    with pytest.raises(StedgeError, match="'model' is required"):
        config_from_dict({"output": "o", "train_data": "x", "loss": "cosent"})
    with pytest.raises(StedgeError, match="datasets.b: no 'loss'"):
        config_from_dict({"model": "m", "output": "o", "datasets": {"b": {"data": "x"}}})
    with pytest.raises(StedgeError, match="eval.task must be one of"):
        config_from_dict(
            {"model": "m", "output": "o", "train_data": "x", "loss": "l", "eval": {"data": "x", "task": "qa"}}
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(StedgeError, match="cannot parse"):
        load_config(bad)
    with pytest.raises(StedgeError, match="unknown config format"):
        load_config(bad.rename(tmp_path / "bad.ini"))


def test_cli_train_flags_and_eval(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.models import SentenceEncoder

    data = _write_sts(tmp_path / "sts.tsv")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "train",
            str(tiny_model),
            "--train-data",
            str(data),
            "--columns",
            "sentence1,sentence2,score",
            "--loss",
            "cosent",
            "--eval-data",
            str(data),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--prompts",
            "sentence1=q: ",
            "--device",
            "cpu",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, (r.output, r.exception)
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2 and "eval_sts_spearman_cosine" in summary["metrics_after"]
    assert set(summary["metrics_before"]) == set(summary["metrics_after"])
    assert not Path(f"{out}_checkpoints").exists() and (out / "README.md").exists()
    assert SentenceEncoder(str(out), device="cpu").prompts == {"sentence1": "q: "}
    r = CliRunner().invoke(app, ["eval", str(out), "--data", str(data), "--task", "sts", "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.stdout)
    assert res["backend"] == "stedge" and res["primary_metric"] in res["metrics"]
    trip = _write_triplets(tmp_path / "trip.tsv")
    r = CliRunner().invoke(app, ["eval", str(tiny_model), "--data", str(trip), "--task", "triplet", "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert 0.0 <= json.loads(r.stdout)["metrics"][res_key(r)] <= 1.0


def res_key(r) -> str:
    res = json.loads(r.stdout)
    return res["primary_metric"]


def test_cli_bad_input(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from stedge.cli import app

    data = _write_sts(tmp_path / "sts.tsv")
    base = [
        "train",
        str(tiny_model),
        "--train-data",
        str(data),
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "o"),
        "--max-steps",
        "1",
    ]
    r = CliRunner().invoke(app, base + ["--loss", "nope"])
    assert isinstance(r.exception, StedgeError) and "known losses" in str(r.exception)
    r = CliRunner().invoke(app, base + ["--loss", "cosent"])
    assert (
        isinstance(r.exception, StedgeError)
        and "genre" in str(r.exception)
        and "expects 2 input columns" in str(r.exception)
    )
    r = CliRunner().invoke(app, ["train", str(tiny_model), "--loss", "cosent"])
    assert isinstance(r.exception, StedgeError) and "--train-data" in str(r.exception)
    r = CliRunner().invoke(app, ["eval", str(tiny_model), "--data", str(data), "--task", "qa"])
    assert isinstance(r.exception, StedgeError) and "--task must be one of" in str(r.exception)
    assert not (tmp_path / "o").exists()


def test_cli_lora_flags(tiny_model, tmp_path):
    """--lora-r/--lora-alpha/--lora-targets train and save only an adapter on the named modules."""
    from typer.testing import CliRunner

    from stedge.cli import app

    data = _write_sts(tmp_path / "sts.tsv")
    out = tmp_path / "lora"
    base = [
        "train",
        str(tiny_model),
        "--train-data",
        str(data),
        "--columns",
        "sentence1,sentence2,score",
        "--loss",
        "cosent",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--json",
    ]
    r = CliRunner().invoke(
        app, base + ["--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "query,key,value,dense", "-o", str(out)]
    )
    assert r.exit_code == 0, (r.output, r.exception)
    summary = json.loads(r.stdout)
    assert summary["adapter"] is True and summary["adapter_size_bytes"] > 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and set(cfg["target_modules"]) == {"query", "key", "value", "dense"}
    assert not list(out.glob("model.safetensors"))
    r = CliRunner().invoke(app, base + ["--lora-targets", "query", "-o", str(tmp_path / "x")])
    assert isinstance(r.exception, StedgeError) and "--lora-r" in str(r.exception)
    assert not (tmp_path / "x").exists()


def test_cli_config_multi_dataset_lora(tiny_model, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.models import SentenceEncoder

    sts, trip = _write_sts(tmp_path / "sts.tsv"), _write_triplets(tmp_path / "trip.tsv")
    cfg = {
        "model": str(tiny_model),
        "output": str(tmp_path / "multi"),
        "datasets": {
            "sts": {"data": str(sts), "loss": "cosent", "columns": ["sentence1", "sentence2", "score"]},
            "nli": {"data": str(trip), "loss": {"name": "mnrl", "scale": 10.0}, "prompts": {"anchor": "q: "}},
        },
        "lora": {"r": 2},
        "eval": {"data": str(trip), "task": "triplet"},
        "args": {
            "max_steps": 3,
            "per_device_train_batch_size": 8,
            "multi_dataset_batch_sampler": "round_robin",
            "use_cpu": True,
        },
    }
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["train", "--config", str(p), "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    s = json.loads(r.stdout)
    assert (
        s["adapter"]
        and s["adapter_size_bytes"] > 0
        and s["losses"] == {"sts": "CoSENTLoss", "nli": "MultipleNegativesRankingLoss"}
    )
    m = SentenceEncoder(str(tmp_path / "multi"), device="cpu")
    assert m.has_adapters and m.prompts == {"anchor": "q: "}


# ------------------------------------------------------------------ cross-encoder
def test_cross_encoder_bce_training(tiny_cross_encoder, tmp_path):
    from stedge.evaluation import RerankingEvaluator
    from stedge.models import CrossEncoder
    from stedge.training import CrossEncoderTrainer
    from stedge.training.cross_encoder import BinaryCrossEntropyLoss

    ce = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    data = {
        "query": ["what is a cat", "what is rain"] * 8,
        "document": ["a cat is an animal", "sunny day"] * 8,
        "label": [1, 0] * 8,
    }
    samples = [{"query": "what is a cat", "positive": ["a cat is an animal"], "negative": ["sunny day", "the moon"]}]
    ev = RerankingEvaluator(samples, name="toy")
    before = {k: v.clone() for k, v in ce.state_dict().items()}
    args = _args(tmp_path, max_steps=4, learning_rate=1e-3, eval_strategy="steps", eval_steps=2)
    tr = CrossEncoderTrainer(ce, args, train_dataset=data, evaluator=ev)
    assert isinstance(tr.loss, BinaryCrossEntropyLoss)
    tr.train()
    assert any(ev.primary_metric.replace("toy_", "") in k for h in tr.state.log_history for k in h)
    assert any(not torch.equal(v, before[k]) for k, v in ce.state_dict().items())
    tr.save_model(str(tmp_path / "ce"))
    again = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    pairs = [("what is a cat", "a cat is an animal")]
    assert abs(again.predict(pairs) - ce.predict(pairs)).max() < 1e-5
    assert (tmp_path / "ce" / "README.md").exists()
    with pytest.raises(StedgeError, match="label"):
        CrossEncoderTrainer(ce, args, train_dataset={"query": ["a"], "document": ["b"]})


# ------------------------------------------------------------------ real model (bundled MiniLM, shared data)
@pytest.mark.real
def test_real_minilm_cosent_small_slice(minilm_path, shared_data, stsb_test, tmp_path):
    """200 STS-B train pairs, 20 CoSENT steps on the real MiniLM: the model learns the pairs it saw
    (their Spearman rises), held-out STS-B test stays close (a 20-step slice is too little to raise
    it; the full-epoch run in stedge/training/README.md does), and sentence-transformers loads the result."""
    from sentence_transformers import SentenceTransformer

    from stedge.data import read_sts
    from stedge.evaluation import EmbeddingSimilarityEvaluator
    from stedge.models import SentenceEncoder
    from stedge.training.config import config_from_dict, run_training

    train_file = shared_data / "stsb" / "train.tsv.gz"
    seen = read_sts(train_file, limit=200)
    ev_seen = EmbeddingSimilarityEvaluator(seen.sentences1, seen.sentences2, seen.scores, name="seen")
    ev_test = EmbeddingSimilarityEvaluator(stsb_test.sentences1, stsb_test.sentences2, stsb_test.scores, name="test")
    cfg = config_from_dict(
        {
            "model": str(minilm_path),
            "output": str(tmp_path / "out"),
            "train_data": str(train_file),
            "columns": ["sentence1", "sentence2", "score"],
            "loss": "cosent",
            "args": {
                "max_steps": 20,
                "per_device_train_batch_size": 16,
                "learning_rate": 2e-5,
                "warmup_ratio": 0.1,
                "use_cpu": True,
                "seed": 0,
                "disable_tqdm": True,
            },
        }
    )
    cfg.datasets["train"].limit = 200
    summary = run_training(cfg, device="cpu")
    assert summary["steps"] == 20 and summary["train_rows"] == 200

    base = SentenceEncoder(str(minilm_path), device="cpu")
    ours = SentenceEncoder(str(tmp_path / "out"), device="cpu")
    seen_before, seen_after = ev_seen(base)["seen_spearman_cosine"], ev_seen(ours)["seen_spearman_cosine"]
    assert seen_after > seen_before + 0.005, (seen_before, seen_after)
    test_before, test_after = ev_test(base)["test_spearman_cosine"], ev_test(ours)["test_spearman_cosine"]
    assert test_after > test_before - 0.01, (test_before, test_after)
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    texts = ["A man is playing a guitar.", "Stocks fell sharply on Monday."]
    assert abs(st.encode(texts) - ours.encode(texts)).max() < 1e-5


def _eval_sts_model_and_artifact(model: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """Export ``model`` (ONNX) and run `stedge eval --task sts --json` on both: (artifact, data, {torch, runtime})."""
    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.export.core import export_model

    art = tmp_path / "art"
    export_model(str(model), art, backend="onnx")
    data = _write_sts(tmp_path / "sts.tsv")
    res = {}
    for name, m in (("torch", str(model)), ("runtime", str(art))):
        r = CliRunner().invoke(app, ["eval", m, "--data", str(data), "--task", "sts", "--json"])
        assert r.exit_code == 0, (r.output, r.exception)
        res[name] = json.loads(r.stdout)
    return art, data, res


def test_eval_artifact_runs_through_runtime(tiny_model, tmp_path):
    """`stedge eval` on an exported artifact (stedge.json) uses stedge_runtime and agrees with torch."""
    art, _, res = _eval_sts_model_and_artifact(tiny_model, tmp_path)
    assert (art / "stedge.json").exists()
    assert res["runtime"]["backend"] == "stedge_runtime" and res["torch"]["backend"] == "stedge"
    key = res["torch"]["primary_metric"]
    assert abs(res["runtime"]["metrics"][key] - res["torch"]["metrics"][key]) < 1e-3


def test_eval_rerank_on_a_cross_encoder_and_its_artifact(tiny_cross_encoder, tmp_path):
    """`stedge eval --task rerank`: JSON lines of {query, positive: [...], negative: [...]} (RerankingEvaluator's
    samples; a list crashed the loader with an internal error) give the same metrics for the torch cross-encoder
    and its artifact; the artifact's result names the variant that ran, which --variant / --tier choose; those
    options are an error for a torch model, and a row that is not text names its row and column."""
    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.export.core import export_model

    art = tmp_path / "art"
    export_model(str(tiny_cross_encoder), art, backend="all")
    rows = [
        {"query": "what is a cat", "positive": ["a cat is an animal"], "negative": ["sunny day", "the moon"]},
        {"query": "what is rain", "positive": ["rain is water falling", "wet weather"], "negative": ["a cat"]},
    ]
    data = tmp_path / "rerank.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["--data", str(data), "--task", "rerank", "--json"]
    res = {}
    for name, args in (
        ("torch", [str(tiny_cross_encoder)]),
        ("near", [str(art)]),
        ("ov", [str(art), "--variant", "openvino-fp32"]),
    ):
        r = CliRunner().invoke(app, ["eval", *args, *base])
        assert r.exit_code == 0, (r.output, r.exception)
        res[name] = json.loads(r.stdout)
    key = res["torch"]["primary_metric"]
    assert key == "rerank_ndcg@10" and "variant" not in res["torch"]
    assert all(abs(res[n]["metrics"][key] - res["torch"]["metrics"][key]) < 1e-6 for n in ("near", "ov"))
    assert res["ov"]["variant"] == "openvino-fp32" and res["ov"]["variant_tier"] == "exact"
    assert res["near"]["variant"] in ("onnx-fp32", "openvino-fp32") and res["near"]["selection"]
    r = CliRunner().invoke(app, ["eval", str(tiny_cross_encoder), *base, "--tier", "exact"])
    assert isinstance(r.exception, StedgeError) and "artifacts only" in str(r.exception)
    data.write_text(json.dumps({"query": "q", "positive": ["a"], "negative": [3]}) + "\n")
    r = CliRunner().invoke(app, ["eval", str(art), *base])
    assert isinstance(r.exception, StedgeError) and "row 1: negative must be a text or a list of texts" in str(
        r.exception
    )


def test_eval_sts_on_a_cross_encoder_and_its_artifact(tiny_cross_encoder, tmp_path):
    """`stedge eval --task sts` on a cross-encoder correlates its pair scores with the gold ones (it was refused as a
    sentence encoder); its artifact gives the same figures through the runtime; a task that needs embeddings is an
    error naming the two that apply."""
    from typer.testing import CliRunner

    from stedge.cli import app

    art, data, res = _eval_sts_model_and_artifact(tiny_cross_encoder, tmp_path)
    assert res["torch"]["primary_metric"] == res["runtime"]["primary_metric"] == "sts_spearman"
    assert set(res["torch"]["metrics"]) == {"sts_pearson", "sts_spearman"}
    for key in res["torch"]["metrics"]:
        assert abs(res["runtime"]["metrics"][key] - res["torch"]["metrics"][key]) < 1e-4, key
    for m in (str(tiny_cross_encoder), str(art)):
        r = CliRunner().invoke(app, ["eval", m, "--data", str(data), "--task", "triplet"])
        assert isinstance(r.exception, StedgeError) and "use --task rerank (ranking) or --task sts" in str(r.exception)


def test_cross_encoder_training_evaluates_sts_pairs_by_correlation(tiny_cross_encoder, tmp_path):
    """`stedge train RERANKER --loss bce --eval-data STS` (sentence1, sentence2, score: no query column) evaluates the
    correlation of the reranker's scores with the gold ones, as sentence-transformers' STS-B cross-encoder example
    does, and keeps the best checkpoint by that Spearman; query/document/label eval rows still get a rerank
    evaluation (test_cli_trains_a_cross_encoder_with_bce)."""
    from typer.testing import CliRunner

    from stedge.cli import app

    data = tmp_path / "sts.tsv"
    rows = zip(STS["sentence1"], STS["sentence2"], STS["score"])  # scores 0-1, as bce takes them
    data.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    out = tmp_path / "ce"
    args = ["train", str(tiny_cross_encoder), "--train-data", str(data), "--loss", "bce", "--eval-data", str(data)]
    r = CliRunner().invoke(app, [*args, "--max-steps", "2", "--device", "cpu", "-o", str(out), "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    summary = json.loads(r.stdout)
    assert {k.rsplit("_", 1)[-1] for k in summary["metrics_after"]} >= {"pearson", "spearman"}
    assert not any("ndcg" in k for k in summary["metrics_after"])


def test_sentence_stages_refuse_a_cross_encoder(tiny_cross_encoder, tmp_path):
    """A reranker folder (a *ForSequenceClassification model) loaded as a sentence encoder lost its head and was
    mean-pooled: `stedge train --loss cosent`, `stedge pca` and `stedge embed` on it wrote or printed a useless
    bi-encoder's output. Now it is an error (exit 2) that says what to do, and nothing is written."""
    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.errors import InvalidModelError
    from stedge.models import CrossEncoder, SentenceEncoder

    with pytest.raises(InvalidModelError, match="is a cross-encoder .* stedge.CrossEncoder"):
        SentenceEncoder(str(tiny_cross_encoder), device="cpu")
    assert CrossEncoder(str(tiny_cross_encoder), device="cpu").predict([("a", "b")]).shape == (1,)
    data = _write_sts(tmp_path / "sts.tsv")
    calls = {
        "train": ["train", str(tiny_cross_encoder), "--train-data", str(data), "--loss", "cosent", "--max-steps", "1"],
        "pca": ["pca", str(tiny_cross_encoder), "--dim", "4", "--data", str(data)],
    }
    for name, args in calls.items():
        r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / name)])
        assert isinstance(r.exception, StedgeError) and "cross-encoder" in str(r.exception), (name, r.output)
        assert not (tmp_path / name).exists()
    r = CliRunner().invoke(app, ["embed", str(tiny_cross_encoder), "hello"])
    assert isinstance(r.exception, InvalidModelError)


def test_cli_trains_a_cross_encoder_with_bce(tiny_cross_encoder, tiny_model, tmp_path):
    """`stedge train RERANKER --loss bce` fine-tunes the cross-encoder itself (query, document, label rows; rerank
    evaluation before and after) and saves a cross-encoder; from a sentence encoder, bce makes a new reranker; the
    bi-encoder options and losses, and labels outside [0, 1], are errors that say so, with nothing written."""
    from typer.testing import CliRunner

    from stedge.cli import app
    from stedge.models import CrossEncoder

    data = tmp_path / "pairs.tsv"
    rows = [("what is a cat", "a cat is an animal", 1), ("what is a cat", "sunny day", 0)] * 4
    rows += [("what is rain", "water falling from clouds", 1), ("what is rain", "the moon", 0)] * 4
    data.write_text("query\tdocument\tlabel\n" + "".join(f"{q}\t{d}\t{lab}\n" for q, d, lab in rows))
    before = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    out = tmp_path / "ce"
    base = ["train", str(tiny_cross_encoder), "--train-data", str(data), "--max-steps", "3", "--device", "cpu"]
    r = CliRunner().invoke(
        app, [*base, "--loss", "bce", "--eval-data", str(data), "--lr", "1e-3", "-o", str(out), "--json"]
    )
    assert r.exit_code == 0, (r.output, r.exception)
    summary = json.loads(r.stdout)
    assert summary["losses"] == {"train": "BinaryCrossEntropyLoss"} and summary["steps"] == 3
    assert any(k.endswith("ndcg@10") for k in summary["metrics_after"])
    after = CrossEncoder(str(out), device="cpu")
    pairs = [("what is a cat", "a cat is an animal")]
    assert after.num_labels == 1 and abs(after.predict(pairs) - before.predict(pairs)).max() > 1e-6
    assert "cross-encoder" in (out / "README.md").read_text()
    r = CliRunner().invoke(app, ["train", str(tiny_model), *base[2:], "--loss", "bce", "-o", str(tmp_path / "new")])
    assert r.exit_code == 0, (r.output, r.exception)  # a sentence encoder + bce: a new one-label reranker
    assert CrossEncoder(str(tmp_path / "new"), device="cpu").num_labels == 1
    bad = tmp_path / "scores.tsv"
    bad.write_text("query\tdocument\tscore\nq\td\t3\nq\te\t0\n")
    for extra, message in (
        (["--loss", "cosent"], "trains with loss bce"),
        (["--loss", "bce", "--lora-r", "4"], "LoRA"),
        (["--loss", "bce", "--prompts", "q: "], "prompts"),
        (["--loss", "bce", "--eval-data", str(data), "--eval-task", "triplet"], "--eval-task rerank (ranking) or sts"),
        (["--loss", "bce", "--train-data", str(bad)], "needs labels from 0 to 1: give the range"),
        (["--loss", "bce", "--train-data", str(bad), "--label-range", "0:2"], "outside the label range 0 to 2"),
        (["--loss", "bce", "--train-data", str(bad), "--label-range", "5:0"], "expected two numbers LO < HI"),
    ):
        r = CliRunner().invoke(app, [*base, *extra, "-o", str(tmp_path / "x")])
        assert isinstance(r.exception, StedgeError) and message in str(r.exception), (extra, r.output)
        assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(
        app, [*base, "--loss", "bce", "--train-data", str(bad), "--label-range", "0:3", "-o", str(tmp_path / "y")]
    )
    assert r.exit_code == 0 and CrossEncoder(str(tmp_path / "y"), device="cpu").num_labels == 1, r.output
