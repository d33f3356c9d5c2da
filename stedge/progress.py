"""Rich progress bars used by every long-running stage."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def make_progress(transient: bool = False, unit: str | None = None):
    """A rich Progress with a bar, counts, elapsed time and ETA, on stderr; with ``unit`` also the
    rate (``1234 rows/s``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    rate = [_rate_column(unit)] if unit else []
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *rate,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )


def _rate_column(unit: str):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"? {unit}/s", style="progress.data.speed")

    return RateColumn()


def progress_iter(
    items: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True
) -> Iterator[T]:
    """Iterate with a progress bar when enabled, plainly otherwise."""
    if not enabled:
        yield from items
        return
    with make_progress(transient=True) as p:
        task = p.add_task(description, total=total)
        for x in items:
            yield x
            p.advance(task)


# Environment switches read by huggingface_hub (and through it transformers) and datasets at import time.
_PROGRESS_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def _library_switches() -> dict[str, tuple[Callable[[], bool], Callable[[], None], Callable[[], None]]]:
    """name -> (is_enabled, enable, disable) for each already-imported library that draws tqdm bars."""
    out = {}
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub

        out["huggingface_hub"] = (
            lambda: not hub.are_progress_bars_disabled(),
            hub.enable_progress_bars,
            hub.disable_progress_bars,
        )
    if "transformers" in sys.modules:
        from transformers.utils import logging as tl

        out["transformers"] = (tl.is_progress_bar_enabled, tl.enable_progress_bar, tl.disable_progress_bar)
    if "datasets" in sys.modules:
        import datasets

        out["datasets"] = (
            datasets.is_progress_bar_enabled,
            datasets.enable_progress_bars,
            datasets.disable_progress_bars,
        )
    return out


@contextlib.contextmanager
def library_progress_off() -> Iterator[None]:
    """Turn off the tqdm bars of huggingface_hub, transformers and datasets while the block runs.

    ``--json`` commands use it so that nothing but the JSON document reaches a script, whatever those
    libraries print (transformers 5 draws a bar for every weight load and save). Libraries imported
    inside the block read the environment; already-imported ones are switched off and back on after.
    """
    saved_env = {k: os.environ.get(k) for k in _PROGRESS_ENV}
    os.environ.update({k: "1" for k in _PROGRESS_ENV})
    before = _library_switches()
    restore = []
    for enabled, enable, disable in before.values():
        if enabled():
            disable()
            restore.append(enable)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        # libraries first imported inside the block read the switched environment: turn them back on
        if not saved_env[_PROGRESS_ENV[0]]:
            restore += [sw[1] for name, sw in _library_switches().items() if name not in before]
        with warnings.catch_warnings():  # huggingface_hub warns when its import-time switch still says "off"
            warnings.simplefilter("ignore")
            for enable in restore:
                enable()
