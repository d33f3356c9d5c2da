"""TrainingArguments for sentence encoders: transformers' arguments plus batch samplers and prompts.

``prompts`` takes four forms:

* one string: prepended to every input column of every dataset;
* ``{column: prompt}``: per input column;
* ``{dataset: prompt}``: per dataset (multi-dataset training);
* ``{dataset: {column: prompt}}``: per dataset and column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from transformers import TrainingArguments

from ..errors import StedgeError

BATCH_SAMPLERS = ("batch", "no_duplicates")
MULTI_DATASET_BATCH_SAMPLERS = ("round_robin", "proportional")
_ALIASES = {
    "batch_sampler": "batch",
    "default": "batch",
    "no-duplicates": "no_duplicates",
    "round-robin": "round_robin",
}

Prompts = Union[str, dict[str, Union[str, dict[str, str]]], None]


def normalize_choice(value: str, choices: tuple[str, ...], argument: str) -> str:
    """Canonical spelling of a sampler name (dashes or underscores), or an error listing the choices."""
    v = _ALIASES.get(str(value).lower(), str(value).lower().replace("-", "_"))
    if v not in choices:
        raise StedgeError(f"{argument} must be one of {', '.join(choices)}; got {value!r}")
    return v


def check_prompts(prompts: Any, argument: str = "prompts") -> Prompts:
    """Validate the prompts argument (one of the four forms) and return it unchanged."""
    if prompts is None or isinstance(prompts, str):
        return prompts
    if not isinstance(prompts, dict):
        raise StedgeError(f"{argument} must be a string or a mapping, got {type(prompts).__name__}")
    for key, value in prompts.items():
        if isinstance(value, str):
            continue
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            continue
        raise StedgeError(
            f"{argument}['{key}'] must be a prompt string or a mapping column -> prompt string, got {value!r}"
        )
    return prompts


def prompt_for(prompts: Prompts, dataset_name: str | None, column: str) -> str | None:
    """The prompt for one input column of one dataset under any of the four prompt forms."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return prompts
    if dataset_name is not None and dataset_name in prompts:
        value = prompts[dataset_name]
        return value if isinstance(value, str) else value.get(column)
    value = prompts.get(column)
    return value if isinstance(value, str) else None


@dataclass
class SentenceEncoderTrainingArguments(TrainingArguments):
    """transformers.TrainingArguments plus ``batch_sampler``, ``multi_dataset_batch_sampler`` and ``prompts``.

    Defaults differ from transformers in two places: ``remove_unused_columns=False`` (the collator
    needs every text column) and ``report_to="none"`` (no tracker unless asked for).

    ``warmup_ratio`` works on every transformers version: 4.x has it, 5.15+ dropped it in favour of a
    fractional ``warmup_steps``; here it is a field of its own and ``get_warmup_steps`` applies it when
    ``warmup_steps`` is 0, the way transformers 4.x did.
    """

    batch_sampler: str = field(
        default="batch", metadata={"help": "batch or no_duplicates (for in-batch negatives losses)."}
    )
    multi_dataset_batch_sampler: str = field(
        default="proportional", metadata={"help": "round_robin or proportional: order of batches across datasets."}
    )
    prompts: Optional[Any] = field(
        default=None, metadata={"help": "A prompt string, or a mapping (column|dataset) -> prompt."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs every column."}
    )
    report_to: Union[None, str, list[str]] = field(default="none", metadata={"help": "Trackers to report to."})
    warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Linear warmup over this fraction of the training steps (used when warmup_steps is 0)."},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.warmup_ratio) <= 1.0:
            raise StedgeError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        super().__post_init__()
        self.batch_sampler = normalize_choice(self.batch_sampler, BATCH_SAMPLERS, "batch_sampler")
        self.multi_dataset_batch_sampler = normalize_choice(
            self.multi_dataset_batch_sampler, MULTI_DATASET_BATCH_SAMPLERS, "multi_dataset_batch_sampler"
        )
        self.prompts = check_prompts(self.prompts)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps: ``warmup_steps`` when set, else ``ceil(warmup_ratio * num_training_steps)``."""
        if self.warmup_ratio and not self.warmup_steps:
            return math.ceil(num_training_steps * self.warmup_ratio)
        return super().get_warmup_steps(num_training_steps)
