"""Pack a checkpoint for distribution: weights in half precision, paths made relative.

``pack_checkpoint(src, dst)`` reads a checkpoint directory (``model.json`` + safetensors), casts
every floating-point tensor to ``dtype`` (float16 by default; integer buffers stay as they are),
and writes a new checkpoint with fresh SHA-256 hashes. A student's bundled teacher
(``src/teacher``, see ``soundctm distill --keep-teacher``) is packed the same way into
``dst/teacher``. Loading needs nothing special: ``load_state_dict`` casts the half-precision
tensors back into the float32 parameters the card builds, so only the rounding of the weights
changes (measure what that does to the sound before shipping; the default model's card does).

``omega`` (optional) sets the default guidance scale of every packed card (``defaults.omega``:
the CFG scale of a teacher, the guidance input of a student), for shipping the setting that was
measured best. The card records ``provenance.packed = {"dtype", "source"}`` (and ``"omega"``);
a student's ``provenance.teacher`` becomes ``"teacher"`` when the teacher travels with it, and
every other absolute path in the provenance (the folder a run was initialised from, ``init_from
.path``, for one) is cut to its last component (:func:`portable_provenance`), so no path of the
build machine is shipped. What identifies a parent is its card hash, which is kept.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from torch import Tensor

from soundctm.engine.checkpoint import (
    COMPONENT_KINDS,
    ModelCard,
    is_absolute_path,
    read_card,
    read_weights,
    save_checkpoint,
)
from soundctm.engine.files import write_dir_atomic
from soundctm.errors import CheckpointError, InvalidArgumentError

TEACHER_DIR = "teacher"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def cast_floating(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """``state`` with every floating-point tensor cast to ``dtype`` (others unchanged)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def check_castable(state: dict[str, Tensor], dtype: torch.dtype, where: str) -> None:
    """Refuse a cast that would overflow (a weight beyond the target type's range)."""
    limit = torch.finfo(dtype).max
    for key, value in state.items():
        if value.is_floating_point() and value.numel() and float(value.abs().max()) > limit:
            raise CheckpointError(
                f"{where}: tensor {key!r} has values beyond the {dtype} range ({limit:g}); "
                "pack it as float32 or bfloat16"
            )


def portable_provenance(value: Any) -> Any:
    """``value`` (a card's provenance, or part of it) with every string that is an absolute path
    cut to its last component: ``/home/me/runs/teacher`` -> ``teacher``."""
    if isinstance(value, dict):
        return {k: portable_provenance(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_provenance(v) for v in value]
    if isinstance(value, str) and is_absolute_path(value):
        return PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return value


def _pack_one(
    src: Path, dst: Path, dtype: torch.dtype, name: str, teacher: bool, omega: float | None
) -> ModelCard:
    card = read_card(src)
    weights: dict[str, dict[str, Tensor]] = {}
    for kind in COMPONENT_KINDS:
        state = read_weights(src, card, kind, verify=True)
        check_castable(state, dtype, f"{src} ({kind})")
        weights[kind] = cast_floating(state, dtype)
    card = card.model_copy(deep=True)
    card.provenance = portable_provenance(card.provenance)
    card.provenance["packed"] = {"dtype": name, "source": src.resolve().name}
    if omega is not None:
        card.defaults.omega = omega
        card.provenance["packed"]["omega"] = omega
    if teacher:
        card.provenance["teacher"] = TEACHER_DIR
    save_checkpoint(dst, card, weights)
    return card


def pack_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str = "float16",
    with_teacher: bool = True,
    omega: float | None = None,
) -> Path:
    """Write a packed copy of checkpoint ``src`` to ``dst`` (atomically; see module doc).

    Returns ``dst``. ``with_teacher`` packs ``src/teacher`` too when it exists; ``omega`` sets
    the default guidance scale of the packed card(s)."""
    src, dst = Path(src), Path(dst)
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if omega is not None and not (math.isfinite(omega) and omega >= 0):
        raise InvalidArgumentError(f"omega must be a finite number >= 0, got {omega}")
    if not (src / "model.json").is_file():
        raise CheckpointError(f"{src} is not a checkpoint folder (no model.json)")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise InvalidArgumentError(f"the packed copy {dst} must lie outside {src}")
    torch_dtype = DTYPES[dtype]
    teacher_src = src / TEACHER_DIR
    bundle = with_teacher and (teacher_src / "model.json").is_file()

    def fill(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
            packed = Path(scratch) / "packed"
            _pack_one(src, packed, torch_dtype, dtype, bundle, omega)
            for item in packed.iterdir():
                shutil.move(str(item), tmp / item.name)
        if bundle:
            _pack_one(teacher_src, tmp / TEACHER_DIR, torch_dtype, dtype, False, omega)

    write_dir_atomic(dst, fill)
    return dst


def merge_lora_checkpoint(
    src: str | Path, dst: str | Path, *, dtype: str = "float16", omega: float | None = None
) -> Path:
    """Write the LoRA checkpoint ``src`` (:mod:`soundctm.engine.lora`) as an ordinary checkpoint
    ``dst``: its parent's weights with the adapter folded in (``W + (alpha / r) B A``), cast to
    ``dtype``. The card drops ``lora`` and records it under ``provenance.merged_lora``."""
    from soundctm.engine.lora import merged_state
    from soundctm.engine.pipeline import Pipeline, checkpoint_state

    src, dst = Path(src), Path(dst)
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if omega is not None and not (math.isfinite(omega) and omega >= 0):
        raise InvalidArgumentError(f"omega must be a finite number >= 0, got {omega}")
    if not (src / "model.json").is_file():
        raise CheckpointError(f"{src} is not a checkpoint folder (no model.json)")
    if read_card(src).lora is None:
        raise InvalidArgumentError(
            f"{src} is not a LoRA checkpoint (its card has no lora entry); pack it without "
            "--merge-lora"
        )
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise InvalidArgumentError(f"the merged copy {dst} must lie outside {src}")
    pipe = Pipeline.load(src)
    card = pipe.card.model_copy(deep=True)
    lora = card.lora
    assert lora is not None
    card.lora = None
    card.provenance["merged_lora"] = {"source": str(src.resolve()), **lora.model_dump()}
    card.provenance["packed"] = {"dtype": dtype, "source": src.resolve().name}
    if omega is not None:
        card.defaults.omega = omega
        card.provenance["packed"]["omega"] = omega
    weights = {
        "backbone": merged_state(pipe.ctm.backbone),
        "text_encoder": checkpoint_state(pipe.text_encoder),
        "autoencoder": checkpoint_state(pipe.autoencoder),
    }
    for kind, state in weights.items():
        check_castable(state, DTYPES[dtype], f"{src} ({kind})")
        weights[kind] = cast_floating(state, DTYPES[dtype])
    return save_checkpoint(dst, card, weights)


def weights_bytes(path: str | Path) -> int:
    """Total size of the safetensors files of a checkpoint folder and its subfolders."""
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors"))


__all__ = [
    "TEACHER_DIR",
    "cast_floating",
    "merge_lora_checkpoint",
    "pack_checkpoint",
    "weights_bytes",
]
