"""The consistency-trajectory wrapper around a raw backbone (method.md §2-3).

``D(x, t)   = c_skip(t) x + c_out(t) F(c_in(t) x; c_noise(t))``                 (teacher, EDM)
``g(x, t, s) = c_skip(t) x + c_out(t) F(c_in(t) x; c_noise(t), c_noise(s), w)``  (student)
``G(x, t, s) = (s/t) x + (1 - s/t) g(x, t, s)``                                  (CTM jump)

At ``s == t``, ``G`` returns ``x`` and ``g(x, t, t)`` is an ordinary denoiser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from soundctm.engine.conditioning import Conditioning
from soundctm.engine.schedule import append_dims, c_in, c_noise, c_out, c_skip

TEACHER = "teacher"
STUDENT = "ctm"


def as_batch(value: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A per-sample vector [batch] on ``like``'s device and dtype from a scalar or a vector."""
    v = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    return v.expand(batch) if v.ndim == 0 else v


def precondition(x: Tensor, raw: Tensor, t: Tensor, sigma_data: float) -> Tensor:
    """``c_skip(t) x + c_out(t) raw``: the EDM output parameterisation (EDM eq. 7)."""
    t = append_dims(t, x.ndim)
    return c_skip(t, sigma_data) * x + c_out(t, sigma_data) * raw


def ctm_jump(x: Tensor, g: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """``G(x, t, s) = (s/t) x + (1 - s/t) g`` (CTM, Kim et al. 2024, eq. 7)."""
    ratio = append_dims(s / t, x.ndim)
    return ratio * x + (1 - ratio) * g


class TrajectoryModel:
    """``denoise`` and ``jump`` written once over a model's ``g(x, t, s)`` (method.md §3).

    A subclass is called as ``model(x, t, s, cond, omega) -> g(x, t, s)``: the torch
    :class:`CTM` through ``nn.Module.__call__`` (so DDP and hooks see it), an exported
    network graph (:class:`soundctm.export.runtime.GraphCTM`) directly. ``kind`` is
    ``"teacher"`` or ``"ctm"`` (a student).
    """

    kind: str

    if TYPE_CHECKING:

        def __call__(
            self,
            x: Tensor,
            t: float | Tensor,
            s: float | Tensor,
            cond: Conditioning,
            omega: float | Tensor | None = None,
        ) -> Tensor: ...

    @property
    def is_student(self) -> bool:
        return self.kind == STUDENT

    def denoise(
        self, x: Tensor, t: float | Tensor, cond: Conditioning, omega: float | Tensor | None = None
    ) -> Tensor:
        """The denoiser ``g(x, t, t)`` (``D(x, t)`` for a teacher)."""
        return self(x, t, t, cond, omega)

    def jump(
        self,
        x: Tensor,
        t: float | Tensor,
        s: float | Tensor,
        cond: Conditioning,
        omega: float | Tensor | None = None,
    ) -> Tensor:
        """The CTM jump ``G(x, t, s)`` from time ``t`` to an earlier time ``s``."""
        if not self.is_student:
            raise TypeError(
                "a teacher cannot jump between times; sample it with an ODE solver "
                "(heun, euler, dpmpp-2m)"
            )
        b = x.shape[0]
        return ctm_jump(x, self(x, t, s, cond, omega), as_batch(t, b, x), as_batch(s, b, x))


class CTM(TrajectoryModel, nn.Module):
    """A backbone with EDM preconditioning; a teacher denoises, a student also jumps.

    ``kind`` is ``"teacher"`` (the backbone sees only ``t``) or ``"ctm"`` (a student: the
    backbone also sees the target time ``s`` and the guidance input ``omega``).
    """

    def __init__(self, backbone: nn.Module, sigma_data: float, kind: str = TEACHER) -> None:
        super().__init__()
        if kind not in (TEACHER, STUDENT):
            raise ValueError(f"kind must be {TEACHER!r} or {STUDENT!r}, got {kind!r}")
        self.backbone = backbone
        self.sigma_data = float(sigma_data)
        self.kind = kind

    def g(
        self,
        x: Tensor,
        t: float | Tensor,
        s: float | Tensor,
        cond: Conditioning,
        omega: float | Tensor | None = None,
    ) -> Tensor:
        """``g(x, t, s)``; for a teacher ``s`` is ignored and this is ``D(x, t)``."""
        b = x.shape[0]
        t = as_batch(t, b, x)
        if self.is_student:
            s = as_batch(s, b, x)
            w = None if omega is None else as_batch(omega, b, x)
            raw = self.backbone(
                append_dims(c_in(t, self.sigma_data), x.ndim) * x, c_noise(t), c_noise(s), w, cond
            )
        else:
            raw = self.backbone(
                append_dims(c_in(t, self.sigma_data), x.ndim) * x, c_noise(t), None, None, cond
            )
        return precondition(x, raw, t, self.sigma_data)

    #: ``g(x, t, s)`` through ``__call__`` (so DDP and hooks see it).
    forward = g
