"""Moving weights between modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.errors import CheckpointError


def init_student_from_teacher(student: nn.Module, teacher_state: dict[str, Tensor]) -> list[str]:
    """Copy every teacher entry whose name and shape match into ``student`` (method.md §3).

    Works for any module (parameters and persistent buffers alike). Returns the names of the
    student's state entries left freshly initialised (for the DiT: ``["student_gate"]``). Raises
    :class:`CheckpointError` if nothing matches, which means the teacher is of another design.
    """
    fresh: list[str] = []
    copied = 0
    with torch.no_grad():
        for name, value in student.state_dict(keep_vars=True).items():
            source = teacher_state.get(name)
            if source is None or tuple(source.shape) != tuple(value.shape):
                fresh.append(name)
                continue
            value.copy_(source)
            copied += 1
    if copied == 0:
        raise CheckpointError(
            "none of the teacher's weights fit the student (no name and shape matches); "
            "build the student with the teacher's backbone parameters"
        )
    return fresh


def build_with_state(
    build: Callable[[], Any],
    state: dict[str, Tensor],
    what: str,
    dtype: torch.dtype | None = None,
) -> tuple[Any, bool]:
    """``build()`` with ``state`` loaded (``strict``); returns the object and whether it was
    built lazily.

    Lazily, where possible: the object is first built on the ``meta`` device (no memory, no
    random initialisation: for a 1B-parameter network that is most of the load time) and the
    tensors of ``state`` become its parameters and buffers (``assign=True``: no copy where the
    stored dtype is the one the module was built with; a tensor stored in another floating dtype,
    a packed float16 file say, is cast to the module's, or to ``dtype`` when given, exactly as
    an ordinary ``load_state_dict`` would). That counts only if nothing is left on the meta device
    afterwards: a module that computes tensors in its constructor which its state dict does not
    hold (non-persistent buffers, plain tensor attributes) is built and loaded the ordinary way
    instead. ``what`` names the component in the error for weights that do not fit.
    """
    if not state:
        return build(), False
    try:
        with torch.device("meta"):
            lazy = build()
    except Exception:  # a constructor that cannot run on meta tensors: build it normally
        lazy = None
    if isinstance(lazy, nn.Module):
        built = {k: v.dtype for k, v in lazy.state_dict().items()}
        cast = {}
        for key, value in state.items():
            want = built.get(key)
            if want is not None and want.is_floating_point and value.is_floating_point():
                want = dtype or want
                value = value if value.dtype == want else value.to(want)
            cast[key] = value
        _load(lazy, cast, what, assign=True)
        if not _has_meta_tensors(lazy):
            return lazy, True
    obj = build()
    if not isinstance(obj, nn.Module):
        raise CheckpointError(f"there are weights for {what}, which is not a torch module")
    _load(obj, state, what, assign=False)
    return (obj if dtype is None else obj.to(dtype)), False


def _load(module: nn.Module, state: dict[str, Tensor], what: str, *, assign: bool) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"the weights of {what} do not fit its parameters ({first}); the card and the "
            "weights disagree"
        ) from exc


def _has_meta_tensors(module: nn.Module) -> bool:
    """Whether any parameter, buffer or plain tensor attribute of ``module`` is on ``meta``."""
    for m in module.modules():
        for value in (*m._parameters.values(), *m._buffers.values(), *vars(m).values()):
            if isinstance(value, Tensor) and value.is_meta:
                return True
            if isinstance(value, list | tuple) and any(
                isinstance(v, Tensor) and v.is_meta for v in value
            ):
                return True
    return False
