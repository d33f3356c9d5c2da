"""CrossEncoder fine-tuning on transformers.Trainer: binary cross-entropy on (query, document, label) rows.

trainer = CrossEncoderTrainer(ce, args, train_dataset={"query": [...], "document": [...], "label": [1, 0, ...]},
                              evaluator=RerankingEvaluator(samples))
trainer.train(); trainer.save_model("models/my-reranker")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import StedgeError
from .arguments import SentenceEncoderTrainingArguments
from .collator import CrossEncoderDataCollator
from .data import prepare_dataset
from .trainer import SentenceEncoderTrainer


@dataclass
class CrossEncoderTrainingArguments(SentenceEncoderTrainingArguments):
    """Same fields as SentenceEncoderTrainingArguments (prompts do not apply to cross-encoders)."""


class BinaryCrossEntropyLoss(nn.Module):
    """BCEWithLogits on the single logit of each (text, text) pair; labels in [0, 1]."""

    min_inputs = 2
    max_inputs = 2
    needs_label = True
    label_bounds = (0.0, 1.0)  # 1 = relevant; prepare_dataset refuses labels outside

    def __init__(self, model: nn.Module, pos_weight: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.pos_weight = pos_weight
        weight = torch.tensor(pos_weight) if pos_weight is not None else None
        self.bce = nn.BCEWithLogitsLoss(pos_weight=weight)

    def forward(self, features: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(features)
        if logits.shape[-1] != 1:
            raise StedgeError(f"BinaryCrossEntropyLoss needs a model with one label, this one has {logits.shape[-1]}")
        return self.bce(logits.view(-1), labels.to(logits.device, torch.float32).view(-1))

    def get_config_dict(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight}


class CrossEncoderTrainer(SentenceEncoderTrainer):
    """Trainer for ``stedge.models.CrossEncoder``: 2 text columns + label; default loss BCEWithLogits."""

    def __init__(
        self,
        model: Any,
        args: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        loss: nn.Module | None = None,
        evaluator: Any = None,
        callbacks: list | None = None,
        columns: Any = None,
        optimizers: tuple = (None, None),
        base_model: str | None = None,
    ) -> None:
        from transformers import Trainer

        if args is None:
            args = CrossEncoderTrainingArguments(output_dir="models/checkpoints")
        self.loss = loss if loss is not None else BinaryCrossEntropyLoss(model)
        if train_dataset is not None:
            train_dataset = prepare_dataset(train_dataset, self.loss, name="train data", columns=columns)
        if eval_dataset is not None:
            eval_dataset = prepare_dataset(eval_dataset, self.loss, name="eval data", columns=columns)
        self.evaluator = evaluator
        self.base_model = base_model or str(getattr(model, "model_path", "") or "") or None
        from .data import describe

        self.data_description = describe(train_dataset) if train_dataset is not None else ""
        if (
            evaluator is not None
            and eval_dataset is None
            and args.load_best_model_at_end
            and args.metric_for_best_model in (None, "loss", "eval_loss")
        ):
            for_model = getattr(evaluator, "primary_metric_for", None)  # stedge's: the key for this model
            args.metric_for_best_model = f"eval_{for_model(model) if for_model else evaluator.primary_metric}"
            args.greater_is_better = True
        placeholder = evaluator is not None and eval_dataset is None
        Trainer.__init__(
            self,
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=[{"placeholder": 1}] if placeholder else eval_dataset,
            data_collator=CrossEncoderDataCollator(model.tokenize),
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if placeholder:
            self.eval_dataset = None
        self._move_losses()
        self.can_return_loss = True

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        labels = inputs.pop("label", None)
        if labels is None:
            raise StedgeError("cross-encoder training needs a label column (label or score)")
        loss = self.loss(inputs, labels)
        return (loss, {}) if return_outputs else loss

    def model_card(self) -> str:
        from .card import _changed_args, _fmt, loss_description

        lines = [
            "---",
            "library_name: sentence-transformers",
            "tags:",
            "- cross-encoder",
            "- reranker",
            "- stedge",
            "---",
            "",
            f"# Cross-encoder fine-tuned from {self.base_model} with stedge",
            "",
            f"- base model: `{self.base_model}`",
            f"- data: {self.data_description}",
            f"- loss: `{loss_description(self.loss)['']}`",
            "",
            "| argument | value |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _changed_args(self.args).items()]
        from .card import final_metrics

        metrics = final_metrics(self.state.log_history)
        if metrics:
            lines += ["", "| metric | value |", "| --- | --- |"] + [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
        return "\n".join(lines) + "\n"

    def _write_model(self, folder: Path) -> None:
        self.model.save(folder, overwrite=True)
        (Path(folder) / "README.md").write_text(self.model_card(), encoding="utf-8")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from ..models import CrossEncoder

        target = model if model is not None else self.model
        loaded = CrossEncoder(resume_from_checkpoint, device="cpu")
        target.load_state_dict(loaded.state_dict())
