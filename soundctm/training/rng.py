"""Randomness as a pure function of (seed, step, rank, stream).

Every random number of a training step comes from a CPU generator seeded by these values, so a
resumed run draws exactly what an uninterrupted run would, with no RNG state to save. Initial
weights, which component factories draw from torch's global generator, are drawn inside
:func:`seeded_init`, so the caller's global RNG state is left as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from soundctm.engine.specs import MAX_SEED


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (stable across machines and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED


def generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``seed`` and restore the caller's RNG state
    (CPU and every CUDA device) afterwards.

    For weight initialisation: factories (``nn.Linear`` and friends) draw initial weights from the
    global generator and take no generator argument, so the global RNG is forked
    (:func:`torch.random.fork_rng`) rather than reseeded for the caller.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
