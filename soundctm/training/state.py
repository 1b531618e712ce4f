"""Resumable training state without pickle: safetensors for tensors, JSON for the rest.

A state directory holds ``state.safetensors`` (the raw model, the EMA model and every tensor of
the optimizer state, under the prefixes ``model.``, ``ema.`` and ``optim.``), ``state.json``
(step, optimizer hyper-parameters, non-tensor optimizer values, the run's spec) and
``SHA256SUMS`` (the SHA-256 of both, in ``sha256sum`` format, so ``sha256sum -c`` checks them
too). It is written atomically, and verified when loaded: a flipped bit or a truncated file is
refused, naming the file and the newest earlier state that is intact. States written before
``SHA256SUMS`` existed load unverified. Randomness needs no saved state: it is a function of
(seed, step, rank), see :mod:`soundctm.training.rng`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from soundctm.engine.checkpoint import sha256_file
from soundctm.engine.files import write_dir_atomic
from soundctm.errors import CheckpointError

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
SUMS_FILE = "SHA256SUMS"
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
        sums = "".join(f"{sha256_file(tmp / n)}  {n}\n" for n in (STATE_JSON, STATE_TENSORS))
        (tmp / SUMS_FILE).write_text(sums, encoding="utf-8")

    write_dir_atomic(Path(path), fill)
    return Path(path)


def state_problem(path: Path) -> str | None:
    """What is wrong with state folder ``path`` by its ``SHA256SUMS`` (``None``: intact, or a
    state from before checksums, which cannot be verified)."""
    path = Path(path)
    sums = path / SUMS_FILE
    if not sums.is_file():
        return None
    listed: dict[str, str] = {}
    try:
        for line in sums.read_text(encoding="utf-8").splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) != 64 or not name:
                return f"{SUMS_FILE} is damaged (a line is not 'SHA256  NAME')"
            listed[name] = digest
    except (OSError, UnicodeDecodeError) as exc:
        return f"{SUMS_FILE} is unreadable ({exc})"
    for name in (STATE_JSON, STATE_TENSORS):
        if name not in listed:
            return f"{SUMS_FILE} is damaged (it does not list {name})"
    for name, digest in listed.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        try:
            actual = sha256_file(file)
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or exc})"
        if actual != digest:
            return f"{name} is corrupt or truncated (its SHA-256 differs from {SUMS_FILE})"
    return None


def _step_of(path: Path) -> int:
    tail = path.name.split("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def previous_good_state(path: Path) -> Path | None:
    """The newest state beside ``path`` (in the same ``state/`` folder) with a smaller step that
    passes :func:`state_problem`, if any."""
    path = Path(path)
    step = _step_of(path)
    earlier = sorted(
        (p for p in path.parent.glob("step-*") if p.is_dir() and -1 < _step_of(p) < step),
        key=_step_of,
        reverse=True,
    )
    for candidate in earlier:
        if (candidate / STATE_JSON).is_file() and state_problem(candidate) is None:
            return candidate
    return None


def _damaged(path: Path, problem: str) -> CheckpointError:
    good = previous_good_state(path)
    if good is not None:
        hint = f"resume from the previous good state with --resume-from {good}"
    else:
        hint = f"no earlier good state is left in {path.parent}; start a new run (a new --out)"
    return CheckpointError(f"training state {path} is damaged: {problem}; {hint}")


def load_state(
    path: Path,
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """Read and verify a state directory: (meta, model state, EMA state, optimizer state dict).

    A damaged state (:func:`state_problem`, or a file that does not parse) is a
    :class:`CheckpointError` naming the file and the previous good state to resume from."""
    path = Path(path)
    problem = state_problem(path)
    if problem is not None:
        raise _damaged(path, problem)
    try:
        meta = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(path / STATE_TENSORS))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{path} is not a training state (missing {Path(exc.filename).name}); pass --resume "
            "with a run folder or one of its state/step-* folders"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
        raise _damaged(path, f"it does not load ({' '.join(str(exc).split())})") from exc
    if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"training state {path} has version {version!r}; "
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
    steps = sorted((p for p in root.glob("step-*") if (p / STATE_JSON).is_file()), key=_step_of)
    return steps[-1] if steps else None
