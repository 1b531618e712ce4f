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
    """A generation of ``total`` samples in batches of at most ``batch_size`` started."""

    total: int
    batch_size: int
    steps: int


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
