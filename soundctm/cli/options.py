"""Options shared by several commands, defined once so their names and help texts cannot drift.

Each is an ``Annotated`` type for a command's signature; a value of ``None`` means "not given"
(the settings layer then takes the environment, the TOML file or the default, see
:mod:`soundctm.config`). Options whose help names the command (``--config``) or a default that
differs between commands (``--out``, ``--model``) are made by small functions. No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _opt(*names: str, text: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, show_default=False, **kwargs)


def model_option(text: str = "Checkpoint folder (default: the packaged default model).") -> Any:
    """``--model/-m DIR`` with a command-specific help text."""
    return Annotated[Path | None, _opt("--model", "-m", text=text)]


def out_option(default: str) -> Any:
    """``--out/-o DIR``; ``default`` is shown in the help."""
    return Annotated[Path | None, _opt("--out", "-o", text=f"Output folder (default: {default}).")]


def config_option(command: str) -> Any:
    """``--config FILE`` naming the TOML table this command reads."""
    return Annotated[
        Path | None,
        _opt("--config", text=f"TOML file whose \\[{command}] table sets defaults."),
    ]


Device = Annotated[
    str | None,
    _opt(
        "--device",
        text="torch device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps "
        "(default: auto).",
    ),
]
Steps = Annotated[
    int | None, _opt("--steps", text="Sampling steps (default: the model's, 1 for a CTM student).")
]
Gamma = Annotated[
    float | None,
    _opt(
        "--gamma",
        text="CTM gamma in [0, 1]: 0 keeps content across step counts, 1 is CM multistep.",
    ),
]
Nu = Annotated[
    float | None,
    _opt("--nu", text="nu: extra classifier-free guidance on the student's jumps (1 = off)."),
]
Omega = Annotated[
    float | None,
    _opt(
        "--omega",
        text="omega: guidance strength the student was distilled for (teacher: the CFG scale).",
    ),
]
Solver = Annotated[
    str | None,
    _opt("--solver", text="Sampler: gamma (students), heun, euler, dpmpp-2m (teachers)."),
]
Seed = Annotated[
    int | None,
    _opt("--seed", text="Seed of the first sample; sample i uses seed + i (default: random)."),
]
Seconds = Annotated[
    float | None, _opt("--seconds", text="Clip length in seconds (default: the model's).")
]
BatchSize = Annotated[
    int | None, _opt("--batch-size", text="Samples generated at once (default: 8).")
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the newest state in --out.")]
