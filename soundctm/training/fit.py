"""The one training loop: :func:`fit` runs a :class:`Run` that a builder (teacher or distill)
put together, calling the run's step function once per micro-batch.

Written once here: the deterministic loader (a function of seed, micro-batch and rank),
gradient accumulation and mixed precision through accelerate, the learning-rate schedule hook,
gradient clipping, the NaN stop, EMA updates, JSONL metrics and trackers, the checkpoint cadence,
the save of a sample-able checkpoint plus a pickle-free resumable state, previews, pruning and the
``latest`` link, and resuming.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from soundctm._version import __version__
from soundctm.config import TrainingConfig
from soundctm.engine.pipeline import Pipeline
from soundctm.engine.specs import ComponentSpec
from soundctm.errors import InvalidArgumentError
from soundctm.events import Callback, CheckpointSaved, Message, emit
from soundctm.training.ema import ema_state, ema_update, load_ema_state
from soundctm.training.loop import (
    check_finite,
    make_accelerator,
    point_latest,
    prune,
    remove_leftovers,
    resolve_resume,
    rewind_jsonl,
    start_run,
    write_previews,
)
from soundctm.training.state import load_state, save_state


@dataclass
class StepOutput:
    """What a step function returns: the loss to backpropagate, the values logged after ``loss``
    (in this order) and seconds spent in named phases (logged as ``<name>_share``)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    timers: dict[str, float] = field(default_factory=dict)


#: ``step(model, batch, micro) -> StepOutput``: one micro-batch's loss. ``model`` is the
#: accelerate-prepared trainable module; ``micro`` numbers the micro-batch (randomness is drawn
#: from generators of (seed, micro, rank), see :mod:`soundctm.training.rng`).
StepFn = Callable[[nn.Module, dict[str, Any], int], StepOutput]


@dataclass
class Run:
    """A training run ready for :func:`fit`.

    ``model`` is the trainable CTM (``model.backbone`` is what ``ema`` averages);
    ``snapshot(ema, step)`` builds the sample-able pipeline of the averaged weights;
    ``after_checkpoint(snapshot, folder, step)`` adds to the checkpoint written at a step and may
    return a held-out loss; ``previews`` are the
    :meth:`Pipeline.generate` options of each preview set; ``lr(step)`` (if given) and
    ``ema_decay(step)`` are the schedules.
    """

    config: TrainingConfig
    name: str
    accelerator: Any
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Any
    step: StepFn
    snapshot: Callable[[nn.Module, int], Pipeline]
    ema_decay: Callable[[int], float]
    previews: list[dict[str, Any]]
    after_checkpoint: Callable[[Pipeline, Path, int], float | None] | None = None
    lr: Callable[[int], float] | None = None
    start: int = 0


def prepare_run(
    config: TrainingConfig, resume: Path | bool | None, callback: Callback | None = None
) -> tuple[Any, Path | None]:
    """The run's accelerator and the state folder to resume from (``None``: a fresh run).

    The main process first removes what a killed run left half-written
    (:func:`~soundctm.training.loop.remove_leftovers`); a fresh run starts a fresh metrics log
    (a run killed before its first state may have logged steps it will now redo)."""
    out = Path(config.out)
    accelerator = make_accelerator(
        mixed_precision=config.mixed_precision,
        grad_accum=config.grad_accum,
        tracker=config.tracker,
        out=out,
    )
    main = accelerator.is_main_process
    if main:
        removed = remove_leftovers(out)
        if removed:
            emit(
                callback,
                Message(f"removed {removed} unfinished file(s) of an interrupted run in {out}"),
            )
    accelerator.wait_for_everyone()  # every process then sees the same state folders
    init_from = getattr(config, "init_from", None)
    state = resolve_resume(out, resume, main=main, fresh_ok=init_from is not None)
    if main and state is None:
        rewind_jsonl(out / "metrics.jsonl", 0)
    if init_from is not None:
        emit(
            callback,
            Message(
                f"resuming {state}: its weights win over --init-from {init_from}"
                if state is not None
                else f"starting from the weights of {init_from}"
            ),
        )
    return accelerator, state


def check_resumable(old: dict[str, Any], config: TrainingConfig) -> None:
    """Refuse to resume when a setting in ``config.resume_keys`` differs from the saved run's."""
    now = config.to_json()
    for key in config.resume_keys:
        new = now[key]
        if key in old and isinstance(old[key], str) and isinstance(new, dict):
            new = str(ComponentSpec(**new))  # older states stored str(spec)
        if key in old and old[key] != new:
            raise InvalidArgumentError(
                f"cannot resume: {key} was {old[key]} in the saved run but is {new} now; "
                "use the run's original settings or start a new --out"
            )


def resume(
    state: Path,
    config: TrainingConfig,
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    main: bool,
    callback: Callback | None,
) -> int:
    """Load the state folder ``state`` into ``model``, ``ema`` and ``optimizer``; returns its step.
    The metrics log is rewound to that step."""
    meta, model_state, ema_saved, optim_state = load_state(state)
    check_resumable(meta.get("spec", {}), config)
    model.load_state_dict(model_state)
    load_ema_state(ema, model, ema_saved)
    optimizer.load_state_dict(optim_state)
    start = int(meta["step"])
    emit(callback, Message(f"resuming from {state} at step {start}"))
    if main:
        rewind_jsonl(Path(config.out) / "metrics.jsonl", start)
    return start


def fit(run: Run, callback: Callback | None = None) -> Path:
    """Train ``run`` to ``run.config.steps``; returns the folder of the last checkpoint."""
    cfg, accelerator = run.config, run.accelerator
    out, main, accum = Path(cfg.out), accelerator.is_main_process, cfg.grad_accum
    model, optimizer = accelerator.prepare(run.model, run.optimizer)
    loader, window = start_run(
        accelerator,
        run.dataset,
        cfg,
        name=run.name,
        start=run.start,
        parameters=sum(p.numel() for p in run.model.backbone.parameters()),
        callback=callback,
    )
    last_ckpt: Path | None = None
    grad_norm = torch.tensor(0.0)
    t_fetch = time.perf_counter()
    for micro, batch in enumerate(loader, start=run.start * accum):
        window.wait += time.perf_counter() - t_fetch
        step = micro // accum
        if run.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = run.lr(step)
        with accelerator.accumulate(model):
            result = run.step(model, batch, micro)
            accelerator.backward(result.loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        loss_value = float(accelerator.gather(result.loss.detach()[None]).mean())
        check_finite(loss_value, step + 1, last_ckpt)
        window.add(loss=loss_value, **result.metrics, grad_norm=float(grad_norm))
        for name, seconds in result.timers.items():
            window.time(name, seconds)
        if not accelerator.sync_gradients:
            t_fetch = time.perf_counter()
            continue
        raw = accelerator.unwrap_model(model)
        ema_update(run.ema, raw.backbone, run.ema_decay(step))
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            window.flush(done, optimizer.param_groups[0]["lr"], callback)
        if done % cfg.save_every == 0 or done == cfg.steps:
            accelerator.wait_for_everyone()
            if main:
                last_ckpt = save_step(run, raw.backbone, optimizer, done, callback)
            accelerator.wait_for_everyone()
        t_fetch = time.perf_counter()

    if cfg.tracker and main:
        accelerator.end_training()
    return last_ckpt or out / "checkpoints" / f"step-{cfg.steps:07d}"


def save_step(
    run: Run,
    backbone: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    callback: Callback | None,
) -> Path:
    """Write checkpoint ``step`` (the EMA weights, sample-able), the resumable state (raw
    weights, EMA, optimizer), previews; prune old folders, point ``latest``; emit the event."""
    cfg = run.config
    out, tag = Path(cfg.out), f"step-{step:07d}"
    snapshot = run.snapshot(run.ema, step)
    ckpt = snapshot.save(out / "checkpoints" / tag)
    heldout = run.after_checkpoint(snapshot, ckpt, step) if run.after_checkpoint else None
    save_state(
        out / "state" / tag,
        step=step,
        model=backbone.state_dict(),
        ema=ema_state(run.ema, backbone),
        optimizer=optimizer.state_dict(),
        extra={"spec": cfg.to_json(), "soundctm_version": __version__},
    )
    if cfg.preview_prompts:
        write_previews(
            snapshot, cfg.preview_prompts, out / "previews" / tag, ckpt, settings=run.previews
        )
    prune(out, cfg.keep_checkpoints)
    point_latest(out, ckpt)
    emit(callback, CheckpointSaved(step, str(ckpt), heldout))
    return ckpt
