"""Timing helpers shared by the benchmarks: ratios with both sides in one run, medians.

On a shared machine wall-clock time mostly measures the other users, so the default clock is the
CPU time of this process (``time.process_time``; run single-threaded for the ratio to mean
something) and, for fresh processes, the CPU time of the finished children (``os.times``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes."""
    t = os.times()
    return t.children_user + t.children_system


CLOCKS: dict[str, Callable[[], float]] = {
    "cpu": time.process_time,
    "children": children_cpu,
    "wall": time.perf_counter,
}


def alternate(
    fns: dict[str, Callable[[], object]], rounds: int = 7, clock: str = "cpu"
) -> dict[str, float]:
    """Median seconds (of ``clock``) of each function, called in turn ``rounds`` times after one
    warm-up (alternating, so every side sees the same load)."""
    now = CLOCKS[clock]
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = now()
            fn()
            times[name].append(now() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def load() -> str:
    """The 1-minute load average (the machine may be shared: say how busy it was)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
