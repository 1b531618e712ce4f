"""Per-sample random numbers.

Each sample owns one CPU ``torch.Generator`` seeded with its own seed, and every random number it
uses (initial noise, the fresh noise of gamma-sampling) is drawn from that generator on the CPU.
So sample i with seed k is the same sound whether it is generated alone or in a batch, on any
device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from soundctm.engine.specs import MAX_SEED


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed."""
    generators = []
    for seed in seeds:
        if not 0 <= int(seed) <= MAX_SEED:
            raise ValueError(f"seed {seed} is outside [0, 2**63 - 1]")
        generators.append(torch.Generator(device="cpu").manual_seed(int(seed)))
    return generators


def per_sample_randn(
    generators: Sequence[torch.Generator], shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal noise [len(generators), *shape], row i drawn from ``generators[i]`` (CPU)."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    ).to(dtype)


class PerSampleNoise:
    """``noise(like)`` draws standard normal noise shaped like ``like`` from per-sample generators
    and moves it to ``like``'s device and dtype."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"batch of {like.shape[0]} but {len(self.generators)} generators")
        z = per_sample_randn(self.generators, like.shape[1:])
        return z.to(device=like.device, dtype=like.dtype)
