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

from soundctm.events import BatchFinished, Event, GenerationStarted, Message, SolverStep


class GenerationProgress:
    """A progress bar over samples with a sub-bar over solver steps.

    Sized by the :class:`~soundctm.events.GenerationStarted` event (the resolved number of
    samples and steps); shown only on a terminal, and only when there is more than one sample or
    more than one step.
    """

    def __init__(self, console: Console) -> None:
        self.terminal = console.is_terminal
        self.enabled = False
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=True,
        )
        self.samples = self.progress.add_task("samples", total=None)
        self.steps = self.progress.add_task("steps", total=None, visible=False)

    def _start(self, event: GenerationStarted) -> None:
        self.progress.update(self.samples, total=event.total)
        self.progress.update(self.steps, total=event.steps, visible=event.steps > 1)
        if not self.enabled and self.terminal and (event.total > 1 or event.steps > 1):
            self.enabled = True
            self.progress.disable = False
            self.progress.start()

    def __enter__(self) -> GenerationProgress:
        return self  # the bars start with the first GenerationStarted

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def __call__(self, event: Event) -> None:
        if isinstance(event, GenerationStarted):
            self._start(event)
        elif isinstance(event, SolverStep):
            self.progress.update(self.steps, completed=event.step, total=event.steps)
        elif isinstance(event, BatchFinished):
            self.progress.update(self.samples, completed=event.done)
            self.progress.reset(self.steps)
        elif isinstance(event, Message):
            self.log(event.text)

    def log(self, message: str) -> None:
        """Print a line above the bars (or plainly when they are hidden), as plain text."""
        self.progress.console.print(message, highlight=False, soft_wrap=True, markup=False)


class TrainProgress:
    """Progress of a training run: a bar over steps with loss and throughput; lines for
    checkpoints and messages. Plain log lines when stderr is not a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=None, info="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def __call__(self, event: object) -> None:
        from soundctm.events import (
            CheckpointSaved,
            Message,
            ParameterReport,
            TrainLog,
            TrainStarted,
        )

        if isinstance(event, TrainStarted):
            self.progress.update(self.task, total=event.total_steps, completed=event.start_step)
            self._line(
                f"training {event.parameters / 1e6:.2f}M parameters on {event.world_size} "
                f"process(es), steps {event.start_step} -> {event.total_steps}, run {event.run_dir}"
            )
        elif isinstance(event, TrainLog):
            info = (
                f"loss {event.loss:.4f}  {event.samples_per_s:.1f} samples/s  "
                f"data {100 * event.data_wait:.0f}%"
            )
            self.progress.update(self.task, completed=event.step, info=info)
            if not self.live:
                self._line(
                    f"step {event.step}/{event.total_steps}  {info}  "
                    f"lr {event.lr:.2e}  grad {event.grad_norm:.3f}"
                )
        elif isinstance(event, CheckpointSaved):
            extra = f" (held-out loss {event.heldout_loss:.4f})" if event.heldout_loss else ""
            self._line(f"checkpoint {event.path}{extra}")
        elif isinstance(event, Message):
            self._line(event.text)
        elif isinstance(event, ParameterReport):
            parts = ", ".join(
                f"{kind} {_millions(t)}/{_millions(f)}" for kind, t, f in event.components
            )
            self._line(
                f"parameters: {_millions(event.trainable)} trainable, {_millions(event.frozen)} "
                f"frozen (trainable/frozen: {parts})"
            )


def _millions(count: int) -> str:
    """A parameter count in millions (``1.23M``)."""
    return f"{count / 1e6:.2f}M"


class EvalProgress:
    """A bar per stage (generation, embedding); plain lines when stderr is not a terminal."""

    def __init__(self, console: Console) -> None:
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.live,
        )
        self.task = self.progress.add_task("eval", total=None)

    def __enter__(self) -> EvalProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def __call__(self, event: object) -> None:
        from soundctm.events import EvalStage, EvalTick, Message

        if isinstance(event, EvalStage):
            self.progress.reset(self.task, total=event.total, description=event.text)
        elif isinstance(event, EvalTick):
            self.progress.update(self.task, completed=event.done, total=event.total)
        elif isinstance(event, Message) and self.live:
            self.progress.console.print(event.text, highlight=False, markup=False)
