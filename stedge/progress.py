"""Rich progress bars used by every long-running stage."""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def make_progress(transient: bool = False, unit: str | None = None):
    """A rich Progress with a bar, counts, elapsed time and ETA, on stderr; with ``unit`` also the
    rate (``1234 rows/s``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    rate = [_rate_column(unit)] if unit else []
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *rate,
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=transient,
    )


def _rate_column(unit: str):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"? {unit}/s", style="progress.data.speed")

    return RateColumn()


def progress_iter(items: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar when enabled, plainly otherwise."""
    if not enabled:
        yield from items
        return
    with make_progress(transient=True) as p:
        task = p.add_task(description, total=total)
        for x in items:
            yield x
            p.advance(task)
