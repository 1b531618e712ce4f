"""Resumable training state without pickle: safetensors for tensors, JSON for the rest.

A state directory holds ``state.safetensors`` (the raw model, the EMA model and every tensor of
the optimizer state, under the prefixes ``model.``, ``ema.`` and ``optim.``) and ``state.json``
(step, optimizer hyper-parameters, non-tensor optimizer values, the run's spec). It is written
atomically. Randomness needs no saved state: it is a function of (seed, step, rank), see
:mod:`soundctm.training.rng`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from soundctm.engine.files import write_dir_atomic
from soundctm.errors import CheckpointError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STATE_VERSION = 1


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors ``optim.<param>.<key>`` and JSON values."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        per_param.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        per_param.setdefault(int(pid), {}).update(values)
    return {"state": per_param, "param_groups": meta["param_groups"]}


def save_state(
    path: Path,
    *,
    step: int,
    model: dict[str, Tensor],
    ema: dict[str, Tensor],
    optimizer: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    """Write a training state directory atomically."""
    optim_tensors, optim_meta = optimizer_to_flat(optimizer)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.items()}
    tensors |= {f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.items()}
    tensors |= optim_tensors
    meta = {"version": STATE_VERSION, "step": step, "optimizer": optim_meta, **extra}

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1), encoding="utf-8")

    write_dir_atomic(Path(path), fill)
    return Path(path)


def load_state(
    path: Path,
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """Read a state directory: (meta, model state, EMA state, optimizer state dict)."""
    path = Path(path)
    try:
        meta = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(path / STATE_TENSORS))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{path} is not a training state (missing {Path(exc.filename).name}); pass --resume "
            "with a run folder or one of its state/step-* folders"
        ) from exc
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"training state {path} is corrupt ({exc}); resume from an earlier one in state/"
        ) from exc
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"training state {path} has version {meta.get('version')!r}; "
            f"this soundctm reads version {STATE_VERSION}"
        )
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    optim = optimizer_from_flat(tensors, meta["optimizer"])
    return meta, model, ema, optim


def latest_state(run_dir: Path) -> Path | None:
    """The newest complete ``state/step-*`` folder of a run, if any."""
    root = Path(run_dir) / "state"
    if not root.is_dir():
        return None
    steps = sorted(
        (p for p in root.glob("step-*") if (p / STATE_JSON).is_file()),
        key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1,
    )
    return steps[-1] if steps else None
