"""Typed settings for the CLI commands (pydantic-settings).

Precedence, highest first: command-line flag > ``SOUNDCTM_<COMMAND>_<FIELD>`` environment
variable > the ``[<command>]`` table of the TOML file given with ``--config`` (or
``SOUNDCTM_CONFIG``) > the default. Library functions take plain arguments; settings are
resolved in the CLI only. This module must not import torch.
"""

from __future__ import annotations

import contextvars
import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from soundctm.engine.specs import MAX_SEED, MAX_STEPS, MAX_STEPS_WHY, ComponentSpec
from soundctm.errors import InvalidArgumentError

CONFIG_ENV = "SOUNDCTM_CONFIG"
_toml_section: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "soundctm_toml_section", default=None
)


class _TomlSection(PydanticBaseSettingsSource):
    """The ``[command]`` table of the current TOML config file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_toml_section.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_section.get() or {})


class CommandSettings(BaseSettings):
    """Base class: subclasses set ``command`` and an env prefix ``SOUNDCTM_<COMMAND>_``."""

    command: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSection(settings_cls)


# Numbers that settings share; NaN and infinity are refused ("must be a finite number").
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Gamma = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
SamplingSteps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
#: The dtype the backbone computes in (``Pipeline.load(dtype=)``); half precision is for GPUs.
Dtype = Literal["float32", "bfloat16", "float16"]
#: Output levels (soundctm.engine.levels.MODES) and audio file formats (audio_io.FORMATS).
Normalize = Literal["peak", "loudness", "none"]
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]


class SampleSettings(CommandSettings):
    """Settings of ``soundctm sample``."""

    command: ClassVar[str] = "sample"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_SAMPLE_", extra="forbid")

    model: Path | None = None
    steps: SamplingSteps | None = None
    gamma: Gamma | None = None
    nu: NonNegative | None = None
    omega: NonNegative | None = None
    solver: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_samples: int = Field(default=1, ge=1)
    seconds: Positive | None = None
    out: Path = Path("outputs")
    batch_size: int = Field(default=8, ge=1)
    device: str = "auto"
    dtype: Dtype = "float32"
    normalize: Normalize = "peak"
    format: AudioFormat = "wav"
    negative_prompt: str | None = None


class RefineSettings(CommandSettings):
    """Settings of ``soundctm refine`` (``normalize``, ``format`` and ``negative_prompt``:
    ``None`` takes the input's, from its sidecar and suffix)."""

    command: ClassVar[str] = "refine"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_REFINE_", extra="forbid")

    steps: SamplingSteps = 16
    gamma: Gamma = 0.0
    model: Path | None = None
    out: Path | None = None
    device: str = "auto"
    dtype: Dtype = "float32"
    normalize: Normalize | None = None
    format: AudioFormat | None = None
    negative_prompt: str | None = None


class VarySettings(SampleSettings):
    """Settings of ``soundctm vary``: those of ``sample`` plus ``strength`` (``None``: 0.5, or
    1 with a mask)."""

    command: ClassVar[str] = "vary"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_VARY_", extra="forbid")

    strength: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None


class StudioSettings(CommandSettings):
    """Settings of ``soundctm studio``."""

    command: ClassVar[str] = "studio"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_STUDIO_", extra="forbid")

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    out: Path = Path("outputs")
    device: str = "auto"
    dtype: Dtype = "float32"
    max_prompt_chars: int = Field(default=500, ge=1)
    max_takes: int = Field(default=16, ge=1)
    max_steps: SamplingSteps = 64
    max_upload_mb: Positive = 20.0
    max_queued: int = Field(default=8, ge=1)


def read_toml_section(path: Path | None, command: str) -> dict[str, Any]:
    """The ``[command]`` table of a TOML file (empty if there is no file or no such table)."""
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        path = Path(env) if env else None
    if path is None:
        return {}
    if not path.is_file():
        raise InvalidArgumentError(f"config file {str(path)!r} does not exist; fix --config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.get(command, {})
    if not isinstance(section, dict):
        raise InvalidArgumentError(f"[{command}] in {path} must be a table")
    return {k.replace("-", "_"): v for k, v in section.items()}


def flag_name(field: str) -> str:
    """``num_samples`` -> ``--num-samples``."""
    return "--" + field.replace("_", "-")


def error_text(err: ErrorDetails) -> str:
    """The message of one pydantic error without pydantic's ``Value error, `` prefix."""
    return str(err["msg"]).removeprefix("Value error, ")


S = TypeVar("S", bound=CommandSettings)


def load_settings(cls: type[S], config: Path | None = None, **flags: Any) -> S:
    """Resolve settings: flags (``None`` = not given) > env > TOML ``[command]`` > defaults."""
    given = {k: v for k, v in flags.items() if v is not None}
    token = _toml_section.set(read_toml_section(config, cls.command))
    try:
        return cls(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a check across several settings names them itself
            raise InvalidArgumentError(error_text(err)) from exc
        field = str(err["loc"][0])
        value = err.get("input")
        origin = "" if field in given else " (from the environment or the config file)"
        if err["type"] == "finite_number":
            raise InvalidArgumentError(
                f"{flag_name(field)} must be a finite number, got {value!r}{origin}"
            ) from exc
        if err["type"] == "less_than_equal" and field in {"steps", "compare_steps"}:
            raise InvalidArgumentError(
                f"{flag_name(field)} must be at most {MAX_STEPS}, got {value!r}{origin}: "
                f"{MAX_STEPS_WHY}"
            ) from exc
        if err["type"] == "extra_forbidden":
            raise InvalidArgumentError(
                f"unknown setting {field!r} for {cls.command} (from the config file or "
                f"environment); check its spelling"
            ) from exc
        raise InvalidArgumentError(
            f"invalid {flag_name(field)} {value!r}{origin}: {err['msg'].lower()}"
        ) from exc
    finally:
        _toml_section.reset(token)


#: The one component-spec type of settings and checkpoint cards (``{name, params}``).
ComponentSetting = ComponentSpec


# ---------------------------------------------------------------------------- training runs
# One pydantic model per run (teacher, distill) on a shared base: the library's training functions
# take these models, and the CLI settings below extend them with the sources (flags, environment,
# TOML). Each parameter is declared here once; pydantic does all the validation.

Steps = Annotated[int, Field(ge=1)]


class TrainingConfig(BaseModel):
    """What every training run has (method.md §2 for the EDM noise levels ``p_mean``/``p_std``).

    Constructed directly (library use), an invalid value raises
    :class:`~soundctm.errors.InvalidArgumentError` with one line naming the parameter; the CLI
    settings classes keep pydantic's error so that ``load_settings`` can name the flag.
    """

    model_config = ConfigDict(extra="forbid")
    #: Settings that must not change when a run is resumed (its data order and noise depend on
    #: them, or the saved weights would not fit).
    resume_keys: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "grad_accum",
        "seed",
        "freeze",
        "lora_rank",
        "lora_alpha",
        "lora_targets",
    )

    out: Path = Path("runs/teacher")
    dataset: ComponentSpec = ComponentSpec(name="synthcaps", params={"split": "train"})
    steps: Steps = 1000
    batch_size: Steps = 16
    lr: Positive = 2e-4
    ema_decay: float = Field(default=0.999, ge=0, le=1)
    caption_dropout: float = Field(default=0.1, ge=0, lt=1)
    p_mean: float = -1.2
    p_std: Positive = 1.2
    grad_clip: Positive = 1.0
    grad_accum: Steps = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: Steps = 500
    log_every: Steps = 10
    keep_checkpoints: int = Field(default=3, ge=0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    num_workers: int = Field(default=0, ge=0)
    omega: NonNegative = 3.0
    preview_prompts: list[str] = Field(default_factory=list)
    tracker: str | None = None
    #: Start from this model's weights (a checkpoint folder, an imported model or ``hf:...``),
    #: with a fresh optimizer and schedule; a resumable state in ``out`` wins over it.
    init_from: str | None = None
    #: ``fnmatch`` patterns of parameter names (``backbone.blocks.0.*``) kept frozen.
    freeze: list[str] = Field(default_factory=list)
    warmup_steps: int = Field(default=0, ge=0)
    #: LoRA (method.md §10): adapters of this rank on the backbone's attention and feed-forward
    #: linears (0: off, a full fine-tune); ``lora_alpha`` (default: the rank) scales them;
    #: ``lora_targets`` (``fnmatch`` on module names) replaces the backbone's own choice.
    lora_rank: int = Field(default=0, ge=0)
    lora_alpha: Positive | None = None
    lora_targets: list[str] | None = None

    @model_validator(mode="after")
    def _lora(self) -> TrainingConfig:
        if self.lora_rank and self.init_from is None:
            raise ValueError("lora_rank needs init_from (the model whose backbone it adapts)")
        if not self.lora_rank and (self.lora_alpha is not None or self.lora_targets):
            raise ValueError("lora_alpha and lora_targets need lora_rank >= 1")
        return self

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if isinstance(self, BaseSettings):
                raise
            err = exc.errors()[0]
            if not err["loc"]:
                raise InvalidArgumentError(error_text(err)) from exc
            field = ".".join(str(p) for p in err["loc"])
            raise InvalidArgumentError(
                f"invalid {field} {err.get('input')!r}: {error_text(err).lower()}"
            ) from exc

    def to_json(self) -> dict[str, Any]:
        """The run's settings as JSON values (``config.json`` and the ``spec`` of state.json)."""
        return self.model_dump(mode="json")


class TeacherConfig(TrainingConfig):
    """An EDM teacher training run (method.md §2)."""

    resume_keys: ClassVar[tuple[str, ...]] = (
        "backbone",
        "text_encoder",
        "autoencoder",
        "sigma_data",
        "seconds",
        *TrainingConfig.resume_keys,
    )

    backbone: ComponentSpec = ComponentSpec(name="dit", params={"preset": "small"})
    text_encoder: ComponentSpec = ComponentSpec(name="minilm")
    autoencoder: ComponentSpec = ComponentSpec(name="mel")
    valid_dataset: ComponentSpec | None = None
    weight_decay: NonNegative = 0.0
    #: The components ``init_from`` provides (default: all three).
    init_components: list[str] | None = None
    decay_steps: int = Field(default=0, ge=0)
    sigma_data: Positive = 0.5
    seconds: Positive = 3.0
    mix_prob: float = Field(default=0.0, ge=0, le=1)
    latent_cache: bool = False
    heldout_clips: Steps = 32
    preview_steps: Steps = 18

    @field_validator("init_components", mode="before")
    @classmethod
    def _split_components(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("init_components")
    @classmethod
    def _known_components(cls, value: list[str] | None) -> list[str] | None:
        kinds = ("backbone", "text_encoder", "autoencoder")
        bad = [k for k in value or [] if k not in kinds]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a component; choose from {', '.join(kinds)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TeacherConfig:
        if self.init_components is not None and self.init_from is None:
            raise ValueError("init_components needs init_from (the model to take them from)")
        everything = {"backbone", "text_encoder", "autoencoder"}
        if (
            self.lora_rank
            and self.init_components is not None
            and (set(self.init_components) != everything)
        ):
            raise ValueError(
                "a LoRA run adapts the whole model of init_from: leave init_components out"
            )
        if self.decay_steps > self.steps:
            raise ValueError(
                "decay_steps must be in [0, steps] (the last decay_steps steps anneal lr to 0)"
            )
        if self.latent_cache and self.mix_prob > 0:
            raise ValueError("latent_cache and mix_prob cannot be combined (mixing works on audio)")
        return self


class DistillConfig(TrainingConfig):
    """A SoundCTM distillation run (method.md §3-5); defaults as published for the DiT."""

    resume_keys: ClassVar[tuple[str, ...]] = ("teacher", "grid_n", *TrainingConfig.resume_keys)

    out: Path = Path("runs/student")
    teacher: Path | None = None
    text_encoder: ComponentSpec | None = None  # must match the teacher's if given
    autoencoder: ComponentSpec | None = None  # must match the teacher's if given
    lr: Positive = 8e-5
    grad_clip: Positive = 1000.0
    omega: NonNegative = 5.0
    grid_n: int = Field(default=40, ge=2)
    k_distribution: Literal["linear", "uniform"] = "linear"
    w_min: NonNegative = 1.0
    w_max: NonNegative = 10.0
    distance: Literal["feature", "l2", "l1", "pseudo-huber"] = "feature"
    compare_at: Literal["s", "sigma_min"] = "s"
    lambda_dsm: NonNegative = 0.2
    adaptive_max: Positive = 1000.0
    keep_teacher: bool = False
    preview_steps: list[int] = Field(default_factory=lambda: [1, 4])
    trajectory_cache: bool = False
    cache_size: Steps = 512
    cache_batch: Steps = 16

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.w_min > self.w_max:
            raise ValueError(f"need w_min <= w_max, got {self.w_min} > {self.w_max}")
        return self


class TrainSettings(CommandSettings, TeacherConfig):
    """Settings of ``soundctm train`` (TOML table ``[train]``, env ``SOUNDCTM_TRAIN_*``): the
    fields of :class:`TeacherConfig`."""

    command: ClassVar[str] = "train"
    model_config = SettingsConfigDict(
        env_prefix="SOUNDCTM_TRAIN_", env_nested_delimiter="__", extra="forbid"
    )


class DistillSettings(CommandSettings, DistillConfig):
    """Settings of ``soundctm distill`` (TOML table ``[distill]``, env ``SOUNDCTM_DISTILL_*``):
    the fields of :class:`DistillConfig`."""

    command: ClassVar[str] = "distill"
    model_config = SettingsConfigDict(
        env_prefix="SOUNDCTM_DISTILL_", env_nested_delimiter="__", extra="forbid"
    )


def _comma_list(value: Any) -> Any:
    """``"1,2,4"`` -> ``["1", "2", "4"]`` (pydantic then converts the items); lists pass."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if any(not p for p in parts):
            raise ValueError("give a comma-separated list without empty entries, e.g. 1,2,4")
        return parts
    return value


class EvalSettings(CommandSettings):
    """Settings of ``soundctm eval folder | model | compare`` (TOML table ``[eval]``, env
    ``SOUNDCTM_EVAL_*``); each sub-command reads the fields it has options for."""

    command: ClassVar[str] = "eval"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_EVAL_", extra="forbid")

    reference: Path | None = None
    captions: Path | None = None
    model: Path | None = None
    compare: Path | None = None
    prompts: str = "synthcaps"
    num: int | None = Field(default=None, ge=1)
    steps: list[int] | None = None
    compare_steps: SamplingSteps | None = None
    gamma: list[float] | None = None
    nu: NonNegative | None = None
    omega: NonNegative | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    seconds: Positive | None = None
    preset: str | None = None
    metrics: list[str] | None = None
    embedder: str = "mel-stats"
    classifier: str | None = None
    fad_inf: bool = False
    content: bool = True
    sample_rate: int | None = Field(default=None, ge=1000)
    out: Path = Path("outputs/eval")
    cache_dir: Path | None = None
    cache: bool = True
    batch_size: int = Field(default=8, ge=1)
    device: str = "auto"

    @field_validator("steps", "gamma", "metrics", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_list(value)

    @field_validator("steps")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(s < 1 for s in value)):
            raise ValueError("step counts must be whole numbers >= 1")
        if value is not None and max(value) > MAX_STEPS:
            raise ValueError(f"step counts must be at most {MAX_STEPS}: {MAX_STEPS_WHY}")
        return value

    @field_validator("gamma")
    @classmethod
    def _unit(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not math.isfinite(g) for g in value):
            raise ValueError("every gamma must be a finite number")
        if value is not None and any(not 0.0 <= g <= 1.0 for g in value):
            raise ValueError("every gamma must be between 0 and 1")
        return value
