"""Sizes are bounded before allocation: a card is checked against its weights files first.

Before :meth:`~soundctm.engine.pipeline.Pipeline.load` builds any component, it compares, for
each component with a weights file, the number of values the card implies (the factory's
:class:`~soundctm.engine.components.CountsParameters` if it offers it, else a build on torch's
``meta`` device, which allocates nothing) with the number the safetensors file holds (read from
its header alone). They must be equal, so an absurd card ("width 1048576, depth 1000") fails in
one line instead of trying to allocate terabytes, and what the real build allocates is bounded
by the size of the files. A component whose card implies parameters but names no file is
refused too. Components without weights bound their own sizes (declared limits, such as
:data:`soundctm.builtin.mel.MEL_LIMITS`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from soundctm.engine.checkpoint import (
    CARD_FILE,
    COMPONENT_KINDS,
    ModelCard,
    component_file,
)
from soundctm.engine.components import declared_parameter_count
from soundctm.errors import CheckpointError, PluginError, SoundCTMError
from soundctm.plugins.registry import Registry


def file_parameter_count(file: Path) -> int:
    """The number of values the tensors of a safetensors file hold, read from its header only."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            return sum(
                math.prod(fh.get_slice(key).get_shape())
                for key in fh.keys()  # noqa: SIM118 - safe_open is not a mapping
            )
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({exc}); the checkpoint is corrupt or "
            "truncated: copy it again or re-save it"
        ) from exc


def implied_parameter_count(factory: Any, params: dict[str, Any], *, label: str) -> int | None:
    """How many state-dict values ``factory(**params)`` would have, without allocating them.

    The factory's declared count if it has one; else a build on the ``meta`` device, counted.
    ``None`` when that cannot tell (the factory fails on ``meta`` or returns no torch module);
    the real build then decides, as before. A user error raised by the factory (a value out of
    its declared bounds) is raised as it is.
    """
    try:
        declared = declared_parameter_count(factory, params)
    except TypeError as exc:
        raise PluginError(f"cannot build {label} with parameters {params}: {exc}") from exc
    if declared is not None:
        return declared
    try:
        with torch.device("meta"):
            module = factory(**params)
    except SoundCTMError:
        raise
    except Exception:  # not meta-safe: nothing to compare before the real build
        return None
    if not isinstance(module, nn.Module):
        return None
    return sum(t.numel() for t in module.state_dict().values())


def check_sizes(path: Path, card: ModelCard, registry: Registry) -> None:
    """Refuse a card whose components imply more (or fewer) values than their weights files
    hold, before anything is built (see the module docstring)."""
    path = Path(path)
    for kind in COMPONENT_KINDS:
        comp = card.components[kind]
        label = f"{kind.replace('_', ' ')} {comp.name!r}"
        factory = registry.load(kind, comp.name)
        file = component_file(path, card, kind)
        if file is None:
            try:
                declared = declared_parameter_count(factory, comp.params)
            except TypeError as exc:
                raise PluginError(
                    f"cannot build {label} with parameters {comp.params}: {exc}"
                ) from exc
            if declared:
                raise CheckpointError(
                    f"{path / CARD_FILE}: the card implies {declared:,} parameters for the "
                    f"{label} but names no weights file (components.{kind}.file is null); the "
                    "checkpoint is incomplete: re-save it"
                )
            continue
        held = file_parameter_count(file)
        implied = implied_parameter_count(factory, comp.params, label=label)
        if implied is not None and implied != held:
            raise CheckpointError(
                f"weights of {label} in {path} do not fit its parameters: the card implies "
                f"{implied:,} parameters but {comp.file} holds {held:,}; the card and the weights "
                "disagree (fix model.json or re-save the checkpoint)"
            )


__all__ = ["check_sizes", "file_parameter_count", "implied_parameter_count"]
