"""SentenceEncoderTrainer: transformers.Trainer for SentenceEncoder with losses, evaluators and ST-layout checkpoints.

Everything transformers offers (callbacks, checkpoints, resume_from_checkpoint, load_best_model_at_end,
fp16/bf16, gradient accumulation/checkpointing, torchrun/accelerate) works as usual. What is added:

* the data is checked against the loss (columns, labels) and tokenized per column by the collator,
  with prompts; a dict of datasets trains multi-dataset (each batch from one dataset) with a dict of losses;
* batch samplers (``batch``, ``no_duplicates``; ``round_robin`` / ``proportional`` across datasets);
* an evaluator runs at every evaluation (``eval_strategy``), its metrics logged as ``eval_<metric>``;
* checkpoints and the final model are written in the sentence-transformers layout (only the adapter
  when the model holds one) with a generated README.md model card.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..errors import StedgeError
from .arguments import SentenceEncoderTrainingArguments, prompt_for
from .collator import SentenceEncoderDataCollator, split_features
from .data import DATASET_NAME_COLUMN, describe, prepare_dataset, split_columns
from .samplers import DefaultBatchSampler, NoDuplicatesBatchSampler, ProportionalBatchSampler, RoundRobinBatchSampler

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"


def _no_tag(obj: Any) -> None:
    return None


def _restore_indexed_cpu(storage: Any, location: str) -> Any:
    """torch.load for a "cpu:N" location: under torchrun on the CPU accelerate makes the device "cpu:0",
    transformers loads optimizer checkpoints with map_location=that device, and torch knows only "cpu"."""
    if isinstance(location, str) and location.startswith("cpu:"):
        return storage
    return None


torch.serialization.register_package(11, _no_tag, _restore_indexed_cpu)  # after "cpu" (10), before cuda (20)


def resolve_loss(loss: Any, model: nn.Module) -> nn.Module | dict[str, nn.Module]:
    """A loss module, a loss name (looked up in stedge.training.losses), or a dict of either per dataset."""
    if isinstance(loss, Mapping):
        return {str(k): resolve_loss(v, model) for k, v in loss.items()}  # type: ignore[misc]
    if isinstance(loss, str):
        from .losses import build_loss

        return build_loss(loss, model)
    if isinstance(loss, nn.Module):
        return loss
    if loss is None:
        raise StedgeError("a loss is needed: pass loss=<loss module, loss name, or dict of them per dataset>")
    raise StedgeError(f"loss must be a torch module, a loss name or a dict of them, got {type(loss).__name__}")


def store_prompts(model: Any, prompts: Any, dataset_columns: dict[str, list[str]]) -> None:
    """Record the training prompts in the model so ``encode(prompt_name=...)`` reproduces them.

    One string -> prompt named ``default`` (made the default prompt); ``{column: p}`` -> named by column;
    ``{dataset: p}`` -> named by dataset; ``{dataset: {column: p}}`` -> named by column (or
    ``dataset_column`` when two datasets give one column different prompts).
    """
    if not prompts:
        return
    if isinstance(prompts, str):
        model.prompts["default"] = prompts
        model.default_prompt_name = "default"
        return
    for key, value in prompts.items():
        if isinstance(value, str):
            model.prompts[key] = value
    for ds, cols in dataset_columns.items():
        for col in cols:
            p = prompt_for(prompts, ds or None, col)
            if ds and isinstance(prompts.get(ds), dict) and p is not None:
                name = col if model.prompts.get(col, p) == p else f"{ds}_{col}"
                model.prompts[name] = p


class _StartStep(TrainerCallback):
    """Remembers the global step training starts from (non-zero after resuming from a checkpoint)."""

    step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = int(state.global_step)


@contextlib.contextmanager
def _through_wrapper(loss_fn: nn.Module, base: nn.Module, wrapped: nn.Module) -> Iterator[None]:
    """Under DDP (torchrun) the losses must call the wrapped model, or gradients are not synchronized:
    point every loss that holds ``base`` at ``wrapped`` for one step."""
    if wrapped is base or not isinstance(wrapped, nn.parallel.DistributedDataParallel):
        yield
        return
    holders = [m for m in loss_fn.modules() if m is not base and getattr(m, "model", None) is base]
    for m in holders:
        m.model = wrapped
    try:
        yield
    finally:
        for m in holders:
            m.model = base


class SentenceEncoderTrainer(Trainer):
    """Trainer for ``stedge.models.SentenceEncoder``; see the module docstring."""

    def __init__(
        self,
        model: Any,
        args: TrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        loss: Any = None,
        evaluator: Any = None,
        callbacks: list | None = None,
        columns: Any = None,
        data_collator: Any = None,
        optimizers: tuple = (None, None),
        base_model: str | None = None,
        data_description: str | None = None,
    ) -> None:
        if args is None:
            args = SentenceEncoderTrainingArguments(output_dir="models/checkpoints")
        elif not isinstance(args, SentenceEncoderTrainingArguments):
            fields = {
                k: v
                for k, v in args.to_dict().items()
                if k in SentenceEncoderTrainingArguments.__dataclass_fields__ and not k.startswith("_")
            }
            args = SentenceEncoderTrainingArguments(**fields)
        self.loss = resolve_loss(loss, model)
        if train_dataset is not None:
            train_dataset = prepare_dataset(train_dataset, self.loss, name="train data", columns=columns)
        if eval_dataset is not None:
            eval_dataset = prepare_dataset(eval_dataset, self.loss, name="eval data", columns=columns)
        if isinstance(self.loss, dict) and train_dataset is not None and not hasattr(train_dataset, "keys"):
            raise StedgeError("a dict of losses needs a dict of datasets (one loss per dataset name)")
        train_dataset = self._add_dataset_name(train_dataset)
        eval_dataset = self._add_dataset_name(eval_dataset)
        self.evaluator = evaluator
        self.base_model = base_model or getattr(model, "model_ref", None)
        self.data_description = data_description or (describe(train_dataset) if train_dataset is not None else "")

        if train_dataset is not None:
            store_prompts(model, args.prompts, self._columns_of(train_dataset))
        if data_collator is None:
            pooling = getattr(model, "pooling", None)
            data_collator = SentenceEncoderDataCollator(
                model.tokenize,
                prompts=args.prompts,
                prompt_length_fn=model.prompt_length,
                include_prompt=pooling.include_prompt if pooling is not None else True,
            )
        if evaluator is not None and eval_dataset is None:
            if args.load_best_model_at_end and args.metric_for_best_model in (None, "loss", "eval_loss"):
                args.metric_for_best_model = f"eval_{evaluator.primary_metric}"
                args.greater_is_better = True
        if getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing:
            self._add_checkpointing_hooks(model)
        placeholder = evaluator is not None and eval_dataset is None
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=[{"placeholder": 1}] if placeholder else eval_dataset,
            data_collator=data_collator,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if placeholder:
            self.eval_dataset = None
        self._move_losses()
        self.can_return_loss = True

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _add_checkpointing_hooks(model: Any) -> None:
        """Give a SentenceEncoder the hooks transformers.Trainer calls to turn on activation checkpointing.

        transformers 4.x calls ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)``, 5.16+
        adds ``every_n_layers`` / ``offload``, 5.23+ calls ``activation_checkpointing_enable(...)``. Both
        hooks forward to the underlying transformers model with whatever its version understands.
        """

        def enable(kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False) -> None:
            auto = model.transformer.auto_model
            kwargs = kwargs or {"use_reentrant": False}
            if hasattr(auto, "activation_checkpointing_enable"):
                auto.activation_checkpointing_enable(
                    activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
                )
            else:  # only pass what older versions know about when it is not the default
                extra = {
                    k: v for k, v in (("every_n_layers", every_n_layers), ("offload", offload)) if v not in (1, False)
                }
                auto.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, **extra)
            if getattr(model, "has_adapters", False):
                auto.enable_input_require_grads()

        def activation_checkpointing_enable(
            activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
        ) -> None:
            enable(activation_checkpointing_kwargs, every_n_layers, offload)

        def gradient_checkpointing_enable(
            gradient_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
        ) -> None:
            enable(gradient_checkpointing_kwargs, every_n_layers, offload)

        for name, hook in (
            ("activation_checkpointing_enable", activation_checkpointing_enable),
            ("gradient_checkpointing_enable", gradient_checkpointing_enable),
        ):
            if not hasattr(model, name):
                setattr(model, name, hook)

    @staticmethod
    def _add_dataset_name(dataset: Any) -> Any:
        if dataset is None or not hasattr(dataset, "keys"):
            return dataset
        from datasets import DatasetDict

        return DatasetDict(
            {
                k: (v.remove_columns(DATASET_NAME_COLUMN) if DATASET_NAME_COLUMN in v.column_names else v).add_column(
                    DATASET_NAME_COLUMN, [k] * len(v)
                )
                for k, v in dataset.items()
            }
        )

    @staticmethod
    def _columns_of(dataset: Any) -> dict[str, list[str]]:
        if hasattr(dataset, "keys"):
            return {k: split_columns(v.column_names)[0] for k, v in dataset.items()}
        return {"": split_columns(dataset.column_names)[0]}

    def _losses(self) -> list[nn.Module]:
        return list(self.loss.values()) if isinstance(self.loss, dict) else [self.loss]

    def _move_losses(self) -> None:
        for loss in self._losses():
            loss.to(self.args.device)

    def create_optimizer(self):
        """transformers' optimizer over the model, plus any parameters the losses own (e.g. a Softmax classifier)."""
        opt = super().create_optimizer()
        own = {id(p) for p in self.model.parameters()}
        extra, seen = [], set()
        for loss in self._losses():
            for p in loss.parameters():
                if p.requires_grad and id(p) not in own and id(p) not in seen:
                    seen.add(id(p))
                    extra.append(p)
        if extra:
            opt.add_param_group({"params": extra, "weight_decay": self.args.weight_decay})
        return opt

    def train(self, *args: Any, **kwargs: Any):
        """transformers' train, then the mixed-precision forward wrapper is taken off the model
        (accelerate patches ``forward`` with autocast; encode after training should run in full precision)."""
        start = _StartStep()
        self.add_callback(start)
        try:
            result = super().train(*args, **kwargs)
        finally:
            self.remove_callback(start)
            if self.args.fp16 or self.args.bf16:
                self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        return self._resumed_loss(result, start.step)

    def _resumed_loss(self, result: Any, start_step: int) -> Any:
        """transformers divides the loss summed over the steps of THIS run by the global step count, so a
        resumed run reports a loss too small by (steps before the checkpoint) / (all steps). Report the
        mean over the steps this run trained, in the result, its metrics and the log history (model card)."""
        done = int(self.state.global_step) - int(start_step)
        if start_step <= 0 or done <= 0:
            return result
        # transformers 5 already divides by the steps of this run (it keeps _initial_global_step)
        scale = 1.0 if hasattr(self, "_initial_global_step") else int(self.state.global_step) / done
        loss = float(result.training_loss) * scale
        metrics = dict(result.metrics or {})
        metrics["train_loss"] = loss
        for entry in reversed(self.state.log_history):
            if "train_loss" in entry:
                entry["train_loss"] = loss
                entry["resumed_from_step"] = int(start_step)
                break
        return result._replace(training_loss=loss, metrics=metrics)

    # ------------------------------------------------------------------ data
    def _batch_sampler(self, dataset: Any, batch_size: int, shuffle: bool):
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        drop_last = self.args.dataloader_drop_last
        if shuffle and self.args.batch_sampler == "no_duplicates":
            return NoDuplicatesBatchSampler(dataset, batch_size, drop_last=drop_last, seed=seed)
        return DefaultBatchSampler(len(dataset), batch_size, drop_last=drop_last, shuffle=shuffle, seed=seed)

    def _dataloader(self, dataset: Any, batch_size: int, shuffle: bool) -> DataLoader:
        params: dict[str, Any] = {
            "collate_fn": self.data_collator,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory,
        }
        if hasattr(dataset, "keys"):
            parts = list(dataset.values())
            samplers = [self._batch_sampler(d, batch_size, shuffle) for d in parts]
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            cls = (
                RoundRobinBatchSampler
                if self.args.multi_dataset_batch_sampler == "round_robin"
                else ProportionalBatchSampler
            )
            if not shuffle:
                cls = ProportionalBatchSampler
            sampler = cls(samplers, [len(d) for d in parts], seed=seed)
            dataset = ConcatDataset(parts)
        else:
            sampler = self._batch_sampler(dataset, batch_size, shuffle)
        return DataLoader(dataset, batch_sampler=sampler, **params)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise StedgeError("training needs a train_dataset")
        self.accelerator.even_batches = False
        return self.accelerator.prepare(self._dataloader(self.train_dataset, self._train_batch_size, shuffle=True))

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        if ds is None:
            return DataLoader([])
        self.accelerator.even_batches = True
        return self.accelerator.prepare(self._dataloader(ds, self.args.eval_batch_size, shuffle=False))

    # ------------------------------------------------------------------ loss
    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        """Route the batch to its dataset's loss; features per input column, in column order."""
        dataset_name = inputs.pop(DATASET_NAME_COLUMN, None)
        if isinstance(dataset_name, (list, tuple)):
            dataset_name = dataset_name[0]
        loss_fn = self.loss[dataset_name] if isinstance(self.loss, dict) else self.loss
        columns = [k[: -len("_input_ids")] for k in inputs if k.endswith("_input_ids")]
        features = split_features(inputs, columns)
        with _through_wrapper(loss_fn, self.model, model):
            loss = loss_fn(features, inputs.get("label"))
        if isinstance(loss, dict):
            loss = torch.stack(list(loss.values())).sum()
        return (loss, {}) if return_outputs else loss

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ evaluation
    def run_evaluator(self, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Run the evaluator on the model now; metrics named ``<prefix>_<metric>``."""
        if self.evaluator is None:
            return {}
        was_training = self.model.training
        epoch = self.state.epoch if self.state.epoch is not None else -1
        results = self.evaluator(self.model, output_path=None, epoch=epoch, steps=self.state.global_step)
        self.model.train(was_training)
        return {f"{metric_key_prefix}_{k}": float(v) for k, v in results.items() if isinstance(v, (int, float))}

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Eval loss on the eval dataset (when there is one) plus the evaluator's metrics, logged together."""
        metrics: dict[str, float] = {}
        if eval_dataset is not None or self.eval_dataset is not None:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if isinstance(eval_dataset, str):  # transformers' per-dataset recursion: the evaluator runs once, above it
            return metrics
        ev = self.run_evaluator(metric_key_prefix)
        if ev:
            self.log(dict(ev))
            metrics.update(ev)
            if eval_dataset is None and self.eval_dataset is None:
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ saving / loading
    def model_card(self) -> str:
        from .card import model_card

        return model_card(
            self.model, self.base_model, self.data_description, self.loss, self.args, self.state.log_history
        )

    def _write_model(self, folder: Path) -> None:
        self.model.save(folder, overwrite=True, model_card=self.model_card())

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """Write the model in the sentence-transformers layout (adapter only, when it has one) + README.md.

        Only the writing process writes: transformers 5 calls ``_save`` on every rank (its own returns early on
        the others), and two torchrun processes writing one checkpoint's temporary folder raced each other."""
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".stedge-model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self._write_model(tmp)
        for item in tmp.iterdir():
            dst = out / item.name
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            os.replace(item, dst)
        tmp.rmdir()
        torch.save(self.args, out / TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load weights from an ST-layout checkpoint (full model or adapter) into the model being trained."""
        from ..models import SentenceEncoder

        target = model if model is not None else self.model
        loaded = SentenceEncoder(
            resume_from_checkpoint, device="cpu", trust_remote_code=getattr(target, "trust_remote_code", False)
        )
        missing, unexpected = target.load_state_dict(loaded.state_dict(), strict=False)
        if missing or unexpected:
            raise StedgeError(
                f"checkpoint {resume_from_checkpoint} does not fit the model being trained "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}): resume with the same model and adapter settings"
            )

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint)
