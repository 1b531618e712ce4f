"""Events the library emits while it works.

The library never prints. Long-running functions take an optional ``callback`` and call it with
these small frozen dataclasses; the CLI turns them into progress bars, a notebook could log them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SolverStep:
    """Sampler step ``step`` of ``steps`` (1-based) finished, from ``sigma`` to ``sigma_next``."""

    step: int
    steps: int
    sigma: float
    sigma_next: float


@dataclass(frozen=True)
class GenerationStarted:
    """A generation of ``total`` samples in ``batches`` batches of at most ``batch_size``
    started, each sample with ``steps`` solver steps (the resolved plan's)."""

    total: int
    batch_size: int
    steps: int
    batches: int


@dataclass(frozen=True)
class BatchFinished:
    """``done`` of ``total`` samples are finished."""

    done: int
    total: int


Event = SolverStep | GenerationStarted | BatchFinished
Callback = Callable[[Event], None]


def emit(callback: Callback | None, event: Event) -> None:
    """Send ``event`` to ``callback`` if there is one."""
    if callback is not None:
        callback(event)


@dataclass(frozen=True)
class Message:
    """A line of information for the user (data summaries, skipped files, notices)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class TrainStarted:
    """A training run starts (or resumes) at ``start_step`` of ``total_steps``."""

    total_steps: int
    start_step: int
    parameters: int
    world_size: int
    run_dir: str


@dataclass(frozen=True)
class TrainLog:
    """Metrics of the last ``log_every`` optimizer steps."""

    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    samples_per_s: float
    data_wait: float
    extra: dict[str, float] | None = None


@dataclass(frozen=True)
class CheckpointSaved:
    """A sample-able checkpoint (and its resumable state) was written."""

    step: int
    path: str
    heldout_loss: float | None = None


# ---------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalStage:
    """A stage of an evaluation run started (``total`` units of work, or None if unknown)."""

    text: str
    total: int | None = None


@dataclass(frozen=True)
class EvalTick:
    """``done`` of ``total`` units of the current evaluation stage are finished."""

    done: int
    total: int


@dataclass(frozen=True)
class ParameterReport:
    """A training run's parameters: ``trainable`` and ``frozen`` in all, and per component
    ``(kind, trainable, frozen)`` (``--freeze``; text encoders and autoencoders stay frozen)."""

    trainable: int
    frozen: int
    components: tuple[tuple[str, int, int], ...] = ()
