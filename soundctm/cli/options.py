"""Options shared by several commands, defined once so their names and help texts cannot drift.

Each is an ``Annotated`` type for a command's signature; a value of ``None`` means "not given"
(the settings layer then takes the environment, the TOML file or the default, see
:mod:`soundctm.config`). Options whose help names a command-specific default (``--out``,
``--model``, ``--config``, ``--steps``, ``--lr``) are made by small functions.

Commands that share a whole group of options (``train`` and ``distill``; the ``eval``
sub-commands) declare it with :func:`with_options` and receive the values in ``**flags``. The
:class:`Command` and :class:`Group` classes drop click's ``<bool>``-style value column of on/off
flags from ``--help``. No torch here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

F = TypeVar("F", bound=Callable[..., Any])


def _opt(*names: str, text: str, **kwargs: Any) -> Any:
    return typer.Option(*names, help=text, show_default=False, **kwargs)


def _flag_metavars(params: list[Any]) -> None:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


def reflow(text: str) -> str:
    """Join the lines of each paragraph (rich help keeps a docstring's line breaks)."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


class Command(TyperCommand):
    """A Typer command whose on/off flags show no ``<bool>`` value column in ``--help`` and
    whose docstring paragraphs wrap to the terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _flag_metavars(self.params)
        if self.help:
            self.help = reflow(self.help)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Group(TyperGroup):
    """A Typer command group whose own ``--help`` shows no ``<bool>`` value column."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _flag_metavars(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def with_options(**options: Any) -> Callable[[F], F]:
    """Declare the shared ``options`` (parameter name -> ``Annotated`` type, default ``None``)
    on a command after its own parameters; the command receives them in its ``**flags``.

    Typer reads a command's parameters from :func:`inspect.signature`, which honours
    ``__signature__``; the wrapper only sets that, it calls the command unchanged.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own} & options.keys()
        if taken:
            raise TypeError(f"{fn.__name__} declares {sorted(taken)} itself and as shared")
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
            for name, kind in options.items()
        ]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        command.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
        return command  # type: ignore[return-value]

    return decorate


# --- where things are ---------------------------------------------------------------------------


def model_option(text: str = "Checkpoint folder (default: the packaged default model).") -> Any:
    """``--model/-m DIR`` with a command-specific help text."""
    return Annotated[Path | None, _opt("--model", "-m", text=text)]


def out_option(default: str, what: str = "Output folder") -> Any:
    """``--out/-o DIR``; ``default`` is shown in the help."""
    return Annotated[Path | None, _opt("--out", "-o", text=f"{what} (default: {default}).")]


def config_option(command: str, role: str = "sets defaults") -> Any:
    """``--config/-c FILE`` naming the TOML table this command reads."""
    return Annotated[
        Path | None, _opt("--config", "-c", text=f"TOML file whose \\[{command}] table {role}.")
    ]


Device = Annotated[
    str | None,
    _opt(
        "--device",
        text="torch device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps "
        "(default: auto).",
    ),
]

DtypeOption = Annotated[
    str | None,
    _opt(
        "--dtype",
        text="Backbone precision: float32, or bfloat16 / float16 (GPUs: half the memory of a "
        "large model) (default: float32).",
    ),
]

# --- sampling -----------------------------------------------------------------------------------


def steps_option(default: str = "the model's, 1 for a CTM student") -> Any:
    """``--steps N``: sampling steps, with the command's default in the help."""
    return Annotated[int | None, _opt("--steps", text=f"Sampling steps (default: {default}).")]


def gamma_option(default: str = "the model's") -> Any:
    """``--gamma G``: the CTM gamma (docs/method.md §5)."""
    text = f"CTM gamma in [0, 1]: 0 keeps content, 1 is CM multistep (default: {default})."
    return Annotated[float | None, _opt("--gamma", text=text)]


Steps = steps_option()
Gamma = gamma_option()
Nu = Annotated[
    float | None,
    _opt("--nu", text="nu: extra classifier-free guidance on the student's jumps (1 = off)."),
]
Omega = Annotated[
    float | None,
    _opt("--omega", text="omega: the student's guidance input (teacher: the CFG scale)."),
]
Solver = Annotated[
    str | None, _opt("--solver", text="Sampler: gamma (students), heun, euler, dpmpp-2m.")
]
Seed = Annotated[
    int | None, _opt("--seed", text="Seed of the first sample; sample i uses seed + i.")
]
Seconds = Annotated[float | None, _opt("--seconds", text="Clip length (default: the model's).")]
BatchSize = Annotated[int | None, _opt("--batch-size", text="Samples generated at once (8).")]


def normalize_option(default: str = "peak") -> Any:
    """``--normalize peak|loudness|none``: the output level (docs/method.md §9)."""
    text = (
        "Output level: peak (nothing clipped: down to -1 dBFS when louder, quiet clips up to "
        "-20 dBFS), loudness (-23 LUFS, ITU-R BS.1770), none (the model's output as it is) "
        f"(default: {default})."
    )
    return Annotated[str | None, _opt("--normalize", text=text)]


def format_option(default: str = "wav") -> Any:
    """``--format wav|flac|ogg|mp3``: the audio file format written."""
    text = f"Audio file format: wav, flac (16-bit), ogg (Vorbis), mp3 (default: {default})."
    return Annotated[str | None, _opt("--format", text=text)]


def negative_prompt_option(default: str = 'none: the empty prompt ""') -> Any:
    """``--negative-prompt TEXT``: the unconditional branch of guidance."""
    text = (
        "Text that replaces the empty prompt in the unconditional branch of guidance (a "
        f"teacher's CFG, a student's nu != 1); steers away from it (default: {default})."
    )
    return Annotated[str | None, _opt("--negative-prompt", text=text)]


Normalize = normalize_option()
Format = format_option()
NegativePrompt = negative_prompt_option()
NumSamples = Annotated[
    int | None, _opt("--num-samples", "-n", text="Samples per prompt (default: 1).")
]
PromptsFile = Annotated[
    Path | None,
    _opt("--prompts-file", "-f", text="A text file with one prompt per line (- : standard input)."),
]

# --- training (train and distill) -------------------------------------------------------------


def lr_option(default: str) -> Any:
    """``--lr``: the learning rate, with the run's default optimiser setting in the help."""
    return Annotated[float | None, _opt("--lr", text=f"Learning rate (default: {default}).")]


#: The options ``train`` and ``distill`` share, for :func:`with_options`.
TRAINING_OPTIONS: dict[str, Any] = {
    "steps": Annotated[int | None, _opt("--steps", text="Optimizer steps.")],
    "batch_size": Annotated[int | None, _opt("--batch-size", text="Clips per step and process.")],
    "seed": Annotated[int | None, _opt("--seed", text="Run seed.")],
    "save_every": Annotated[int | None, _opt("--save-every", text="Checkpoint every N steps.")],
    "log_every": Annotated[int | None, _opt("--log-every", text="Log metrics every N steps.")],
    "grad_accum": Annotated[int | None, _opt("--grad-accum", text="Gradient accumulation.")],
    "mixed_precision": Annotated[str | None, _opt("--mixed-precision", text="no, bf16 or fp16.")],
    "num_workers": Annotated[int | None, _opt("--num-workers", text="Data loader processes.")],
    "tracker": Annotated[
        str | None, _opt("--tracker", text="Also log to this accelerate tracker (tensorboard).")
    ],
    "init_from": Annotated[
        str | None,
        _opt(
            "--init-from",
            text="Start from this model's weights (checkpoint folder, imported model or "
            "hf:OWNER/REPO) with a fresh optimizer; a state in --out (--resume) wins.",
        ),
    ],
    "freeze": Annotated[
        list[str] | None,
        _opt(
            "--freeze",
            text="Keep the parameters matching this pattern frozen (fnmatch on names such as "
            "'backbone.blocks.0.*'); repeatable.",
            metavar="<pattern>",
        ),
    ],
    "lora_rank": Annotated[
        int | None,
        _opt(
            "--lora-rank",
            text="Train LoRA adapters of this rank on the --init-from model's attention and "
            "feed-forward linears instead of all weights (0: off).",
        ),
    ],
    "lora_alpha": Annotated[
        float | None, _opt("--lora-alpha", text="LoRA scale alpha (default: the rank).")
    ],
    "lora_targets": Annotated[
        list[str] | None,
        _opt(
            "--lora-target",
            text="Adapt the linears whose module name matches this pattern (fnmatch) instead "
            "of the backbone's default layers; repeatable.",
            metavar="<pattern>",
        ),
    ],
    "warmup_steps": Annotated[
        int | None, _opt("--warmup-steps", text="Linear learning-rate warm-up steps.")
    ],
}
Resume = Annotated[bool, typer.Option("--resume", help="Continue the newest state in --out.")]
ResumeFrom = Annotated[Path | None, _opt("--resume-from", text="Continue from this state folder.")]
