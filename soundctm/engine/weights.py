"""Moving weights between modules."""

from __future__ import annotations

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
