"""One job at a time per model, with a small queue: the studio's worker.

A :class:`JobQueue` owns one worker thread that runs submitted jobs in order. A job is a
function of a :data:`~soundctm.events.Callback`; the queue turns the library's generation
events (:class:`~soundctm.events.GenerationStarted`, :class:`~soundctm.events.SolverStep`,
:class:`~soundctm.events.BatchFinished`) into the job's progress, and its result (the ids of
the takes it wrote) or its one-line error into the job's state. Every change bumps the job's
``version``, so a client can wait for the next change (:meth:`JobQueue.wait`) instead of
polling in a loop.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from soundctm.errors import SoundCTMError
from soundctm.events import BatchFinished, Event, GenerationStarted, Message, SolverStep

Status = Literal["queued", "running", "done", "failed"]
#: What a job runs: given a progress callback, it returns the ids of the takes it wrote.
Work = Callable[[Callable[[Any], None]], list[str]]


class QueueFullError(SoundCTMError):
    """The queue already holds as many waiting jobs as it may."""


@dataclass
class Job:
    """A queued, running or finished job (what the API's ``/api/jobs/{id}`` returns)."""

    id: str
    kind: str
    summary: str
    status: Status = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: float = 0.0
    steps: int | None = None
    takes: list[str] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    version: int = 0
    # progress bookkeeping (not part of the public record)
    _units: int = 0
    _done_units: int = 0

    def record(self, position: int | None = None) -> dict[str, Any]:
        """The public JSON record; ``position`` is the place in the queue (0 = running)."""
        elapsed = None
        if self.started is not None:
            elapsed = (self.finished or time.time()) - self.started
        return {
            "id": self.id,
            "kind": self.kind,
            "summary": self.summary,
            "status": self.status,
            "position": position,
            "progress": round(self.progress, 4),
            "steps": self.steps,
            "takes": list(self.takes),
            "error": self.error,
            "warnings": list(self.warnings),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "elapsed": elapsed,
            "version": self.version,
        }

    def on_event(self, event: Event | Message) -> bool:
        """Advance the progress from a generation event (all solver steps of all batches), or
        keep a warning; whether the public record changed."""
        before = (self.progress, len(self.warnings))
        if isinstance(event, Message):
            if event.level == "warning":
                self.warnings.append(event.text.removeprefix("warning: "))
        elif isinstance(event, GenerationStarted):
            self.steps = event.steps
            self._units += event.steps * event.batches
        elif isinstance(event, SolverStep):
            self._done_units += 1
        elif not isinstance(event, BatchFinished):
            return False
        if self._units:
            self.progress = min(1.0, self._done_units / self._units) * 0.99
        return (self.progress, len(self.warnings)) != before


class JobQueue:
    """Runs jobs one at a time on a worker thread; at most ``max_queued`` wait behind the running
    one (a further submit is a :class:`QueueFullError`). The last ``keep`` finished jobs are
    remembered for clients that ask about them."""

    def __init__(self, max_queued: int = 8, keep: int = 100) -> None:
        self.max_queued = max_queued
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: deque[tuple[Job, Work]] = deque()
        self._running: Job | None = None
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="soundctm-studio-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ clients
    def submit(self, kind: str, summary: str, work: Work) -> Job:
        """Queue ``work``; the job record as it is now."""
        with self._changed:
            if self._closed:
                raise QueueFullError("the studio is shutting down; no new jobs")
            if len(self._waiting) >= self.max_queued:
                raise QueueFullError(
                    f"the queue is full ({self.max_queued} jobs waiting); wait for a job to "
                    "finish and try again"
                )
            job = Job(id=f"{next(self._ids)}-{kind}", kind=kind, summary=summary)
            self._jobs[job.id] = job
            self._waiting.append((job, work))
            self._forget_old()
            self._changed.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._changed:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0 for the running job, 1.. for waiting ones, ``None`` once finished."""
        with self._changed:
            if job is self._running:
                return 0
            for i, (waiting, _) in enumerate(self._waiting, start=1):
                if waiting is job:
                    return i
            return None

    def view(self, job: Job) -> dict[str, Any]:
        """The job's public record with its queue position."""
        with self._changed:
            return job.record(self.position(job))

    def wait(self, job_id: str, timeout: float, after: int | None = None) -> dict[str, Any] | None:
        """The record of job ``job_id`` once it has finished or (given ``after``) its
        ``version`` is above ``after``, or after ``timeout`` seconds, whichever is first
        (``None``: no such job)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                job = self._jobs.get(job_id)
                if job is None:
                    return None
                left = deadline - time.monotonic()
                changed = after is not None and job.version > after
                if changed or job.status in ("done", "failed") or left <= 0:
                    return job.record(self.position(job))
                self._changed.wait(left)

    def snapshot(self) -> dict[str, Any]:
        """The running job, the waiting ones in order and the recently finished ones."""
        with self._changed:
            finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            return {
                "running": self._running.record(0) if self._running else None,
                "queued": [j.record(i) for i, (j, _) in enumerate(self._waiting, start=1)],
                "recent": [j.record(None) for j in reversed(finished[-10:])],
                "max_queued": self.max_queued,
            }

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, drop the waiting ones and let the running one finish."""
        with self._changed:
            self._closed = True
            while self._waiting:
                job, _ = self._waiting.popleft()
                self._finish(job, error="the studio shut down before this job ran")
            self._changed.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in ("done", "failed")]
        for key in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[key]

    def _bump(self, job: Job) -> None:
        job.version += 1
        self._changed.notify_all()

    def _finish(
        self, job: Job, *, takes: list[str] | None = None, error: str | None = None
    ) -> None:
        job.finished = time.time()
        job.status = "failed" if error is not None else "done"
        job.error = error
        job.takes = list(takes or [])
        if error is None:
            job.progress = 1.0
        self._bump(job)

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                job, work = self._waiting.popleft()
                self._running = job
                job.status = "running"
                job.started = time.time()
                self._bump(job)
                for waiting, _ in self._waiting:  # their positions moved
                    self._bump(waiting)

            def progress(event: Event | Message, job: Job = job) -> None:
                with self._changed:
                    if job.on_event(event):
                        self._bump(job)

            takes: list[str] | None = None
            error: str | None = None
            try:
                takes = work(progress)
            except SoundCTMError as exc:
                error = " ".join(str(exc).split())
            except Exception as exc:  # a bug: the job fails, the worker lives on
                error = f"internal error: {type(exc).__name__}: {exc}"
            with self._changed:
                self._running = None
                self._finish(job, takes=takes, error=error)


__all__ = ["Job", "JobQueue", "QueueFullError", "Status", "Work"]
