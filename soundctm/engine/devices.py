"""Choosing a torch device: ``auto`` (CUDA, then Apple MPS, then CPU) or a named one, checked.

An unavailable device is a user error naming the devices this machine has, never a torch
RuntimeError deep inside loading.
"""

from __future__ import annotations

import torch

from soundctm.errors import InvalidArgumentError

AUTO = "auto"


def available_devices() -> list[str]:
    """The device names usable here, best first (``cuda:0``.., ``mps``, ``cpu``)."""
    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if _cuda() else []
    if _mps():
        names.append("mps")
    return [*names, "cpu"]


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """The torch device for ``name``: ``auto``/None picks CUDA, then MPS, then CPU; anything else
    must parse as a torch device and exist on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or AUTO).strip().lower()
    if name == AUTO:
        return torch.device("cuda" if _cuda() else "mps" if _mps() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvalidArgumentError(
            f"device {name!r} is not a torch device name; use auto or one of: "
            f"{', '.join(available_devices())}"
        ) from None
    if device.type == "cpu":
        return device
    usable = (
        (device.type == "cuda" and _cuda() and (device.index or 0) < torch.cuda.device_count())
        or (device.type == "mps" and _mps())
    )
    if not usable:
        raise InvalidArgumentError(
            f"device {name!r} is not available on this machine; available: "
            f"{', '.join(available_devices())} (or auto)"
        )
    return device


def _cuda() -> bool:
    return bool(torch.cuda.is_available())


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
