"""What ``soundctm sample`` and ``soundctm vary`` share around the pipeline: per-sample seeds,
loading the model under a spinner, and writing each generated clip with its sidecar."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from soundctm.cli.common import err_console


def expand_seeds(
    prompts: list[str], num_samples: int, seed: int | None
) -> tuple[list[str], list[int]]:
    """Each prompt ``num_samples`` times, and sample ``i``'s seed ``seed + i`` (a random base
    when ``seed`` is None), so any sample can be made again alone with its own seed."""
    expanded = [p for p in prompts for _ in range(num_samples)]
    base = seed if seed is not None else secrets.randbelow(2**31)
    return expanded, [base + i for i in range(len(expanded))]


def load_with_spinner(model_dir: Path, device: str | None, dtype: str | None) -> Any:
    """:func:`soundctm.cli.models.load_model` with a spinner on a terminal."""
    from soundctm.cli.models import load_model

    status = err_console.status("loading model", spinner="dots")
    with status if err_console.is_terminal else contextlib.nullcontext():
        return load_model(model_dir, device, dtype)


def write_batches(
    batches: Iterable[Any],
    out_dir: Path,
    stem: Callable[[Any], str],
    *,
    model_dir: Path,
    card_hash: str,
    extra: dict[str, Any] | None,
    normalize: str,
    audio_format: str,
    bar: Any,
) -> tuple[list[Path], Any]:
    """Write every clip of ``batches`` (the pipeline's ``Generation`` objects) to
    ``out_dir/stem(params).FORMAT`` (a free name: nothing is overwritten) with its JSON sidecar;
    the written paths and the last clip's parameters (None when nothing was generated)."""
    from soundctm.engine.audio_io import free_stem, save_sample

    written: list[Path] = []
    last = None
    for gen in batches:
        for clip, prm in zip(gen.audio, gen.params, strict=True):
            path = free_stem(out_dir, stem(prm), audio_format)
            written.append(
                save_sample(
                    path,
                    clip,
                    prm,
                    sample_rate=gen.sample_rate,
                    model_path=model_dir,
                    model_card_sha256=card_hash,
                    extra=extra,
                    normalize=normalize,
                    callback=bar,
                )
            )
            bar.log(f"wrote {path}")
            last = prm
    return written, last
