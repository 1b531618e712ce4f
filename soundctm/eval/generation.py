"""Generating the audio a model is evaluated on, and turning it into evaluation sets.

Everything the runner asks of a model goes through here, over the pipeline's public API
(``Pipeline.load``, ``resolve``, ``generate``, ``card``): one place to follow when it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundctm.errors import InvalidArgumentError
from soundctm.eval.evalset import EvalItem, EvalSet
from soundctm.eval.prompts import PromptSet
from soundctm.eval.results import ModelInfo, Sampling, portable_path
from soundctm.events import (
    BatchFinished,
    Callback,
    EvalStage,
    EvalTick,
    GenerationStarted,
    SolverStep,
)

GAMMA_SOLVER = "gamma"
AUDIO_FOLDER = "audio"

if TYPE_CHECKING:
    from soundctm.engine.plan import SamplingPlan


def sampling(plan: SamplingPlan, model: str) -> Sampling:
    """What a report records of how ``model`` (a label) generated under ``plan``."""
    return Sampling(model, plan.steps, plan.gamma, plan.nu, plan.omega, plan.solver)


@dataclass(frozen=True)
class Setting:
    """One generation setting of a model."""

    steps: int
    gamma: float

    @property
    def label(self) -> str:
        return f"steps={self.steps} gamma={self.gamma:g}"


def load_pipeline(path: str | Path, device: str, registry: Any | None) -> Any:
    """The torch pipeline of the checkpoint at ``path``."""
    from soundctm.engine.pipeline import Pipeline

    return Pipeline.load(Path(path), device=device, registry=registry)


def is_student(pipe: Any) -> bool:
    """True for a CTM student (it has the gamma solver, gamma and nu)."""
    return bool(pipe.is_student)


def resolve(pipe: Any, **params: Any) -> SamplingPlan:
    """The model's sampling plan for ``params`` (None: the card's default), validated."""
    return pipe.resolve(**params)


def at(plan: SamplingPlan, setting: Setting) -> SamplingPlan:
    """``plan`` with the step count and gamma of ``setting``."""
    return replace(plan, steps=setting.steps, gamma=setting.gamma)


def model_info(pipe: Any, path: str | Path) -> ModelInfo:
    """What a report says about a model: path, kind, card checksum, sample rate."""
    from soundctm.engine.checkpoint import card_sha256

    return ModelInfo(
        path=portable_path(Path(path)),
        kind=str(pipe.card.kind),
        card_sha256=card_sha256(Path(path)),
        sample_rate=int(pipe.card.sample_rate),
    )


def check_steps(steps: Sequence[int], gammas: Sequence[float]) -> None:
    """One-line errors for step counts below 1 and gammas outside [0, 1]."""
    if not steps:
        raise InvalidArgumentError("steps needs at least one step count, e.g. 1,2,4,16")
    for s in steps:
        if int(s) != s or s < 1:
            raise InvalidArgumentError(f"step counts must be whole numbers >= 1, got {s}")
    for g in gammas:
        if not 0.0 <= g <= 1.0:
            raise InvalidArgumentError(f"gamma must be between 0 and 1, got {g}")


def _relay(callback: Callback | None, label: str) -> Callback | None:
    """Generation events as evaluation stages and ticks (solver steps are dropped)."""
    if callback is None:
        return None

    def relay(event: Any) -> None:
        if isinstance(event, GenerationStarted):
            callback(EvalStage(f"generating {label}", event.total))
        elif isinstance(event, BatchFinished):
            callback(EvalTick(event.done, event.total))
        elif not isinstance(event, SolverStep):
            callback(event)

    return relay


def slug(text: str) -> str:
    """``text`` as a folder name (spaces to underscores, only ``[A-Za-z0-9-_.]``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.replace(" ", "_"))


def generate(
    pipe: Any,
    prompts: PromptSet,
    seeds: list[int],
    plan: SamplingPlan,
    label: str,
    *,
    batch_size: int,
    callback: Callback | None,
    audio_dir: Path | None,
) -> dict[str, np.ndarray]:
    """``{key: clip}`` of every prompt with ``plan``; also written as 16-bit WAV files to
    ``audio_dir/<label>/`` when ``audio_dir`` is given, with a ``manifest.csv`` naming each
    file's prompt, seed and sampling parameters (:func:`write_manifest`)."""
    gen = pipe.generate(
        prompts.captions,
        seeds=seeds,
        **plan.arguments(),
        batch_size=batch_size,
        callback=_relay(callback, label),
    )
    out = {
        k: np.clip(a.numpy().astype(np.float32), -1.0, 1.0)
        for k, a in zip(prompts.keys, gen.audio, strict=True)
    }
    if audio_dir is not None:
        from soundctm.engine.audio_io import write_wav
        from soundctm.engine.files import ensure_writable_dir

        folder = ensure_writable_dir(audio_dir / slug(label))
        for k, a in out.items():
            write_wav(folder / f"{k}.wav", a, gen.sample_rate)
        write_manifest(folder / MANIFEST, [f"{k}.wav" for k in out], gen.params)
    return out


#: The manifest beside the generated audio of one setting.
MANIFEST = "manifest.csv"


def write_manifest(path: Path, names: Sequence[str], params: Sequence[Any]) -> Path:
    """A CSV (atomically written) with one row per generated file: ``file_name``, ``caption``
    (the prompt; the columns of the ``csv`` data set), ``seed`` and the sampling arguments,
    so each file can be made again with ``soundctm sample``."""
    import csv
    import io
    from dataclasses import asdict

    from soundctm.engine.files import write_text_atomic

    rows = [{"file_name": n, **asdict(p)} for n, p in zip(names, params, strict=True)]
    buffer = io.StringIO()
    columns = ["file_name", "caption", *(k for k in rows[0] if k not in ("file_name", "prompt"))]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row["caption"] = row.pop("prompt")
        writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
    write_text_atomic(path, buffer.getvalue())
    return path


def make_evalset(
    prompts: PromptSet,
    audio: dict[str, np.ndarray],
    sample_rate: int,
    label: str,
    references: dict[str, np.ndarray] | None,
) -> EvalSet:
    """The evaluation set of generated ``audio`` with its captions, attributes and
    ``references`` (by key)."""
    items = [
        EvalItem(
            key=k,
            audio=audio[k],
            caption=cap,
            reference=None if references is None else references[k],
            attributes=attrs,
        )
        for k, cap, attrs in zip(prompts.keys, prompts.captions, prompts.attributes, strict=True)
    ]
    return EvalSet(items, sample_rate, label)


__all__ = [
    "AUDIO_FOLDER",
    "GAMMA_SOLVER",
    "MANIFEST",
    "Setting",
    "at",
    "check_steps",
    "generate",
    "is_student",
    "load_pipeline",
    "make_evalset",
    "model_info",
    "resolve",
    "sampling",
    "write_manifest",
]
