"""The noise of one sample as a file, for samplers outside Python (js/, docs/onnx.md).

soundctm draws every random number of sample ``seed`` from one CPU ``torch.Generator`` seeded
with it (:mod:`soundctm.engine.noise`): first the initial noise ``z`` of ``x_T = sigma_max z``,
then, with gamma > 0, one fresh draw after each jump but the last (CTM gamma-sampling,
method.md section 5). :func:`noise_draws` makes exactly those draws, in that order, so a sampler
that reads them (the JavaScript one of ``js/``) reproduces ``soundctm sample --seed SEED``;
torch's generator itself cannot be ported with reasonable effort.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from soundctm.engine.files import atomic_path
from soundctm.engine.noise import make_generators, per_sample_randn


def noise_draws(seed: int, shape: Sequence[int], steps: int) -> np.ndarray:
    """``[steps, *shape]`` float32: draw 0 the initial noise, draw i the noise added after jump
    i (used when gamma > 0), as the sampler draws them for ``seed``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    (generator,) = make_generators([seed])
    return np.stack([per_sample_randn([generator], shape)[0].numpy() for _ in range(steps)])


def save_noise(path: str | Path, seed: int, shape: Sequence[int], steps: int) -> Path:
    """Write :func:`noise_draws` as a float32 ``.npy`` (atomically); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, noise_draws(seed, shape, steps).astype("<f4"))
    return path


__all__ = ["noise_draws", "save_noise"]
