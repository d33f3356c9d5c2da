"""Training runs described by a config file (YAML, JSON or TOML) or by `stedge train` flags.

A config file, for everything the flags do not cover (multi-dataset, per-dataset losses and prompts)::

    model: all-MiniLM-L6-v2
    output: models/minilm-multi
    datasets:                          # or, for one dataset: train_data / loss / columns at the top
      stsb:
        data: stsb/train.tsv.gz
        columns: [sentence1, sentence2, score]
        loss: cosine
        label_range: [0, 5]            # the scores run from 0 to 5: rescaled onto 0-1, as the cosine loss needs
      nli:
        data: nli/triplets.tsv.gz
        columns: [anchor, positive, negative]
        loss: {name: mnrl, scale: 20}
        prompts: {anchor: "query: "}  # this dataset's prompts (one string, or column -> prompt)
    prompts: null                      # any of the four forms, for all datasets
    eval: {data: stsb/dev.tsv.gz, task: sts, limit: 500}
    lora: {r: 8, lora_alpha: 16}       # peft.LoraConfig arguments
    args:                              # any transformers TrainingArguments field, plus batch_sampler...
      num_train_epochs: 1
      per_device_train_batch_size: 16
      learning_rate: 2.0e-5
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StedgeError

TOP_KEYS = (
    "model",
    "output",
    "overwrite",
    "train_data",
    "loss",
    "columns",
    "datasets",
    "prompts",
    "eval",
    "lora",
    "args",
    "max_seq_length",
    "seed",
    "label_range",
)
DATASET_KEYS = ("data", "loss", "columns", "prompts", "split", "limit", "label_range")
EVAL_KEYS = ("data", "task", "limit", "split", "name")
EVAL_TASKS = ("sts", "triplet", "ir", "rerank")
# A cross-encoder scores pairs: ranking (rerank) or the correlation of its scores with gold ones (sts).
CROSS_ENCODER_EVAL_TASKS = ("rerank", "sts")


@dataclass
class DatasetSpec:
    """One training dataset: where it is, which columns, which loss, which prompts."""

    data: Any
    loss: Any = None
    columns: list[str] | None = None
    prompts: Any = None
    split: str | None = None
    limit: int | None = None
    label_range: tuple[float, float] | None = None  # labels run from lo to hi in the data: rescaled onto 0..1


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    model: str
    output: str
    datasets: dict[str, DatasetSpec]
    prompts: Any = None
    eval: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    args: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    max_seq_length: int | None = None
    multi: bool = False  # True when the datasets came as a mapping (train multi-dataset)


def _read(path: Path) -> dict:
    if not path.exists():
        raise StedgeError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise StedgeError(f"{path}: unknown config format '{suffix}' (use .yaml, .yml, .json or .toml)")
    except StedgeError:
        raise
    except Exception as e:  # yaml/toml/json syntax errors
        raise StedgeError(f"{path}: cannot parse ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise StedgeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _check_keys(d: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise StedgeError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known keys: {', '.join(allowed)}")


def _columns(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise StedgeError(f"{where}: columns must be a list of column names")
    return value


def label_range(value: Any, where: str) -> tuple[float, float] | None:
    """``"LO:HI"`` or ``[LO, HI]`` (the range a data set's labels run over) as two floats, LO < HI."""
    if value is None:
        return None
    parts = value.split(":") if isinstance(value, str) else value
    try:
        lo, hi = (float(x) for x in parts)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise StedgeError(
            f"{where}: label range {value!r}: expected two numbers LO < HI, the range the labels run over in the "
            "data (e.g. 0:5 for STS-B scores, or [0, 5] in a config file)"
        )
    return lo, hi


def config_from_dict(d: dict, where: str = "config") -> TrainConfig:
    """Validate a parsed config mapping into a TrainConfig (errors name the key at fault)."""
    _check_keys(d, TOP_KEYS, where)
    for key in ("model", "output"):
        if not d.get(key):
            raise StedgeError(f"{where}: '{key}' is required")
    if "datasets" in d and "train_data" in d:
        raise StedgeError(f"{where}: give either 'datasets' (several) or 'train_data' (one), not both")
    datasets: dict[str, DatasetSpec] = {}
    multi = False
    if "datasets" in d:
        if not isinstance(d["datasets"], dict) or not d["datasets"]:
            raise StedgeError(f"{where}: 'datasets' must map dataset names to {{data, loss, columns, prompts}}")
        multi = True
        for name, spec in d["datasets"].items():
            w = f"{where}: datasets.{name}"
            if isinstance(spec, str):
                spec = {"data": spec}
            if not isinstance(spec, dict):
                raise StedgeError(f"{w}: expected a mapping with at least 'data'")
            _check_keys(spec, DATASET_KEYS, w)
            if "data" not in spec:
                raise StedgeError(f"{w}: 'data' is required")
            loss = spec.get("loss", d.get("loss"))
            if loss is None:
                raise StedgeError(f"{w}: no 'loss' (give one per dataset or a top-level 'loss')")
            datasets[str(name)] = DatasetSpec(
                spec["data"],
                loss,
                _columns(spec.get("columns", d.get("columns")), w),
                spec.get("prompts"),
                spec.get("split"),
                spec.get("limit"),
                label_range(spec.get("label_range", d.get("label_range")), w),
            )
    elif "train_data" in d:
        if d.get("loss") is None:
            raise StedgeError(f"{where}: 'loss' is required")
        cols, rng = _columns(d.get("columns"), where), label_range(d.get("label_range"), where)
        datasets["train"] = DatasetSpec(d["train_data"], d["loss"], cols, label_range=rng)
    else:
        raise StedgeError(f"{where}: 'datasets' or 'train_data' is required")
    ev = d.get("eval")
    if ev is not None:
        if isinstance(ev, str):
            ev = {"data": ev}
        if not isinstance(ev, dict) or "data" not in ev:
            raise StedgeError(
                f"{where}: 'eval' must be a path or a mapping with 'data' (and 'task': {', '.join(EVAL_TASKS)})"
            )
        _check_keys(ev, EVAL_KEYS, f"{where}: eval")
        if ev.get("task") is not None and ev["task"] not in EVAL_TASKS:
            raise StedgeError(f"{where}: eval.task must be one of {', '.join(EVAL_TASKS)}, got {ev['task']!r}")
    args = dict(d.get("args") or {})
    if "seed" in d:
        args["seed"] = d["seed"]
    lora = d.get("lora")
    if lora is not None and not isinstance(lora, dict):
        if isinstance(lora, int):
            lora = {"r": lora}
        else:
            raise StedgeError(f"{where}: 'lora' must be a mapping of peft.LoraConfig arguments (e.g. {{r: 8}})")
    return TrainConfig(
        model=str(d["model"]),
        output=str(d["output"]),
        datasets=datasets,
        prompts=d.get("prompts"),
        eval=ev,
        lora=lora,
        args=args,
        overwrite=bool(d.get("overwrite", False)),
        max_seq_length=d.get("max_seq_length"),
        multi=multi,
    )


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and validate a YAML/JSON/TOML training config."""
    p = Path(path)
    return config_from_dict(_read(p), where=str(p))


# --------------------------------------------------------------------------- runs
CROSS_ENCODER_LOSSES = ("bce", "binary-cross-entropy", "binarycrossentropyloss")


def _is_bce(spec: Any) -> bool:
    """Whether a loss spec (a name, or a mapping with one) names the cross-encoder's loss (bce)."""
    name = spec.get("name") if isinstance(spec, dict) else spec
    return isinstance(name, str) and name.strip().lower().replace("_", "-") in CROSS_ENCODER_LOSSES


def _loss_from_spec(spec: Any, model: Any) -> Any:
    from .losses import build_loss

    if is_cross_encoder_model(model):
        if not _is_bce(spec):
            raise StedgeError(f"a cross-encoder (reranker) trains with loss bce (BinaryCrossEntropyLoss), got {spec!r}")
        from .cross_encoder import BinaryCrossEntropyLoss

        params = {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else {}
        return BinaryCrossEntropyLoss(model, **params)
    if isinstance(spec, str):
        return build_loss(spec, model)
    if isinstance(spec, dict) and "name" in spec:
        params = {k: v for k, v in spec.items() if k != "name"}
        if "loss" in params and isinstance(params["loss"], (str, dict)):  # a wrapping loss (matryoshka)
            params["loss"] = _loss_from_spec(params["loss"], model)
        return build_loss(spec["name"], model, **params)
    raise StedgeError(f"a loss is a name or a mapping {{name: ..., <parameters>}}, got {spec!r}")


def merged_prompts(cfg: TrainConfig) -> Any:
    """The run's prompts in one of the four forms (per-dataset prompts folded into dataset -> ...)."""
    per_ds = {k: s.prompts for k, s in cfg.datasets.items() if s.prompts}
    if not per_ds:
        return cfg.prompts
    if not cfg.multi:
        return per_ds.get("train", cfg.prompts)
    out: dict[str, Any] = {}
    for name in cfg.datasets:
        if name in per_ds:
            out[name] = per_ds[name]
        elif isinstance(cfg.prompts, str):
            out[name] = cfg.prompts
        elif isinstance(cfg.prompts, dict):
            out[name] = cfg.prompts.get(name, {k: v for k, v in cfg.prompts.items() if isinstance(v, str)})
    return out


def detect_eval_task(columns: list[str]) -> str:
    """sts for (text, text, score), triplet for (anchor, positive, negative)."""
    from .data import split_columns

    inputs, label = split_columns(columns)
    if label is not None and len(inputs) >= 2:
        return "sts"
    if label is None and len(inputs) >= 3:
        return "triplet"
    raise StedgeError(
        f"cannot tell which evaluator fits eval data with columns {', '.join(columns)}; "
        f"name the task ({', '.join(EVAL_TASKS)})"
    )


def build_evaluator(
    task: str | None,
    data: Any,
    limit: int | None = None,
    name: str = "eval",
    split: str | None = None,
    cross_encoder: bool = False,
    **ir_options: Any,
):
    """An evaluator for a task over a data source (STS pairs, triplets, a BEIR folder, or rerank rows).

    ``cross_encoder``: the task, when not given, is rerank or sts (from the columns), as a cross-encoder takes.
    ``ir_options`` (precision, rescore_multiplier, ranges) go to the InformationRetrievalEvaluator.
    """
    from ..data import read_rows, resolve_data_path

    check_limit(limit, "limit")

    if task == "ir" or (task is None and not cross_encoder and resolve_data_path(data).is_dir()):
        from ..evaluation import InformationRetrievalEvaluator, load_beir

        queries, corpus, qrels = load_beir(resolve_data_path(data), split=split or "test")
        if limit:
            keep = list(qrels)[:limit]
            qrels = {q: qrels[q] for q in keep}
            queries = {q: queries[q] for q in keep}
        return InformationRetrievalEvaluator(queries, corpus, qrels, name=name, **ir_options)
    if ir_options:
        raise StedgeError(f"{', '.join(ir_options)} apply to --task ir only")
    rows = read_rows(data, split=split)
    if not rows:
        raise StedgeError(f"eval data {data}: no rows")
    if limit:
        rows = rows[:limit]
    cols = list(rows[0])
    task = task or (_cross_encoder_eval_task(cols) if cross_encoder else detect_eval_task(cols))
    from .data import split_columns

    inputs, label = split_columns(cols)
    if task == "sts":
        from ..data import read_sts
        from ..evaluation import EmbeddingSimilarityEvaluator

        pairs = read_sts(data, limit=limit)
        return EmbeddingSimilarityEvaluator(pairs.sentences1, pairs.sentences2, pairs.scores, name=name)
    if task == "triplet":
        from ..evaluation import TripletEvaluator

        a, p, n = _pick(cols, ("anchor", "query"), ("positive", "pos"), ("negative", "neg"), inputs, 3, data)
        return TripletEvaluator([r[a] for r in rows], [r[p] for r in rows], [r[n] for r in rows], name=name)
    if task == "rerank":
        from ..evaluation import RerankingEvaluator

        return RerankingEvaluator(rerank_samples(rows, data), name=name)
    raise StedgeError(f"unknown task {task!r}; choose one of {', '.join(EVAL_TASKS)}")


def _pick(cols: list[str], *args: Any) -> list[str]:
    *names, inputs, n, data = args
    chosen = []
    for i, alternatives in enumerate(names):
        c = next((x for x in alternatives if x in cols), None)
        if c is None:
            if len(inputs) < n:
                raise StedgeError(
                    f"eval data {data}: expected {n} text columns ({', '.join(a[0] for a in names)}), found "
                    f"{', '.join(cols)}"
                )
            c = inputs[i]
        chosen.append(c)
    return chosen


def rerank_samples(rows: list[dict], data: Any) -> list[dict]:
    """Group rerank rows into {query, positive: [...], negative: [...]} samples.

    Accepted rows: (query, positive, negative), where positive and negative hold a text or a list of texts (so one
    JSON line per sample, as RerankingEvaluator takes them, works too), or (query, document, label) with label
    1 = relevant.
    """
    cols = list(rows[0])
    q = next((c for c in ("query", "anchor", "question", "sentence1") if c in cols), None)
    if q is None:
        raise StedgeError(f"rerank data {data}: needs a query column (query/anchor/question), found {', '.join(cols)}")

    def texts(i: int, col: str, many: bool) -> list[str]:
        v = rows[i][col]
        vals = v if many and isinstance(v, list) else [v]
        if not all(isinstance(x, str) for x in vals):
            what = "a text or a list of texts" if many else "a text"
            raise StedgeError(f"rerank data {data}: row {i + 1}: {col} must be {what}, got {type(v).__name__}")
        return vals

    samples: dict[str, dict] = {}
    if "positive" in cols and "negative" in cols:
        for i, r in enumerate(rows):
            s = samples.setdefault(texts(i, q, False)[0], {"query": r[q], "positive": [], "negative": []})
            for col in ("positive", "negative"):
                s[col].extend(t for t in dict.fromkeys(texts(i, col, True)) if t not in s[col])
    else:
        doc = next((c for c in ("document", "passage", "text", "sentence2", "positive") if c in cols), None)
        lab = next((c for c in ("label", "score") if c in cols), None)
        if doc is None or lab is None:
            raise StedgeError(
                f"rerank data {data}: expected query/positive/negative or query/document/label columns, found "
                f"{', '.join(cols)}"
            )
        for i, r in enumerate(rows):
            try:
                rel = float(r[lab]) > 0
            except (TypeError, ValueError):
                raise StedgeError(f"rerank data {data}: row {i + 1}: {lab} {r[lab]!r} is not a number") from None
            s = samples.setdefault(texts(i, q, False)[0], {"query": r[q], "positive": [], "negative": []})
            s["positive" if rel else "negative"].append(texts(i, doc, False)[0])
    return [s for s in samples.values() if s["positive"]]


def check_limit(limit: Any, what: str) -> None:
    """A row limit is None (everything) or an integer >= 1; 0 would silently mean everything."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StedgeError(f"{what} must be an integer >= 1 (got {limit!r}); leave it out to use every row")


def _limit(ds: Any, n: int | None) -> Any:
    return ds.select(range(min(n, len(ds)))) if n else ds


def is_cross_encoder(ref: str) -> bool:
    """Whether a model reference is a cross-encoder (reranker) folder (stedge.hub.detect_task)."""
    from ..hub import detect_task, resolve_model

    return detect_task(resolve_model(ref)) == "reranking"


def is_cross_encoder_model(model: Any) -> bool:
    """Whether a loaded model is a stedge CrossEncoder."""
    from ..models import CrossEncoder

    return isinstance(model, CrossEncoder)


def _bce(cfg: TrainConfig) -> bool:
    """Whether the run's loss is the cross-encoder's (bce)."""
    return any(_is_bce(d.loss) for d in cfg.datasets.values())


def _cross_encoder_config(cfg: TrainConfig) -> None:
    """What a cross-encoder run cannot take (one dataset, no LoRA, no prompts; evaluation: rerank or sts, by the
    eval data's columns when --eval-task is not given)."""
    where = f"{cfg.model} trains as a cross-encoder (reranker)"
    if cfg.multi:
        raise StedgeError(f"{where}: it trains on one dataset (query, document, label), not {len(cfg.datasets)}")
    if cfg.lora:
        raise StedgeError(f"{where}: LoRA adapters are trained for sentence encoders; drop --lora-r / lora")
    if merged_prompts(cfg):
        raise StedgeError(f"{where}: prompts do not apply to a cross-encoder; drop --prompts")
    task = (cfg.eval or {}).get("task")
    if task is not None and task not in CROSS_ENCODER_EVAL_TASKS:
        raise StedgeError(
            f"{where}: it is evaluated with --eval-task rerank (ranking) or sts (score correlation), not {task}"
        )


def _cross_encoder_eval_task(cols: list[str]) -> str:
    """rerank for ranking rows (a query column, or positive/negative), sts for scored pairs of two texts."""
    from .data import split_columns

    if {"query", "anchor", "question", "positive", "negative"} & set(cols):
        return "rerank"
    inputs, label = split_columns(cols)
    return "sts" if label is not None and len(inputs) == 2 else "rerank"


def _load_model(cfg: TrainConfig, device: str | None) -> Any:
    """The SentenceEncoder (or, for a reranker folder, CrossEncoder) to train, with max_seq_length and a fresh LoRA
    adapter as the config says."""
    from ..models import CrossEncoder, SentenceEncoder

    reranker = is_cross_encoder(cfg.model)
    if reranker or _bce(cfg):  # bce on a sentence encoder or plain model: a new reranker with a one-label head
        _cross_encoder_config(cfg)
        labels = None if reranker else 1
        return CrossEncoder(cfg.model, num_labels=labels, device=device, max_length=cfg.max_seq_length or None)
    model = SentenceEncoder(cfg.model, device=device)
    if cfg.max_seq_length:
        model.max_seq_length = int(cfg.max_seq_length)
    if cfg.lora:
        from ..errors import require

        peft = require("peft", "train", "LoRA training")
        try:
            model.add_adapter(peft.LoraConfig(**cfg.lora))
        except TypeError as e:
            raise StedgeError(
                f"lora: {e} (the keys are peft.LoraConfig arguments: r, lora_alpha, lora_dropout, target_modules...)"
            ) from None
    return model


def _training_data(cfg: TrainConfig, model: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(train data, loss, losses by dataset name): one dataset, or a dict of them for multi-dataset training."""
    from .data import load_dataset, prepare_dataset

    data: dict[str, Any] = {}
    losses: dict[str, Any] = {}
    columns: dict[str, Any] = {}
    ranges: dict[str, Any] = {}
    for name, spec in cfg.datasets.items():
        ds = load_dataset(spec.data, split=spec.split, name=f"dataset '{name}'")
        check_limit(spec.limit, f"dataset '{name}': limit")
        data[name] = _limit(ds, spec.limit)
        losses[name] = _loss_from_spec(spec.loss, model)
        columns[name] = spec.columns
        ranges[name] = spec.label_range
    if cfg.multi:
        train_data, loss, cols, rng = data, losses, columns, ranges
    else:
        train_data, loss, cols, rng = data["train"], losses["train"], columns["train"], ranges["train"]
    train_data = prepare_dataset(train_data, loss, name="train data", columns=cols, label_range=rng)
    return train_data, loss, losses


def _training_args(cfg: TrainConfig, ckpt_dir: Path, with_eval: bool, device: str | None, quiet: bool) -> Any:
    """SentenceEncoderTrainingArguments from stedge's defaults and the config's ``args``."""
    from .arguments import SentenceEncoderTrainingArguments

    args_d = {"save_strategy": "steps", "save_steps": 500, "save_total_limit": 2, "logging_steps": 10}
    if with_eval:
        args_d["eval_strategy"] = "epoch"
    args_d.update(cfg.args)
    args_d["prompts"] = merged_prompts(cfg)
    if device == "cpu":
        args_d.setdefault("use_cpu", True)
    if quiet:
        args_d.setdefault("disable_tqdm", True)
    try:
        args = SentenceEncoderTrainingArguments(output_dir=str(ckpt_dir), **args_d)
    except TypeError as e:
        raise StedgeError(
            f"args: {e} (keys are transformers TrainingArguments fields plus batch_sampler, "
            "multi_dataset_batch_sampler, prompts)"
        ) from None
    except ValueError as e:
        raise StedgeError(f"args: {e}") from None
    return args


def run_training(
    cfg: TrainConfig,
    resume: bool | str = False,
    callbacks: list | None = None,
    device: str | None = None,
    keep_checkpoints: bool = False,
) -> dict[str, Any]:
    """Train as the config says, save the model atomically to ``cfg.output``, and return a summary.

    Checkpoints go to ``<output>_checkpoints`` (removed after success unless ``keep_checkpoints``);
    ``resume=True`` continues from the last checkpoint there (a path picks one).
    """
    import shutil

    from ..io import atomic_dir, check_output, dir_size
    from .data import source_name
    from .trainer import SentenceEncoderTrainer

    out = Path(cfg.output)
    check_output(out, cfg.overwrite, protect=[cfg.model] if Path(str(cfg.model)).is_dir() else [])
    _resume_arg(resume, Path(f"{out}_checkpoints"))  # before any work: earlier checkpoints are never lost
    t0 = time.perf_counter()
    model = _load_model(cfg, device)
    train_data, loss, losses = _training_data(cfg, model)
    evaluator = None
    if cfg.eval:
        evaluator = build_evaluator(
            cfg.eval.get("task"),
            cfg.eval["data"],
            limit=cfg.eval.get("limit"),
            name=cfg.eval.get("name") or _stem(cfg.eval["data"]),
            split=cfg.eval.get("split"),
            cross_encoder=is_cross_encoder_model(model),
        )
    ckpt_dir = Path(f"{out}_checkpoints")
    args = _training_args(cfg, ckpt_dir, evaluator is not None, device, bool(callbacks))
    data_desc = "; ".join(f"{k}: {source_name(s.data)}" for k, s in cfg.datasets.items())
    kwargs = {"train_dataset": train_data, "loss": loss, "evaluator": evaluator, "callbacks": callbacks}
    if is_cross_encoder_model(model):
        from .cross_encoder import CrossEncoderTrainer

        trainer = CrossEncoderTrainer(model, args, base_model=cfg.model, **kwargs)
    else:
        trainer = SentenceEncoderTrainer(
            model, args, base_model=cfg.model, data_description=f"{data_desc} — {_describe(train_data)}", **kwargs
        )
    if callbacks:  # our callbacks report progress: drop transformers' tqdm bar / stdout printer
        from .callbacks import report_progress_with_rich

        report_progress_with_rich(trainer)
    before = trainer.run_evaluator() if evaluator is not None else {}
    resume_arg = _resume_arg(resume, ckpt_dir)
    result = trainer.train(resume_from_checkpoint=resume_arg)
    after = trainer.run_evaluator() if evaluator is not None else {}
    if after:
        trainer.log(dict(after))
    if trainer.is_world_process_zero():  # under torchrun only the first process writes
        protect = [cfg.model] if Path(str(cfg.model)).is_dir() else []
        with atomic_dir(out, overwrite=cfg.overwrite, protect=protect) as tmp:
            trainer.save_model(str(tmp))
            (tmp / "training_args.bin").unlink(missing_ok=True)
        if not keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    summary: dict[str, Any] = {
        "output": str(out),
        "model": cfg.model,
        "train_rows": _rows(train_data),
        "steps": int(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0),
        "train_loss": float(result.training_loss),
        "resumed_from_step": _resumed_from(trainer),
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 2),
        "total_time_s": round(time.perf_counter() - t0, 2),
        "losses": {k: type(v).__name__ for k, v in losses.items()},
        "metrics_before": before,
        "metrics_after": after,
        "adapter": bool(getattr(model, "has_adapters", False)),
        "size_bytes": dir_size(out),
    }
    if getattr(model, "has_adapters", False) and (out / "adapter_model.safetensors").exists():
        summary["adapter_size_bytes"] = (out / "adapter_model.safetensors").stat().st_size
    return summary


def _resumed_from(trainer: Any) -> int | None:
    for entry in reversed(trainer.state.log_history):
        if "train_loss" in entry:
            return entry.get("resumed_from_step")
    return None


def _resume_arg(resume: bool | str, ckpt_dir: Path) -> Any:
    """``resume_from_checkpoint`` for the trainer. Without ``resume``, checkpoints of an earlier run in
    ``ckpt_dir`` are an error (training from step 0 would rotate them away): say how to resume."""

    def step(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = sorted(ckpt_dir.glob("checkpoint-*"), key=step)
    if not resume:
        if found:
            raise StedgeError(
                f"{ckpt_dir} holds checkpoints of an earlier run (last: {found[-1].name}): pass --resume to continue "
                f"from it, or move or delete {ckpt_dir} yourself to start over"
            )
        return None
    if isinstance(resume, str):
        return resume
    if not found:
        raise StedgeError(f"--resume: no checkpoint in {ckpt_dir} to resume from")
    return True


def _stem(source: Any) -> str:
    """'dev' for stsb/dev.tsv.gz, 'scifact' for a BEIR folder."""
    return Path(str(source)).name.split(".")[0] or "eval"


def _rows(ds: Any) -> int | dict[str, int]:
    return {k: len(v) for k, v in ds.items()} if hasattr(ds, "keys") else len(ds)


def _describe(ds: Any) -> str:
    from .data import describe

    return describe(ds)
