"""Progress rendering: the only place that turns library events into rich output."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from soundctm.events import BatchFinished, Event, GenerationStarted, SolverStep


class GenerationProgress:
    """A progress bar over samples with a sub-bar over solver steps.

    Shown only on a terminal, and only when there is more than one sample or more than one step.
    """

    def __init__(self, console: Console, *, total: int, steps: int) -> None:
        self.enabled = console.is_terminal and (total > 1 or steps > 1)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not self.enabled,
        )
        self.samples = self.progress.add_task("samples", total=total)
        self.steps = self.progress.add_task("steps", total=steps, visible=steps > 1)

    def __enter__(self) -> GenerationProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def __call__(self, event: Event) -> None:
        if isinstance(event, GenerationStarted):
            self.progress.update(self.samples, total=event.total)
        elif isinstance(event, SolverStep):
            self.progress.update(self.steps, completed=event.step, total=event.steps)
        elif isinstance(event, BatchFinished):
            self.progress.update(self.samples, completed=event.done)
            self.progress.reset(self.steps)

    def log(self, message: str) -> None:
        """Print a line above the bars (or plainly when they are hidden)."""
        self.progress.console.print(message, highlight=False, soft_wrap=True)
