"""Rich progress bars used by every long-running stage."""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def make_progress(transient: bool = False):
    """A rich Progress with a bar, counts, rate-friendly columns, on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=transient,
    )


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
