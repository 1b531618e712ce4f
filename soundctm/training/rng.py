"""Randomness as a pure function of (seed, step, rank, stream).

Every random number of a training step comes from a CPU generator seeded by these values, so a
resumed run draws exactly what an uninterrupted run would, with no RNG state to save.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (stable across machines and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))
