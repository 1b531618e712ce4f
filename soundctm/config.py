"""Typed settings for the CLI commands (pydantic-settings).

Precedence, highest first: command-line flag > ``SOUNDCTM_<COMMAND>_<FIELD>`` environment
variable > the ``[<command>]`` table of the TOML file given with ``--config`` (or
``SOUNDCTM_CONFIG``) > the default. Library functions take plain arguments; settings are
resolved in the CLI only. This module must not import torch.
"""

from __future__ import annotations

import contextvars
import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from soundctm.errors import InvalidArgumentError

CONFIG_ENV = "SOUNDCTM_CONFIG"
MAX_SEED = 2**63 - 1
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


class SampleSettings(CommandSettings):
    """Settings of ``soundctm sample``."""

    command: ClassVar[str] = "sample"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_SAMPLE_", extra="forbid")

    model: Path | None = None
    steps: int | None = Field(default=None, ge=1)
    gamma: float | None = Field(default=None, ge=0.0, le=1.0)
    nu: float | None = Field(default=None, ge=0.0)
    omega: float | None = Field(default=None, ge=0.0)
    solver: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_samples: int = Field(default=1, ge=1)
    seconds: float | None = Field(default=None, gt=0.0)
    out: Path = Path("outputs")
    batch_size: int = Field(default=8, ge=1)
    device: str = "cpu"


class RefineSettings(CommandSettings):
    """Settings of ``soundctm refine``."""

    command: ClassVar[str] = "refine"
    model_config = SettingsConfigDict(env_prefix="SOUNDCTM_REFINE_", extra="forbid")

    steps: int = Field(default=16, ge=1)
    gamma: float = Field(default=0.0, ge=0.0, le=1.0)
    model: Path | None = None
    out: Path | None = None
    device: str = "cpu"


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


S = TypeVar("S", bound=CommandSettings)


def load_settings(cls: type[S], config: Path | None = None, **flags: Any) -> S:
    """Resolve settings: flags (``None`` = not given) > env > TOML ``[command]`` > defaults."""
    given = {k: v for k, v in flags.items() if v is not None}
    token = _toml_section.set(read_toml_section(config, cls.command))
    try:
        return cls(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            raise InvalidArgumentError(
                f"unknown setting {field!r} for {cls.command} (from the config file or "
                f"environment); check its spelling"
            ) from exc
        origin = "" if field in given else " (from the environment or the config file)"
        raise InvalidArgumentError(
            f"invalid {flag_name(field)} {value!r}{origin}: {err['msg'].lower()}"
        ) from exc
    finally:
        _toml_section.reset(token)


class ComponentSetting(BaseModel):
    """A component: plugin name and parameters (TOML: ``{name = ..., params = {...}}``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainSettings(CommandSettings):
    """Settings of ``soundctm train`` (TOML table ``[train]``, env ``SOUNDCTM_TRAIN_*``)."""

    command: ClassVar[str] = "train"
    model_config = SettingsConfigDict(
        env_prefix="SOUNDCTM_TRAIN_", env_nested_delimiter="__", extra="forbid"
    )

    out: Path = Path("runs/teacher")
    backbone: ComponentSetting = ComponentSetting(name="dit", params={"preset": "small"})
    text_encoder: ComponentSetting = ComponentSetting(name="minilm")
    autoencoder: ComponentSetting = ComponentSetting(name="mel")
    dataset: ComponentSetting = ComponentSetting(name="synthcaps", params={"split": "train"})
    valid_dataset: ComponentSetting | None = None
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    decay_steps: int = Field(default=0, ge=0)
    ema_decay: float = Field(default=0.999, ge=0, le=1)
    sigma_data: float = Field(default=0.5, gt=0)
    seconds: float = Field(default=3.0, gt=0)
    caption_dropout: float = Field(default=0.1, ge=0, lt=1)
    p_mean: float = -1.2
    p_std: float = Field(default=1.2, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    grad_accum: int = Field(default=1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=10, ge=1)
    keep_checkpoints: int = Field(default=3, ge=0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    num_workers: int = Field(default=0, ge=0)
    mix_prob: float = Field(default=0.0, ge=0, le=1)
    latent_cache: bool = False
    heldout_clips: int = Field(default=32, ge=1)
    preview_prompts: list[str] = Field(default_factory=list)
    preview_steps: int = Field(default=18, ge=1)
    omega: float = Field(default=3.0, ge=0)
    tracker: str | None = None


class DistillSettings(CommandSettings):
    """Settings of ``soundctm distill`` (TOML table ``[distill]``, env ``SOUNDCTM_DISTILL_*``)."""

    command: ClassVar[str] = "distill"
    model_config = SettingsConfigDict(
        env_prefix="SOUNDCTM_DISTILL_", env_nested_delimiter="__", extra="forbid"
    )

    out: Path = Path("runs/student")
    teacher: Path | None = None
    dataset: ComponentSetting = ComponentSetting(name="synthcaps", params={"split": "train"})
    text_encoder: ComponentSetting | None = None
    autoencoder: ComponentSetting | None = None
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=8e-5, gt=0)
    ema_decay: float = Field(default=0.999, ge=0, le=1)
    grid_n: int = Field(default=40, ge=2)
    k_distribution: Literal["linear", "uniform"] = "linear"
    w_min: float = Field(default=1.0, ge=0)
    w_max: float = Field(default=10.0, ge=0)
    omega: float = Field(default=5.0, ge=0)
    distance: Literal["feature", "l2", "l1", "pseudo-huber"] = "feature"
    compare_at: Literal["s", "sigma_min"] = "s"
    lambda_dsm: float = Field(default=0.2, ge=0)
    adaptive_max: float = Field(default=1000.0, gt=0)
    caption_dropout: float = Field(default=0.1, ge=0, lt=1)
    p_mean: float = -1.2
    p_std: float = Field(default=1.2, gt=0)
    grad_clip: float = Field(default=1000.0, gt=0)
    grad_accum: int = Field(default=1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=10, ge=1)
    keep_checkpoints: int = Field(default=3, ge=0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    num_workers: int = Field(default=0, ge=0)
    keep_teacher: bool = False
    preview_prompts: list[str] = Field(default_factory=list)
    preview_steps: list[int] = Field(default_factory=lambda: [1, 4])
    tracker: str | None = None
    trajectory_cache: bool = False
    cache_size: int = Field(default=512, ge=1)
    cache_batch: int = Field(default=16, ge=1)


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
    compare_steps: int | None = Field(default=None, ge=1)
    gamma: list[float] | None = None
    nu: float | None = Field(default=None, ge=0.0)
    omega: float | None = Field(default=None, ge=0.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    seconds: float | None = Field(default=None, gt=0.0)
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
        return value

    @field_validator("gamma")
    @classmethod
    def _unit(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0.0 <= g <= 1.0 for g in value):
            raise ValueError("every gamma must be between 0 and 1")
        return value
