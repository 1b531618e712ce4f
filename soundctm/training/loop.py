"""What every training loop shares: accelerate set-up, resume lookup, metrics, the NaN stop,
checkpoint folders (pruning, the ``latest`` link) and audio previews."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from soundctm.engine.files import TEMP_NAME, write_error, write_text_atomic
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import InvalidArgumentError, SoundCTMError
from soundctm.events import Callback, TrainLog, emit
from soundctm.training.state import latest_state


class TrainingDiverged(SoundCTMError):
    """The loss became NaN or infinite."""


def make_accelerator(
    *, mixed_precision: str, grad_accum: int, tracker: str | None, out: Path
) -> Any:
    """An ``accelerate.Accelerator`` (CPU when no GPU is present)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its settings process-wide; a second run in the same process (a notebook, the
    # tests) may use another precision. The distributed set-up itself (PartialState) is kept.
    reset = getattr(AcceleratorState, "_reset_state", None)
    if callable(reset):
        reset()
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        cpu=not torch.cuda.is_available(),
        log_with=tracker,
        project_dir=str(out),
    )


def resolve_resume(
    out: Path, resume: Path | bool | None, *, main: bool, fresh_ok: bool = False
) -> Path | None:
    """The state folder to resume from, or None for a fresh run (refusing to overwrite one).

    ``fresh_ok`` (a run with ``init_from``): ``--resume`` with no state in ``out`` yet starts
    the run fresh instead of failing, so one command both starts and continues it."""
    if resume:
        base = out if resume is True else Path(resume)
        state = base if (base / "state.json").is_file() else latest_state(base)
        if state is None and fresh_ok and resume is True:
            return None
        if state is None:
            raise InvalidArgumentError(
                f"nothing to resume in {base}: no state/step-* folder; drop --resume to start a "
                "new run"
            )
        return state
    if main and latest_state(out) is not None:
        raise InvalidArgumentError(
            f"{out} already holds a training run; pass --resume to continue it or choose a new "
            "--out"
        )
    return None


def check_finite(value: float, step: int, last_checkpoint: Path | None) -> None:
    """Stop the run with one clear line if the loss is NaN or infinite."""
    if not math.isfinite(value):
        hint = f"; last good checkpoint: {last_checkpoint}" if last_checkpoint else ""
        raise TrainingDiverged(
            f"the loss became {value} at step {step}{hint}; lower --lr, use gradient clipping "
            "or check the data"
        )


class MetricsWindow:
    """Averages per-step values over a logging window; writes JSONL and emits :class:`TrainLog`."""

    def __init__(
        self,
        out: Path,
        *,
        total_steps: int,
        samples_per_step: int,
        main: bool,
        accelerator: Any = None,
        tracker: bool = False,
    ) -> None:
        self.out, self.total, self.samples_per_step = out, total_steps, samples_per_step
        self.main, self.accelerator, self.tracker = main, accelerator, tracker
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.timers: dict[str, float] = {}
        self.steps = 0
        self.wait = 0.0
        self.started = time.perf_counter()

    def add(self, **values: float) -> None:
        """Add one step's values (``loss`` must be among them)."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.steps += 1

    def time(self, name: str, seconds: float) -> None:
        """Count ``seconds`` spent in ``name``; the log reports ``<name>_share`` of wall time."""
        self.timers[name] = self.timers.get(name, 0.0) + seconds

    def flush(self, step: int, lr: float, callback: Callback | None) -> dict[str, float]:
        """Write the window's averages and start a new window."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        n = max(self.steps, 1)
        record: dict[str, float] = {"step": step, **{k: v / n for k, v in self.sums.items()}}
        record["lr"] = lr
        record["samples_per_s"] = self.steps * self.samples_per_step / elapsed
        record["data_wait"] = min(self.wait / elapsed, 1.0)
        for name, seconds in self.timers.items():
            record[f"{name}_share"] = min(seconds / elapsed, 1.0)
        if self.main:
            append_jsonl(self.out / "metrics.jsonl", record)
            if self.tracker and self.accelerator is not None:
                self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        extra = {
            k: v
            for k, v in record.items()
            if k not in {"step", "loss", "lr", "grad_norm", "samples_per_s", "data_wait"}
        }
        emit(
            callback,
            TrainLog(
                step,
                self.total,
                record.get("loss", float("nan")),
                lr,
                record.get("grad_norm", 0.0),
                record["samples_per_s"],
                record["data_wait"],
                extra or None,
            ),
        )
        self.reset()
        return record


def rewind_jsonl(path: Path, step: int) -> int:
    """Drop the records of ``path`` logged after ``step`` (a resumed run redoes those steps, so
    they would otherwise appear twice) and any line that is not a whole JSON record (the last
    line of a run killed while writing it); returns how many lines were dropped. Rewritten
    atomically whenever anything changes, so the next record starts on a line of its own."""
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    lines = text.splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _record_step(record) <= step:
            kept.append(line)
    new = "".join(line + "\n" for line in kept)
    if new.encode("utf-8") != raw:
        write_text_atomic(path, new)
    return len(lines) - len(kept)


def _record_step(record: dict[str, Any]) -> float:
    value = record.get("step", 0)
    return value if isinstance(value, int | float) else math.inf


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line. A failed write (a full disk) is an
    :class:`~soundctm.errors.OutputPathError`, and the part of the line written is cut off again
    so the log stays whole."""
    size = path.stat().st_size if path.is_file() else 0
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise write_error(path, exc) from exc


def write_previews(
    pipe: Pipeline,
    prompts: Sequence[str],
    folder: Path,
    checkpoint: Path,
    *,
    settings: Sequence[dict[str, Any]],
) -> None:
    """Generate ``prompts`` (seeds 0, 1, ...) once per entry of ``settings`` (keyword arguments of
    :meth:`Pipeline.generate`) and write WAV + sidecar files into ``folder``."""
    from soundctm.engine.audio_io import sidecar_record, slug, write_sample
    from soundctm.engine.checkpoint import card_sha256

    digest = card_sha256(checkpoint)
    for options in settings:
        gen = pipe.generate(list(prompts), seeds=list(range(len(prompts))), **options)
        tag = f"{gen.params[0].solver}{gen.params[0].steps}"
        for i, (audio, params) in enumerate(zip(gen.audio, gen.params, strict=True)):
            record = sidecar_record(
                params, sample_rate=gen.sample_rate, model_path=checkpoint, model_card_sha256=digest
            )
            name = f"{i:02d}-{slug(params.prompt)}-{tag}.wav"
            write_sample(folder / name, audio, gen.sample_rate, record)


def prune(out: Path, keep: int) -> None:
    """Keep only the newest ``keep`` step folders of checkpoints, states and previews."""
    if keep <= 0:
        return
    for sub in ("checkpoints", "state", "previews"):
        folders = sorted((out / sub).glob("step-*"))
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


#: Run-folder entries written through a temporary name: a kill can leave one behind.
_ROOT_TEMPS = ("metrics.jsonl", "config.json", "latent_cache", "trajectory_cache")


def remove_leftovers(out: Path) -> int:
    """Remove what a killed run left half-written in ``out``: the temporary folders and files of
    atomic writes (``.step-N.XXXXXXXX.tmp``, ``.metrics.jsonl.XXXXXXXX.tmp``, ...) in the run
    folder, ``checkpoints/``, ``state/``, ``previews/`` and their step folders. A step folder
    renamed away to be replaced (``.step-N.old-PID``) whose replacement never took its name is
    put back. Returns how many entries were removed or restored; other files are left alone."""
    out = Path(out)
    if not out.is_dir():
        return 0
    found: list[Path] = []
    for entry in out.iterdir():
        match = TEMP_NAME.match(entry.name)
        if match and match["name"] in _ROOT_TEMPS:
            found.append(entry)
    for legacy in (out / "metrics.jsonl.tmp", out / ".latest.tmp"):
        if legacy.is_symlink() or legacy.exists():
            found.append(legacy)
    for sub in ("checkpoints", "state", "previews"):
        folder = out / sub
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = TEMP_NAME.match(entry.name)
            if match and match["name"].startswith("step-"):
                found.append(entry)
            elif entry.name.startswith("step-") and entry.is_dir():
                found += [e for e in entry.iterdir() if TEMP_NAME.match(e.name)]
    for entry in found:
        match = TEMP_NAME.match(entry.name)
        final = entry.with_name(match["name"]) if match else None
        if final is not None and ".old-" in entry.name and not final.exists():
            os.replace(entry, final)  # the complete folder a kill left renamed away
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    return len(found)


def point_latest(out: Path, checkpoint: Path) -> None:
    """Atomically point ``out/latest`` at ``checkpoint`` (a relative symlink)."""
    link = out / "latest"
    tmp = out / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(checkpoint.relative_to(out), target_is_directory=True)
    tmp.replace(link)


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """A run's settings as flat scalars (``a.b.c``), the form experiment trackers accept."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def start_run(
    accelerator: Any,
    dataset: Any,
    spec: Any,
    *,
    name: str,
    start: int,
    parameters: int,
    callback: Callback | None,
) -> tuple[Any, MetricsWindow]:
    """The shared start of a run: the deterministic loader from micro-batch ``start * grad_accum``,
    trackers, ``config.json``, the :class:`TrainStarted` event and the metrics window.

    ``spec`` needs ``out, steps, batch_size, seed, grad_accum, num_workers, tracker, to_json()``.
    """
    from torch.utils.data import DataLoader

    from soundctm.events import TrainStarted
    from soundctm.training.data import StepBatchSampler, collate

    world, rank, accum = accelerator.num_processes, accelerator.process_index, spec.grad_accum
    main = accelerator.is_main_process
    sampler = StepBatchSampler(
        len(dataset),
        spec.batch_size,
        seed=spec.seed,
        world=world,
        rank=rank,
        start=start * accum,
        limit=spec.steps * accum,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=spec.num_workers,
        persistent_workers=spec.num_workers > 0,
    )
    if spec.tracker and main:
        accelerator.init_trackers(name, config=flat_config(spec.to_json()))
    out = Path(spec.out)
    emit(callback, TrainStarted(spec.steps, start, parameters, world, str(out)))
    out.mkdir(parents=True, exist_ok=True)
    if main:
        write_text_atomic(out / "config.json", json.dumps(spec.to_json(), indent=2))
    window = MetricsWindow(
        out,
        total_steps=spec.steps,
        samples_per_step=spec.batch_size * world,
        main=main,
        accelerator=accelerator,
        tracker=bool(spec.tracker),
    )
    return loader, window
