"""Classifier-free guidance as one forward on a 2B batch (method.md §2 and §5).

``out = out_uncond + scale * (out_cond - out_uncond)``. The two guidance knobs are named as in
:class:`~soundctm.engine.plan.SamplingPlan`: ``guidance_scale`` is the mixing weight on the
model's outputs (for a teacher the CFG scale ``w`` = omega on the denoiser D; for a CTM student
``nu`` on the jump G) and ``guidance_input`` is the ``omega`` fed to a student network (``None``
for a teacher). A scale of exactly 1 runs only the conditional half.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import TrajectoryModel
from soundctm.engine.schedule import append_dims


def cfg_combine(cond_out: Tensor, uncond_out: Tensor, scale: float | Tensor) -> Tensor:
    """``uncond + scale * (cond - uncond)`` (Ho & Salimans 2022, eq. 6); ``scale`` may be one
    number or one per sample."""
    if isinstance(scale, Tensor):
        scale = append_dims(scale.to(cond_out.dtype), cond_out.ndim)
    return uncond_out + scale * (cond_out - uncond_out)


def _double(value: Tensor | float | None) -> Tensor | float | None:
    if isinstance(value, Tensor) and value.ndim > 0:
        return torch.cat([value, value])
    return value


def guided(
    fn: Callable[..., Tensor],
    x: Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    scale: float | Tensor,
    *args: Tensor | float | None,
) -> Tensor:
    """``fn(x, cond, *args)`` under classifier-free guidance with ``scale``.

    The conditional and unconditional halves run as ONE call of ``fn`` on a batch of 2B; per-sample
    tensor ``args`` are duplicated to match. ``scale == 1`` (or no ``uncond``) runs the
    conditional half only. ``scale`` may be a per-sample tensor [B].
    """
    if uncond is None or (not isinstance(scale, Tensor) and scale == 1.0):
        return fn(x, cond, *args)
    if len(uncond) != len(cond):
        raise ValueError(f"{len(cond)} conditional but {len(uncond)} unconditional rows")
    out = fn(torch.cat([x, x]), cond.cat(uncond), *(_double(a) for a in args))
    out_cond, out_uncond = out.chunk(2)
    return cfg_combine(out_cond, out_uncond, scale)


@dataclass
class GuidedModel:
    """A model bound to one batch's conditioning and guidance, as the solvers see it.

    ``denoise(x, sigma)`` and ``jump(x, t, s)`` take scalar times; guidance is applied inside.
    ``ctm`` is a torch :class:`~soundctm.engine.ctm.CTM` or an exported network graph. For a
    teacher, ``guidance_scale`` is the CFG scale omega on the denoiser and ``guidance_input`` is
    ``None``; for a student, ``guidance_scale`` is nu on the jump and ``guidance_input`` is
    omega, the network's guidance input.
    """

    ctm: TrajectoryModel
    cond: Conditioning
    uncond: Conditioning | None = None
    guidance_scale: float | Tensor = 1.0
    guidance_input: Tensor | float | None = None

    def _omega(self, x: Tensor) -> Tensor | None:
        if self.guidance_input is None:
            return None
        w = torch.as_tensor(self.guidance_input, device=x.device, dtype=x.dtype)
        return w.expand(x.shape[0]) if w.ndim == 0 else w

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """The guided denoiser at noise level ``sigma`` (a number or one per sample)."""

        def call(x_: Tensor, c: Conditioning, w: Tensor | None, sig: Tensor) -> Tensor:
            return self.ctm.denoise(x_, sig, c, w)

        sig = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        return guided(call, x, self.cond, self.uncond, self.guidance_scale, self._omega(x), sig)

    def jump(self, x: Tensor, t: float, s: float) -> Tensor:
        """The guided CTM jump ``G(x, t, s)`` (nu-sampling, method.md §5)."""

        def call(x_: Tensor, c: Conditioning, w: Tensor | None) -> Tensor:
            return self.ctm.jump(x_, t, s, c, w)

        return guided(call, x, self.cond, self.uncond, self.guidance_scale, self._omega(x))
