"""Plain, torch-free value types shared by checkpoints (``model.json``) and settings (TOML).

:class:`ComponentSpec` names one component: its registered plugin name and the parameters its
factory takes (``{name, params}`` in TOML and JSON); a checkpoint card also records the weights
file of the component and its SHA-256. :data:`MAX_SEED` is the largest seed anywhere in
soundctm (a seed seeds a 64-bit CPU generator and must fit a signed 64-bit integer);
:data:`MAX_STEPS` the most sampling steps (:data:`MAX_STEPS_WHY` says why).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1
MAX_STEPS = 1000
MAX_STEPS_WHY = (
    "a CTM student is made for 1 to 16 steps and a teacher's ODE is converged long before 1000; "
    "more steps only cost time"
)


class ComponentSpec(BaseModel):
    """One component: the registered plugin name and the parameters its factory takes.

    Settings give ``name`` and ``params``; a checkpoint card adds ``file`` (the component's
    safetensors file, ``None`` when it stores no weights) and its ``sha256``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    file: str | None = None
    sha256: str | None = None


__all__ = ["MAX_SEED", "MAX_STEPS", "MAX_STEPS_WHY", "ComponentSpec"]
