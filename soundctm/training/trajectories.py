"""Trajectory-cache mode for small compute budgets (issue: distillation, part 5).

The teacher's guided probability-flow ODE is solved ONCE over the whole training grid for M
(noise, caption, omega) triples; every grid point of every trajectory is stored in one
memory-mapped float32 ``.npy`` file (pickle-free). Distillation then reads ``x_t`` and ``x_u``
from the cache, so the teacher solve of each step becomes a lookup (the DSM loss still uses real
data). The trade: the CTM loss sees only M trajectories, and only their grid points.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from soundctm.engine.files import write_dir_atomic
from soundctm.engine.guidance import GuidedModel
from soundctm.engine.pipeline import Pipeline
from soundctm.training.ctm_losses import teacher_solve
from soundctm.training.data import built_with
from soundctm.training.rng import generator

TRAJ_DATA = "trajectories.npy"
TRAJ_META = "meta.json"


def build_trajectory_cache(
    teacher: Pipeline,
    captions: list[str],
    path: Path,
    *,
    grid: Tensor,
    size: int,
    w_min: float,
    w_max: float,
    caption_dropout: float,
    seed: int,
    fingerprint: dict[str, Any],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Solve the teacher's guided ODE from sigma_max over every point of ``grid`` for ``size``
    triples and store them: ``trajectories.npy`` [size, N, *latent] and ``meta.json`` (captions,
    omegas, grid, fingerprint). Written atomically. Triple m uses the caption
    ``captions[m % len(captions)]`` ("" with probability ``caption_dropout``), omega ~
    U[w_min, w_max] and noise from its own generator, so the cache is reproducible."""
    device = teacher.device
    n = len(grid)
    shape = teacher.latent_shape(teacher.card.seconds)
    chosen: list[str] = []
    omegas: list[float] = []
    for m in range(size):
        g = generator(seed, "trajectory", m)
        drop = float(torch.rand(1, generator=g)) < caption_dropout
        chosen.append("" if drop else captions[m % len(captions)])
        omegas.append(w_min + (w_max - w_min) * float(torch.rand(1, generator=g)))

    def fill(tmp: Path) -> None:
        mm = np.lib.format.open_memmap(
            tmp / TRAJ_DATA, mode="w+", dtype=np.float32, shape=(size, n, *shape)
        )
        for lo in range(0, size, batch_size):
            hi = min(size, lo + batch_size)
            noise = torch.stack(
                [
                    torch.randn(shape, generator=generator(seed, "traj-noise", m))
                    for m in range(lo, hi)
                ]
            )
            x = (noise * float(grid[0])).to(device)
            omega = torch.tensor(omegas[lo:hi], device=device)
            with torch.inference_mode():
                cond = teacher.encode_text(chosen[lo:hi])
                uncond = teacher.encode_text([""] * (hi - lo))
                model = GuidedModel(teacher.ctm, cond, uncond, omega, None)
                points = [x]
                start = torch.zeros(hi - lo, dtype=torch.long, device=device)
                for j in range(n - 1):
                    x = teacher_solve(model.denoise, x, grid.to(device), start + j, 1)
                    points.append(x)
            mm[lo:hi] = torch.stack(points, dim=1).float().cpu().numpy()
            if progress is not None:
                progress(hi, size)
        mm.flush()
        del mm
        meta = {
            "captions": chosen,
            "omegas": omegas,
            "grid": [float(v) for v in grid],
            "shape": list(shape),
            "fingerprint": fingerprint,
        }
        (tmp / TRAJ_META).write_text(json.dumps(meta), encoding="utf-8")

    write_dir_atomic(Path(path), fill)
    return Path(path)


class TrajectoryCache:
    """Reads a cache written by :func:`build_trajectory_cache` (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        meta = json.loads((Path(path) / TRAJ_META).read_text(encoding="utf-8"))
        self.captions: list[str] = meta["captions"]
        self.omegas = torch.tensor(meta["omegas"], dtype=torch.float32)
        self.grid = torch.tensor(meta["grid"], dtype=torch.float32)
        self.fingerprint = meta["fingerprint"]
        self.data = np.load(Path(path) / TRAJ_DATA, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.captions)

    def points(self, m: Tensor, j: Tensor) -> Tensor:
        """``x`` at grid index ``j[b]`` of trajectory ``m[b]`` for each b."""
        rows = [np.asarray(self.data[int(a), int(b)]) for a, b in zip(m, j, strict=True)]
        return torch.from_numpy(np.stack(rows))


def cache_matches(path: Path, fingerprint: dict[str, Any]) -> bool:
    """True if ``path`` holds a complete trajectory cache built with ``fingerprint``."""
    return built_with(Path(path) / TRAJ_META, Path(path) / TRAJ_DATA, fingerprint)
