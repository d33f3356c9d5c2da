"""Progress reporting for transformers.Trainer runs (`stedge train`, `stedge distill`): a rich bar on stderr
in place of transformers' tqdm bar, whose carriage-return updates fill a log when stderr is not a terminal."""

from __future__ import annotations

from typing import Any


class RichProgressCallback:
    """A rich progress bar over training steps; eval metrics printed as they come."""

    def __new__(cls, *args: Any, **kwargs: Any):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self, quiet: bool = False) -> None:
                self.quiet = quiet
                self.progress = None
                self.task = None

            def on_train_begin(self, args, state, control, **kw):
                if self.quiet or not state.is_world_process_zero:  # one bar under torchrun
                    return
                from ..progress import make_progress

                self.progress = make_progress()
                self.progress.start()
                self.task = self.progress.add_task("Training", total=state.max_steps, completed=state.global_step)

            def on_step_end(self, args, state, control, **kw):
                if self.progress is not None:
                    self.progress.update(self.task, completed=state.global_step)

            def on_log(self, args, state, control, logs=None, **kw):
                if self.quiet or not logs:
                    return
                evals = {
                    k: v
                    for k, v in logs.items()
                    if k.startswith("eval_")
                    and isinstance(v, (int, float))
                    and "runtime" not in k
                    and "per_second" not in k
                }
                if evals and self.progress is not None:
                    text = ", ".join(f"{k[5:]}={v:.4f}" for k, v in evals.items())
                    self.progress.console.print(f"step {state.global_step}: {text}")
                elif "loss" in logs and self.progress is not None:
                    self.progress.update(self.task, description=f"Training (loss {logs['loss']:.4f})")

            def on_train_end(self, args, state, control, **kw):
                if self.progress is not None:
                    self.progress.stop()
                    self.progress = None

        return _Callback(*args, **kwargs)


def report_progress_with_rich(trainer: Any) -> None:
    """Drop transformers' tqdm bar and stdout printer from ``trainer``: a RichProgressCallback reports instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
