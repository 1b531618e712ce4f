"""Data for training: deterministic batches, caption dropout, mixing, a latent cache.

The order of training examples is a pure function of (seed, micro-batch number, rank): a batch
sampler draws one permutation of the data set per epoch from a seeded generator. Resuming at a
step therefore continues exactly where the run stopped, and each of W processes reads its own
disjoint share of every global batch.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from soundctm.engine.files import write_dir_atomic, write_text_atomic
from soundctm.engine.specs import ComponentSpec
from soundctm.errors import DataError, InvalidArgumentError
from soundctm.plugins.registry import Registry
from soundctm.training.rng import derive_seed, generator


class StepBatchSampler(Sampler[list[int]]):
    """Yields the index lists of micro-batches ``start, start + 1, ...`` for process ``rank``.

    Global position ``p = (b * world + rank) * batch_size + j`` of micro-batch ``b`` maps to epoch
    ``p // n`` and to ``perm_epoch[p % n]``, ``perm_epoch`` a seeded permutation of ``range(n)``.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        world: int = 1,
        rank: int = 0,
        start: int = 0,
        limit: int | None = None,
    ) -> None:
        if n < 1:
            raise DataError("the data set is empty; nothing to train on")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.world, self.rank, self.start, self.limit = world, rank, start, limit
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(
                self.n, generator=generator(self.seed, "epoch", epoch)
            )
        return self._perms[epoch]

    def indices(self, b: int) -> list[int]:
        """The data-set indices of micro-batch ``b`` on this rank."""
        first = (b * self.world + self.rank) * self.batch_size
        out = []
        for p in range(first, first + self.batch_size):
            out.append(int(self._perm(p // self.n)[p % self.n]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        while self.limit is None or b < self.limit:
            yield self.indices(b)
            b += 1

    def __len__(self) -> int:
        return (self.limit - self.start) if self.limit is not None else 2**31


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack audio (or cached latents) and gather captions."""
    out: dict[str, Any] = {"caption": [str(it["caption"]) for it in items]}
    key = "latents" if "latents" in items[0] else "audio"
    tensors = [torch.as_tensor(it[key], dtype=torch.float32) for it in items]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise DataError(
            f"clips in a batch differ in shape {sorted(shapes)}; the data set must "
            "crop or pad every clip to the model's length"
        )
    out[key] = torch.stack(tensors)
    return out


def drop_captions(captions: Sequence[str], p: float, gen: torch.Generator) -> list[str]:
    """Replace each caption by "" with probability ``p`` (classifier-free guidance training)."""
    keep = torch.rand(len(captions), generator=gen) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]


def rms_db(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-row RMS level in dB."""
    return 20 * torch.log10(x.pow(2).mean(-1).sqrt() + eps)


def mix_batch(
    audio: Tensor, captions: Sequence[str], prob: float, gen: torch.Generator
) -> tuple[Tensor, list[str]]:
    """TANGO-style mixing augmentation (Ghosal et al. 2023, §3.3).

    With probability ``prob`` sample i is mixed with another sample j of the batch:
    ``p = 1 / (1 + 10^((G_i - G_j) / 20))`` from their levels G in dB,
    ``mix = (p x_i + (1 - p) x_j) / sqrt(p^2 + (1 - p)^2)``, and the captions are joined with
    "and". The result is peak-normalised back to the peak of x_i.
    """
    b = audio.shape[0]
    if prob <= 0 or b < 2:
        return audio, list(captions)
    chosen = torch.rand(b, generator=gen) < prob
    partner = (torch.arange(b) + torch.randint(1, b, (b,), generator=gen)) % b
    out, caps = audio.clone(), list(captions)
    levels = rms_db(audio)
    for i in torch.nonzero(chosen).flatten().tolist():
        j = int(partner[i])
        p = 1.0 / (1.0 + 10 ** (float(levels[i] - levels[j]) / 20))
        mixed = (p * audio[i] + (1 - p) * audio[j]) / math.sqrt(p**2 + (1 - p) ** 2)
        peak = audio[i].abs().max().clamp_min(1e-8)
        out[i] = mixed * (peak / mixed.abs().max().clamp_min(1e-8))
        caps[i] = f"{captions[i]} and {captions[j]}" if captions[j] else captions[i]
    return out, caps


#: Where a run lists the unusable files of its data set (and of its ``valid_dataset``).
UNUSABLE_FILES = "unusable-files.txt"
UNUSABLE_VALID_FILES = "unusable-files-valid.txt"


# ---------------------------------------------------------------- latent cache
CACHE_INDEX = "index.json"
CACHE_DATA = "latents.npy"


def build_latent_cache(
    dataset: Dataset,
    encode: Callable[[Tensor], Tensor],
    path: Path,
    *,
    fingerprint: dict[str, Any],
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Encode every clip once and store the latents in one memory-mappable float32 file.

    Written atomically; ``fingerprint`` (data set, autoencoder and clip settings) is stored so a
    stale cache is never used for another configuration.
    """
    n = len(dataset)  # type: ignore[arg-type]
    first = encode(torch.as_tensor(dataset[0]["audio"])[None].float())[0]
    shape = tuple(first.shape)

    def fill(tmp: Path) -> None:
        mm = np.lib.format.open_memmap(
            tmp / CACHE_DATA, mode="w+", dtype=np.float32, shape=(n, *shape)
        )
        captions: list[str] = []
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            audio = torch.stack([torch.as_tensor(it["audio"]).float() for it in items])
            with torch.inference_mode():
                mm[start : start + len(items)] = encode(audio).float().cpu().numpy()
            captions += [str(it["caption"]) for it in items]
            if progress is not None:
                progress(start + len(items), n)
        mm.flush()
        del mm
        index = {"n": n, "shape": list(shape), "captions": captions, "fingerprint": fingerprint}
        (tmp / CACHE_INDEX).write_text(json.dumps(index), encoding="utf-8")

    write_dir_atomic(path, fill)
    return path


def built_with(meta: Path, data: Path, fingerprint: dict[str, Any]) -> bool:
    """True if the cache whose JSON ``meta`` and ``data`` file both exist was built with
    ``fingerprint`` (a stale or half-written cache is never reused)."""
    try:
        stored = json.loads(meta.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return stored == json.loads(json.dumps(fingerprint)) and data.is_file()


def cache_matches(path: Path, fingerprint: dict[str, Any]) -> bool:
    """True if ``path`` holds a complete latent cache built with ``fingerprint``."""
    return built_with(Path(path) / CACHE_INDEX, Path(path) / CACHE_DATA, fingerprint)


class LatentCacheDataset(Dataset):
    """Reads latents from a cache written by :func:`build_latent_cache` (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        index = json.loads((Path(path) / CACHE_INDEX).read_text(encoding="utf-8"))
        self.captions: list[str] = index["captions"]
        self.latents = np.load(Path(path) / CACHE_DATA, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"latents": torch.from_numpy(np.array(self.latents[i])), "caption": self.captions[i]}


def dataset_fingerprint(*parts: Any) -> int:
    """A stable number identifying a configuration (for cache validation)."""
    return derive_seed(json.dumps(parts, sort_keys=True, default=str))


def build_dataset(
    registry: Registry,
    card: ComponentSpec,
    sample_rate: int,
    seconds: float,
    *,
    problems_file: Path | None = None,
) -> Any:
    """Build a data set, passing the model's sample rate and clip length where it takes them,
    and ``problems_file`` (where to list unusable files) where it takes that."""
    factory = registry.load("dataset", card.name)
    params = dict(card.params)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    if problems_file is not None and "problems_file" in accepted:
        params.setdefault("problems_file", str(problems_file))
    for key, value in (("sample_rate", sample_rate), ("seconds", seconds)):
        if key in accepted:
            if key in params and float(params[key]) != float(value):
                raise InvalidArgumentError(
                    f"dataset {card.name!r} has {key} = {params[key]} but the model uses "
                    f"{value}; drop {key} from the dataset parameters"
                )
            params[key] = value
    dataset = registry.build("dataset", card.name, **params)
    if len(dataset) == 0:
        raise DataError(f"dataset {card.name!r} {card.params} is empty; nothing to train on")
    rate = getattr(dataset, "sample_rate", sample_rate)
    if rate != sample_rate:
        raise DataError(
            f"dataset {card.name!r} yields {rate} Hz audio but the autoencoder "
            f"expects {sample_rate} Hz"
        )
    return dataset


def dataset_report(dataset: Any, list_file: Path | None = None, shown: int = 3) -> list[str]:
    """Lines about a data set: how many files it skipped, the first ``shown`` with their
    reasons and the file listing all of them, then its summary, where it offers them.

    The list is the data set's own ``problems_file`` if it wrote one, else it is written to
    ``list_file`` (``path<TAB>reason`` lines)."""
    problems = list(getattr(dataset, "problems", []) or [])
    lines = []
    if problems:
        listed = getattr(dataset, "problems_file", None)
        if listed is None and list_file is not None:
            rows = [f"{getattr(p, 'path', p)}\t{getattr(p, 'reason', '')}" for p in problems]
            write_text_atomic(list_file, "\n".join(rows) + "\n")
            listed = list_file
        first = getattr(dataset, "first_problems", None)
        if callable(first):
            names = str(first(shown))
        else:
            names = ", ".join(
                f"{getattr(p, 'path', p)} ({getattr(p, 'reason', '')})" for p in problems[:shown]
            ) + (f" and {len(problems) - shown} more" if len(problems) > shown else "")
        total = len(dataset) + len(problems)
        where = f"; full list in {listed}" if listed is not None else ""
        lines.append(f"skipped {len(problems)} of {total} files: {names}{where}")
    summary = getattr(dataset, "summary", None)
    if callable(summary):
        lines.append(str(summary()))
    return lines
