"""SequentialEvaluator: run several evaluators and merge their metrics."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from ..errors import StedgeError
from .base import Evaluator


class SequentialEvaluator(Evaluator):
    """Runs ``evaluators`` in order and returns all their metrics (each keeps its own prefix).

    The primary metric is the last evaluator's, or, when ``main_score_function`` is given
    (e.g. ``statistics.mean``), that function of every evaluator's primary score, reported as
    ``<name>_sequential_score``.
    """

    def __init__(
        self,
        evaluators: Sequence[Any],
        main_score_function: Callable[[list[float]], float] | None = None,
        name: str = "",
    ) -> None:
        super().__init__(name=name)
        if not evaluators:
            raise StedgeError("SequentialEvaluator needs at least one evaluator")
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function

    @property
    def primary_metric(self) -> str:
        if self.main_score_function is not None:
            return self.prefix("sequential_score")
        return self.evaluators[-1].primary_metric

    def __call__(
        self, model: Any, output_path: str | os.PathLike | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        merged: dict[str, float] = {}
        primaries: list[float] = []
        for ev in self.evaluators:
            metrics = ev(model, output_path=output_path, epoch=epoch, steps=steps)
            merged.update(metrics)
            primaries.append(metrics[ev.primary_metric])
        if self.main_score_function is not None:
            merged[self.prefix("sequential_score")] = float(self.main_score_function(primaries))
        return merged
