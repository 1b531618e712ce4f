"""Sampling plans: every sampling parameter resolved against a model card and checked once.

The user-facing arguments keep the paper's symbols (docs/method.md §5): ``steps``, ``gamma``,
``nu``, ``omega``, ``seconds`` and ``solver``. They are the keywords of ``generate``, the CLI's
flags and the keys of a sample's JSON sidecar.

**The two guidance knobs.** What ``nu`` and ``omega`` do depends on the model, so a
:class:`SamplingPlan` also names the two roles the engine uses:

- ``guidance_scale``: the classifier-free-guidance mixing weight applied to the model's
  *outputs*, ``out_uncond + scale (out_cond - out_uncond)``. For a CTM student it is ``nu``
  (on its jumps G); for a teacher it is ``omega``, the CFG scale ``w`` on its denoiser D.
- ``guidance_input``: the ``omega`` fed to a student network as an *input*, the guidance
  strength ``w`` it was distilled to imitate; ``None`` for a teacher, whose network has no such
  input.

A :class:`SampleParams` is a plan's arguments plus a prompt and a seed: all that regenerates one
sample (what the sidecar stores). It carries no model, so the guidance roles are derived again
when a model resolves it (:meth:`SampleParams.arguments`).

Errors name the parameters (``steps``, ``gamma``, ...), never command-line flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from soundctm.engine.components import solver_options, solver_requires
from soundctm.engine.ctm import STUDENT
from soundctm.engine.specs import MAX_STEPS, MAX_STEPS_WHY
from soundctm.errors import InvalidArgumentError

if TYPE_CHECKING:
    from soundctm.engine.checkpoint import ModelCard

#: The names of the sampling arguments, in the order of the sidecar.
ARGUMENTS = ("steps", "gamma", "nu", "omega", "seconds", "solver", "negative_prompt")

#: The CTM solver, the default of a student and refused for a teacher.
GAMMA_SOLVER = "gamma"
#: The default solver of a teacher whose card names the CTM solver.
TEACHER_SOLVER = "heun"


class SamplingArguments(TypedDict, total=False):
    """The keyword arguments of ``resolve`` / ``generate``; ``None`` takes the card's default."""

    steps: int | None
    gamma: float | None
    nu: float | None
    omega: float | None
    seconds: float | None
    solver: str | None
    negative_prompt: str | None


def _arguments(obj: object) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in ARGUMENTS}


@dataclass(frozen=True)
class SamplingPlan:
    """Resolved and validated sampling parameters for one model (docs/method.md §5).

    ``steps`` solver steps on the solver's grid; ``gamma`` the CTM gamma (0 deterministic,
    1 consistency-model multistep); ``nu`` the student's guidance on its jumps; ``omega`` the
    student's guidance input ``w`` or the teacher's CFG scale; ``seconds`` the clip length;
    ``solver`` a registered solver name; ``student`` whether the model is a CTM student;
    ``negative_prompt`` the text of the unconditional branch of guidance (``None``: the empty
    prompt ``""``; it matters only where guidance runs, ``needs_uncond``).
    """

    steps: int
    gamma: float
    nu: float
    omega: float
    seconds: float
    solver: str
    student: bool
    negative_prompt: str | None = None

    @property
    def guidance_scale(self) -> float:
        """The CFG mixing weight on model outputs: ``nu`` for a student, ``omega`` for a
        teacher (docs/method.md §5)."""
        return self.nu if self.student else self.omega

    @property
    def guidance_input(self) -> float | None:
        """The ``omega`` fed to a student network; ``None`` for a teacher."""
        return self.omega if self.student else None

    @property
    def needs_uncond(self) -> bool:
        """Whether guidance needs the unconditional half (``guidance_scale != 1``)."""
        return self.guidance_scale != 1.0

    @property
    def uncond_prompt(self) -> str:
        """The prompt of the unconditional branch: the negative prompt, or ``""``."""
        return self.negative_prompt or ""

    def arguments(self) -> dict[str, Any]:
        """The sampling arguments as keyword arguments of ``resolve`` / ``generate``."""
        return _arguments(self)

    def sample(self, prompt: str, seed: int) -> SampleParams:
        """The parameters of the sample of ``prompt`` drawn from ``seed`` under this plan."""
        return SampleParams(prompt=prompt, seed=seed, **self.arguments())


@dataclass(frozen=True)
class SampleParams:
    """Everything needed to regenerate one sample (written to its sidecar): a plan's
    arguments, the prompt and the seed of the sample's initial noise."""

    prompt: str
    seed: int
    steps: int
    gamma: float
    nu: float
    omega: float
    seconds: float
    solver: str
    negative_prompt: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The sampling arguments (to resolve them again with a model)."""
        return _arguments(self)


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value}")
    return value


def resolve_plan(
    card: ModelCard,
    load_solver: Callable[[str], Callable[..., Any]],
    *,
    steps: int | None = None,
    gamma: float | None = None,
    nu: float | None = None,
    omega: float | None = None,
    seconds: float | None = None,
    solver: str | None = None,
    negative_prompt: str | None = None,
) -> SamplingPlan:
    """Fill defaults from ``card`` and validate every sampling parameter.

    ``load_solver(name)`` returns the solver function (the registry's); it is asked what the
    solver needs (``requires``) and which options it takes (``gamma``).
    """
    d = card.defaults
    student = card.kind == STUDENT
    if not solver:
        solver = d.solver if student or d.solver != GAMMA_SOLVER else TEACHER_SOLVER
    steps = d.steps if steps is None else steps
    gamma = d.gamma if gamma is None else _finite("gamma", gamma)
    nu = d.nu if nu is None else _finite("nu", nu)
    omega = d.omega if omega is None else _finite("omega", omega)
    seconds = card.seconds if seconds is None else _finite("seconds", seconds)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise InvalidArgumentError(f"steps must be a whole number >= 1, got {steps}")
    if steps > MAX_STEPS:
        raise InvalidArgumentError(
            f"steps must be at most {MAX_STEPS}, got {steps}: {MAX_STEPS_WHY}"
        )
    if not 0.0 <= gamma <= 1.0:
        raise InvalidArgumentError(
            f"gamma must be between 0 and 1, got {gamma} "
            "(0 = deterministic, keeps content across step counts; 1 = CM multistep)"
        )
    if nu < 0:
        raise InvalidArgumentError(f"nu must be >= 0, got {nu} (1 = no extra guidance)")
    if omega < 0:
        raise InvalidArgumentError(f"omega must be >= 0, got {omega}")
    if not 0 < seconds <= card.max_seconds:
        raise InvalidArgumentError(
            f"seconds must be in (0, {card.max_seconds:g}] for this model, got {seconds:g}"
        )
    fn = load_solver(solver)
    if solver_requires(fn) == "jump" and not student:
        raise InvalidArgumentError(
            f"solver {solver!r} needs a CTM student, but this model is a teacher; "
            "choose the solver heun, euler or dpmpp-2m"
        )
    if gamma != 0.0 and "gamma" not in solver_options(fn):
        raise InvalidArgumentError(
            f"gamma applies to the gamma solver only, not {solver!r}; leave gamma at 0"
        )
    if not student and nu != 1.0:
        raise InvalidArgumentError(
            "nu applies to CTM students; for a teacher, omega is the CFG scale"
        )
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InvalidArgumentError(
            f"negative_prompt must be text, got {type(negative_prompt).__name__}"
        )
    return SamplingPlan(
        steps=int(steps),
        gamma=gamma,
        nu=nu,
        omega=omega,
        seconds=float(seconds),
        solver=solver,
        student=student,
        negative_prompt=negative_prompt.strip() or None if negative_prompt else None,
    )


__all__ = [
    "ARGUMENTS",
    "SampleParams",
    "SamplingArguments",
    "SamplingPlan",
    "resolve_plan",
]
