"""Rich progress bars for local training."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def epoch_progress(console: Console) -> Iterator[Callable[[str, int], Callable[[int, float, float], None]]]:
    """Yields `track(name, max_epochs) -> on_epoch` callbacks that drive one bar per model."""
    with Progress(TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}  val {task.fields[acc]:.2%}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        def track(name: str, max_epochs: int) -> Callable[[int, float, float], None]:
            task = progress.add_task(name, total=max_epochs, loss=float("nan"), acc=0.0)

            def on_epoch(epoch: int, loss: float, acc: float) -> None:
                progress.update(task, completed=epoch, loss=loss, acc=acc)
            return on_epoch
        yield track
