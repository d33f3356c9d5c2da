"""Knowledge distillation: a smaller student learns to reproduce the teacher's embeddings (MSE).

The student is the teacher with some transformer layers removed (``layers`` / ``num_layers``), or
another model (``student``) with a projection Dense when its width differs from the teacher's.
Teacher embeddings are computed once and cached as ``.npy`` under a key made of the teacher's
weights and the sentences, so re-running (other layers, more epochs) skips the teacher.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import StedgeError
from ..models import Dense, Normalize, SentenceEncoder
from .layers import check_layers, count_layers, keep_layers, spread_layers


def default_cache_dir() -> Path:
    """$STEDGE_CACHE/teacher-embeddings, else ~/.cache/stedge/teacher-embeddings."""
    root = os.environ.get("STEDGE_CACHE") or Path.home() / ".cache" / "stedge"
    return Path(root) / "teacher-embeddings"


def model_fingerprint(encoder: SentenceEncoder) -> str:
    """sha256 over everything that decides an encoder's embeddings: modules, settings and weights."""
    h = hashlib.sha256()
    h.update(repr([type(m).__name__ for m in encoder]).encode())
    h.update(
        f"{encoder.max_seq_length}|{encoder.transformer.do_lower_case}|{sorted(encoder.prompts.items())}|"
        f"{encoder.default_prompt_name}|{encoder.truncate_dim}".encode()
    )
    for m in encoder:
        if hasattr(m, "get_config_dict"):
            h.update(repr(sorted(m.get_config_dict().items())).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(sentences: Sequence[str]) -> str:
    """sha256 of the sentences, in order."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def teacher_embeddings(
    teacher: SentenceEncoder,
    sentences: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    show_progress_bar: bool | None = None,
) -> tuple[np.ndarray, Path, bool]:
    """The teacher's embeddings of ``sentences``, from the cache when present.

    Returns (embeddings float32 ``[n, dim]``, cache file, whether it came from the cache).
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256((model_fingerprint(teacher) + data_fingerprint(sentences)).encode()).hexdigest()[:24]
    path = cache / f"teacher-{key}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape[0] == len(sentences):
            return emb, path, True
    emb = np.asarray(
        teacher.encode(list(sentences), batch_size=batch_size, show_progress_bar=show_progress_bar), dtype=np.float32
    )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, emb)
    os.replace(tmp, path)
    return emb, path, False


def _insert_before_normalize(encoder: SentenceEncoder, module: nn.Module) -> SentenceEncoder:
    mods = list(encoder)
    idx = next((i for i, m in enumerate(mods) if isinstance(m, Normalize)), len(mods))
    out = SentenceEncoder(
        modules=mods[:idx] + [module.to(encoder.device)] + mods[idx:],
        device=str(encoder.device),
        prompts=encoder.prompts,
        default_prompt_name=encoder.default_prompt_name,
        similarity_fn_name=encoder.similarity_fn_name,
    )
    out.model_path, out.model_ref = encoder.model_path, encoder.model_ref
    return out


def make_student(
    teacher_ref: str,
    teacher_dim: int,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    student: str | None = None,
    device: str | None = None,
) -> tuple[SentenceEncoder, dict]:
    """Build the student: the teacher (or ``student``) with the chosen layers kept, projected to the teacher's width.

    Returns (student, info with ``layers_kept``, ``layers_total``, ``projection``).
    """
    if layers is not None and num_layers is not None:
        raise StedgeError("give either --layers or --num-layers, not both")
    if student is None and layers is None and num_layers is None:
        raise StedgeError("say how to shrink the teacher: --layers 0,2,5 or --num-layers N (or --student MODEL)")
    model = SentenceEncoder(student or teacher_ref, device=device)
    info: dict = {"student_base": student or teacher_ref, "projection": None}
    total = count_layers(model.transformer.auto_model)
    info["layers_total"] = total
    if layers is not None or num_layers is not None:
        if total is None:
            raise StedgeError(f"cannot find the transformer layers of '{student or teacher_ref}' to reduce them")
        chosen = check_layers(list(layers), total) if layers is not None else spread_layers(total, num_layers)
        info["layers_kept"] = keep_layers(model.transformer.auto_model, chosen)
    else:
        info["layers_kept"] = list(range(total)) if total else None
    dim = model.get_sentence_embedding_dimension()
    if dim != teacher_dim:
        model = _insert_before_normalize(model, Dense(dim, teacher_dim, bias=True, activation_function=nn.Identity()))
        info["projection"] = [dim, teacher_dim]
    return model, info


def split_dev(sentences: Sequence[str], seed: int, max_dev: int = 1000) -> tuple[list[int], list[int]]:
    """Shuffled (train indices, held-out dev indices): 5% of the sentences, at most ``max_dev``, none under 20."""
    idx = list(range(len(sentences)))
    random.Random(seed).shuffle(idx)
    n_dev = min(max_dev, len(idx) // 20)
    return idx[n_dev:], idx[:n_dev]


def run_distill(
    teacher: str,
    output: str,
    data: Sequence[str],
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    student: str | None = None,
    eval_path: str | None = None,
    epochs: float = 1,
    batch_size: int = 64,
    lr: float = 1e-4,
    max_sentences: int | None = None,
    cache_dir: str | None = None,
    device: str | None = None,
    seed: int = 42,
    overwrite: bool = False,
    warmup_ratio: float = 0.1,
    show_progress_bar: bool | None = None,
) -> dict:
    """`stedge distill`: build the student, train it with MSE on the teacher's embeddings, save it, return the
    report."""
    from ..data import read_sts
    from ..errors import require
    from . import report as rp

    datasets = require("datasets", "train", "distillation")

    _check_args(epochs, output, overwrite)
    sentences = rp.load_sentences(data, limit=max_sentences)
    pairs = read_sts(eval_path) if eval_path else None
    teacher_model = SentenceEncoder(teacher, device=device)
    teacher_dim = teacher_model.get_sentence_embedding_dimension()
    student_model, info = make_student(
        teacher, teacher_dim, layers=layers, num_layers=num_layers, student=student, device=device
    )
    if len(sentences) < 2:
        raise StedgeError(f"--data: distillation needs at least 2 sentences, found {len(sentences)}")

    started = time.perf_counter()
    targets, cache_file, cached = teacher_embeddings(
        teacher_model, sentences, cache_dir, batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    teacher_seconds = time.perf_counter() - started
    train_idx, dev_idx = split_dev(sentences, seed)
    dev_sentences = (
        [sentences[i] for i in dev_idx] or rp.eval_sentences(pairs, 500) or [sentences[i] for i in train_idx[:200]]
    )
    dev_targets = targets[dev_idx] if dev_idx else teacher_model.encode(dev_sentences, batch_size=batch_size)

    before = rp.model_summary(teacher_model)
    before["model"] = str(teacher)
    if pairs is not None:
        before["spearman"] = rp.sts_spearman(teacher_model, pairs, batch_size)
    mse_before = rp.embedding_mse(student_model.encode(dev_sentences, batch_size=batch_size), dev_targets)

    evaluator = _evaluator(dev_sentences, dev_targets, pairs, batch_size)

    train = datasets.Dataset.from_dict(
        {"sentence": [sentences[i] for i in train_idx], "label": targets[train_idx].tolist()}
    )
    torch.manual_seed(seed)
    history, train_seconds, trainer = _fit(
        student_model,
        train,
        evaluator,
        teacher,
        dict(
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            warmup_ratio=warmup_ratio,
            seed=seed,
        ),
        quiet=show_progress_bar is False,
    )
    student_model.eval()
    final_metrics = history[-1] if history else trainer.run_evaluator()

    hp = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    run = {
        "teacher": str(teacher),
        "student": student,
        "data": [str(d) for d in data],
        "eval": eval_path,
        "train_sentences": len(train_idx),
        "sentences": len(sentences),
        "teacher_seconds": teacher_seconds,
        "cached": cached,
        "cache_file": str(cache_file),
        "train_seconds": train_seconds,
    }
    report, step = _report(
        student_model, dev_sentences, dev_targets, before, mse_before, pairs, final_metrics, history, info, run, hp
    )
    rp.save_with_report(student_model, output, report, step, parent=teacher_model.model_path, overwrite=overwrite)
    return report


def _evaluator(dev_sentences: list[str], dev_targets, pairs, batch_size: int):
    """MSE to the teacher on the dev sentences, plus STS Spearman when eval pairs are given."""
    from ..evaluation import EmbeddingSimilarityEvaluator, MSEEvaluator, SequentialEvaluator

    evaluators = [MSEEvaluator(dev_sentences, dev_targets, name="distill-dev", batch_size=batch_size)]
    if pairs is not None:
        sts = EmbeddingSimilarityEvaluator(
            pairs.sentences1,
            pairs.sentences2,
            pairs.scores,
            name="sts-eval",
            batch_size=batch_size,
            similarity_fn_names=("cosine",),
        )
        evaluators.append(sts)
    return SequentialEvaluator(evaluators)


def _report(
    student_model,
    dev_sentences,
    dev_targets,
    before: dict,
    mse_before: float,
    pairs,
    final_metrics: dict,
    history: list,
    info: dict,
    run: dict,
    hp: dict,
) -> tuple[dict, dict]:
    """The distill report (before/after/comparison/settings/timing) and its lineage step."""
    from .report import embedding_mse, make_step, model_summary

    after = model_summary(student_model)
    student_dev = student_model.encode(dev_sentences, batch_size=hp["batch_size"])
    comparison: dict = {
        "student_teacher_mse": embedding_mse(student_dev, dev_targets),
        "student_teacher_mse_before_training": mse_before,
        "parameters_ratio": after["parameters"] / before["parameters"],
    }
    if pairs is not None:
        after["spearman"] = 100.0 * final_metrics["eval_sts-eval_spearman_cosine"]
        comparison["spearman_change"] = after["spearman"] - before["spearman"]
    layers = {k: info[k] for k in ("layers_kept", "layers_total", "projection")}
    settings = {
        "teacher": run["teacher"],
        "student": run["student"],
        **layers,
        "data": run["data"],
        "train_sentences": run["train_sentences"],
        "dev_sentences": len(dev_sentences),
        "eval": run["eval"],
        **hp,
    }
    timing = {
        "teacher_embeddings_seconds": run["teacher_seconds"],
        "teacher_embeddings_cached": run["cached"],
        "teacher_cache_file": run["cache_file"],
        "train_seconds": run["train_seconds"],
    }
    report = {
        "command": "distill",
        "before": before,
        "after": after,
        "comparison": comparison,
        "settings": settings,
        "timing": timing,
        "evaluator": final_metrics,
        "history": history,
    }
    step = make_step(
        "distill",
        run["teacher"],
        student=run["student"],
        **layers,
        data=run["data"],
        sentences=run["sentences"],
        epochs=hp["epochs"],
        lr=hp["lr"],
        batch_size=hp["batch_size"],
        loss="MSELoss",
    )
    return report, step


def _check_args(epochs: float, output: str, overwrite: bool) -> None:
    """Fail before any work on arguments that cannot succeed."""
    if epochs <= 0:
        raise StedgeError(f"--epochs must be positive, got {epochs}")
    from ..io import check_output

    check_output(output, overwrite)


def _fit(
    student_model, train, evaluator, teacher: str, settings: dict, quiet: bool = False
) -> tuple[list[dict], float, object]:
    """Train the student on (sentence, teacher vector) rows with MSE: (eval history, seconds, trainer); progress
    on a rich bar (none when ``quiet``), as `stedge train`."""
    import contextlib
    import sys
    import tempfile

    from ..training import SentenceEncoderTrainer, SentenceEncoderTrainingArguments
    from ..training.callbacks import RichProgressCallback, report_progress_with_rich
    from ..training.losses import MSELoss

    with tempfile.TemporaryDirectory(prefix="stedge-distill-") as work:
        args = SentenceEncoderTrainingArguments(
            output_dir=work,
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=50,
            use_cpu=(student_model.device.type == "cpu"),
            **settings,
        )
        trainer = SentenceEncoderTrainer(
            model=student_model,
            args=args,
            train_dataset=train,
            loss=MSELoss(student_model),
            evaluator=evaluator,
            base_model=teacher,
            callbacks=[RichProgressCallback(quiet=quiet)],
        )
        report_progress_with_rich(trainer)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # transformers prints its logs; keep stdout for --json
            trainer.train()
        seconds = time.perf_counter() - started
        history = [
            {k: v for k, v in entry.items() if k.startswith("eval_") or k in ("epoch", "step")}
            for entry in trainer.state.log_history
            if any(k.startswith("eval_") for k in entry)
        ]
    return history, seconds, trainer
