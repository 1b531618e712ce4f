"""Audio-to-audio variation and inpainting (method.md §8): the maths, as small pure functions.

- :func:`strength_sigma`: a strength ``S`` in [0, 1] is a position on the model's Karras ramp,
  ``sigma(S) = (sigma_min^(1/rho) + S (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``.
- :func:`time_axis` / :func:`keep_mask`: the latent frames a list of ``(start, end)`` seconds
  spans cover, as a mask that is 1 where the input is kept, ramping down over the first and
  last frames inside each span (:func:`feather`).
- :class:`Inpainting`: a guided model whose clean estimate is replaced by the input latent in
  the kept region at every evaluation, so the state there stays ``x_0 + sigma eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from soundctm.errors import InvalidArgumentError


def strength_sigma(strength: float, sigma_min: float, sigma_max: float, rho: float) -> float:
    """The noise level a variation of ``strength`` starts from (method.md §8, eq. V1):
    ``(sigma_min^(1/rho) + S (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``; 0 -> sigma_min
    (the input, as it is), 1 -> sigma_max (a new sound)."""
    check_strength(strength)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigma = (lo + float(strength) * (hi - lo)) ** rho
    return min(max(sigma, sigma_min), sigma_max)


def check_strength(strength: float) -> float:
    """``strength`` if it is a number in [0, 1], else a one-line error."""
    value = float(strength)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(
            f"strength must be between 0 and 1, got {strength} (0 keeps the input, 1 makes a "
            "new sound)"
        )
    return value


def time_axis(latent_shape: Callable[[float], Sequence[int]], seconds: float) -> int:
    """The axis of a per-sample latent shape that grows with the clip length (found by asking
    ``latent_shape`` for ``seconds`` and ``2 * seconds``)."""
    a = list(latent_shape(seconds))
    b = list(latent_shape(2.0 * seconds))
    axes = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if len(axes) != 1:
        raise InvalidArgumentError(
            f"cannot tell which latent axis is time (shapes {a} and {b} for {seconds:g} and "
            f"{2 * seconds:g} s); this autoencoder does not support --mask"
        )
    return axes[0]


def span_frames(start: float, end: float, seconds: float, frames: int) -> tuple[int, int]:
    """The latent frames ``[first, last)`` that a span of ``start..end`` seconds touches in a
    clip of ``seconds`` with ``frames`` frames: ``floor(start / seconds * frames)`` to
    ``ceil(end / seconds * frames)``."""
    first = math.floor(start / seconds * frames + 1e-9)
    last = math.ceil(end / seconds * frames - 1e-9)
    return max(0, first), min(frames, max(last, first + 1))


def check_spans(spans: Sequence[tuple[float, float]], seconds: float) -> list[tuple[float, float]]:
    """The spans as floats, each inside the clip ``0..seconds`` with ``start < end``."""
    out = []
    for span in spans:
        try:
            start, end = (float(v) for v in span)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"a mask span is two numbers START:END in seconds, got {span!r}"
            ) from None
        if not (math.isfinite(start) and math.isfinite(end)) or not 0.0 <= start < end:
            raise InvalidArgumentError(
                f"mask {start:g}:{end:g} is not a span: need 0 <= START < END (seconds)"
            )
        if end > seconds + 1e-9:
            raise InvalidArgumentError(
                f"mask {start:g}:{end:g} reaches past the end of the {seconds:g} s clip; give "
                f"spans within 0:{seconds:g}"
            )
        out.append((start, end))
    return out


#: How far into a regenerated span the kept input still shows, fading out (method.md §8, V4).
MASK_FEATHER_SECONDS = 0.1


def feather(keep: Tensor, frames: int) -> Tensor:
    """A 1-D keep mask (1 kept, 0 regenerated) with a linear ramp inside each regenerated run
    (method.md §8, eq. V4): the ``j``-th frame (1-based) from a kept neighbour gets
    ``1 - j / (n + 1)``, ``n = min(frames, (L - 1) // 2)`` for a run of ``L`` frames between
    two kept regions (``L - 1`` at the clip's edge). Kept frames stay exactly 1; ``frames = 0``
    returns the mask unchanged."""
    out = keep.clone()
    if frames <= 0:
        return out
    size = keep.numel()
    i = 0
    while i < size:
        if keep[i] != 0:
            i += 1
            continue
        end = i
        while end < size and keep[end] == 0:
            end += 1
        left, right = i > 0, end < size
        length = end - i
        n = min(frames, (length - 1) // 2 if left and right else length - 1)
        for j in range(1, n + 1):
            value = 1.0 - j / (n + 1)
            if left:
                out[i + j - 1] = max(float(out[i + j - 1]), value)
            if right:
                out[end - j] = max(float(out[end - j]), value)
        i = end
    return out


def keep_mask(
    spans: Sequence[tuple[float, float]],
    seconds: float,
    shape: Sequence[int],
    axis: int,
    feather_seconds: float = MASK_FEATHER_SECONDS,
) -> Tensor:
    """A float mask of the per-sample latent ``shape``: 1 on the frames kept from the input, 0
    on the frames the ``spans`` (seconds) cover (regenerated), with a ramp over the first and
    last ``feather_seconds`` inside each span (:func:`feather`; 0 for hard edges)."""
    frames = int(shape[axis])
    keep = torch.ones(frames)
    for start, end in check_spans(spans, seconds):
        first, last = span_frames(start, end, seconds, frames)
        keep[first:last] = 0.0
    keep = feather(keep, round(feather_seconds * frames / seconds))
    view = [1] * len(shape)
    view[axis] = frames
    return keep.reshape(view).expand(tuple(shape)).contiguous()


def fit_frames(latents: Tensor, frames: int, axis: int) -> Tensor:
    """``latents`` ``[B, *shape]`` cropped or edge-padded to ``frames`` along per-sample
    ``axis`` (an encoder may round the length up)."""
    dim = axis + 1
    have = latents.shape[dim]
    if have >= frames:
        return latents.narrow(dim, 0, frames)
    last = latents.narrow(dim, have - 1, 1)
    reps = [1] * latents.ndim
    reps[dim] = frames - have
    return torch.cat([latents, last.repeat(reps)], dim=dim)


@dataclass(frozen=True)
class Source:
    """Where a variation starts: the clean input latents ``[N, *shape]``, the level ``sigma``
    they are noised to, and the kept region ``keep`` ``[*shape]`` (``None``: nothing kept)."""

    latents: Tensor
    sigma: float
    keep: Tensor | None = None


class Inpainting:
    """A guided model (``denoise`` / ``jump``) that keeps the input in the region ``keep``
    (method.md §8, eq. V3): the clean estimate there is replaced by the input latent ``x0``.

    For a denoiser, ``D' = keep x0 + (1 - keep) D``. For a CTM jump,
    ``G(x, t, s) = (s/t) x + (1 - s/t) g``, so replacing ``g`` by ``x0`` gives
    ``G' = keep ((s/t) x + (1 - s/t) x0) + (1 - keep) G``. Where ``x = x0 + t eps`` both give
    ``x0 + s eps``: the kept region is the input noised to the level of each step. The last
    step returns it (exactly on an ODE grid, which ends at 0; up to ``sigma_min eps`` on a CTM
    grid, removed by :meth:`finish`).
    """

    def __init__(self, model: Any, x0: Tensor, keep: Tensor) -> None:
        self.model = model
        self.x0 = x0
        self.keep = keep.to(device=x0.device, dtype=x0.dtype)

    def denoise(self, x: Tensor, sigma: Any) -> Tensor:
        out = self.model.denoise(x, sigma)
        return torch.lerp(out, self.x0, self.keep)

    def jump(self, x: Tensor, t: float, s: float) -> Tensor:
        out = self.model.jump(x, t, s)
        kept = (s / t) * x + (1.0 - s / t) * self.x0
        return torch.lerp(out, kept, self.keep)

    def finish(self, x: Tensor) -> Tensor:
        """The sampler's result with the kept region set to the input latent itself (a CTM
        chain ends at ``sigma_min``, where the kept region is ``x0 + sigma_min eps``)."""
        return torch.lerp(x, self.x0, self.keep)


def latent_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity per sample of two latent batches ``[B, ...]`` (the variation
    measurement of method.md §8)."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


__all__ = [
    "MASK_FEATHER_SECONDS",
    "Inpainting",
    "Source",
    "check_spans",
    "check_strength",
    "feather",
    "fit_frames",
    "keep_mask",
    "latent_similarity",
    "span_frames",
    "strength_sigma",
    "time_axis",
]
