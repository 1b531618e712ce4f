"""Self-describing checkpoints: a directory with ``model.json`` and one safetensors file per
component that has weights.

``model.json`` is a versioned card naming every component (its plugin name and constructor
parameters), sigma_data, sample rate, clip length, sampling defaults and provenance. Each
``.safetensors`` file carries the same card in its metadata (key ``soundctm.card``) and the
card lists each file's SHA-256, so a truncated or corrupted file is detected on load.
No pickle anywhere.

Reading is strict: ``format_version`` must be a positive integer; a component ``file`` must be a
relative path that stays inside the checkpoint folder (no absolute path, no ``..``, no symlink
that leads out); and every file that exists must have its ``sha256`` in the card. Only an explicit
``verify=False`` (:func:`read_weights`, ``Pipeline.load``) loads a file without checking its hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from soundctm._version import __version__
from soundctm.engine.files import write_dir_atomic
from soundctm.engine.specs import ComponentSpec
from soundctm.errors import CheckpointError

CARD_FILE = "model.json"
CARD_FORMAT = "soundctm-checkpoint"
CARD_VERSION = 1
METADATA_KEY = "soundctm.card"
COMPONENT_KINDS = ("backbone", "text_encoder", "autoencoder")
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


#: A component of a card (``{name, params, file, sha256}``): the one component-spec type that
#: settings use too (:class:`soundctm.engine.specs.ComponentSpec`).
ComponentCard = ComponentSpec


class SamplingDefaults(BaseModel):
    """Sampling settings used when the caller gives none."""

    model_config = ConfigDict(extra="forbid")

    solver: str = "gamma"
    steps: int = Field(default=1, ge=1)
    gamma: float = Field(default=0.0, ge=0.0, le=1.0)
    nu: float = 1.0
    omega: float = 5.0


class LoraCard(BaseModel):
    """What a LoRA checkpoint's card says of its adapter (:mod:`soundctm.engine.lora`): the
    ``parent`` model it adapts (an absolute folder or a hub id), the SHA-256 of the parent's
    ``model.json`` (a parent that differs is refused), ``rank``, ``alpha`` and the adapted
    backbone ``layers``. The backbone file then holds only the adapter tensors."""

    model_config = ConfigDict(extra="forbid")

    parent: str
    parent_card_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    layers: list[str] = Field(min_length=1)


class ModelCard(BaseModel):
    """The ``model.json`` card of a checkpoint (format version 1)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["soundctm-checkpoint"] = CARD_FORMAT
    format_version: int = Field(default=CARD_VERSION, ge=1, strict=True)
    kind: Literal["teacher", "ctm"]
    sigma_data: float = Field(gt=0)
    sigma_min: float = Field(default=0.002, gt=0)
    sigma_max: float = Field(default=80.0, gt=0)
    rho: float = Field(default=7.0, gt=0)
    sample_rate: int = Field(gt=0)
    seconds: float = Field(gt=0, description="clip length the model was trained on")
    max_seconds: float = Field(gt=0, description="longest clip the backbone supports")
    components: dict[str, ComponentCard]
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    provenance: dict[str, Any] = Field(default_factory=dict)
    #: Set on a LoRA checkpoint: the parent it adapts (see :class:`LoraCard`).
    lora: LoraCard | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        missing = [k for k in COMPONENT_KINDS if k not in self.components]
        if missing:
            raise ValueError(f"components {missing} are missing")
        extra = [k for k in self.components if k not in COMPONENT_KINDS]
        if extra:
            raise ValueError(f"unknown components {extra}")
        if self.max_seconds < self.seconds:
            raise ValueError("max_seconds is shorter than seconds")
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self

    def to_json(self, *, with_files: bool = True) -> str:
        """The card as JSON text (without file names and hashes if ``with_files`` is False)."""
        data = self.model_dump(mode="json")
        if data.get("lora") is None:  # only LoRA checkpoints carry the entry
            data.pop("lora", None)
        if not with_files:
            for comp in data["components"].values():
                comp["file"] = None
                comp["sha256"] = None
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def card_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint's ``model.json`` (identifies the model in sample sidecars)."""
    return sha256_file(Path(path) / CARD_FILE)


def save_checkpoint(path: Path, card: ModelCard, weights: dict[str, dict[str, Tensor]]) -> Path:
    """Write a checkpoint directory atomically.

    ``weights`` maps a component kind to its state dict; components with an empty state dict get
    no file. Tensors are saved contiguous and detached, so loading is bit-exact.
    """
    path = Path(path)
    card = card.model_copy(deep=True)
    card.provenance.setdefault("soundctm_version", __version__)
    metadata = {METADATA_KEY: card.to_json(with_files=False), "format": "pt"}

    def fill(tmp: Path) -> None:
        for kind, state in weights.items():
            comp = card.components[kind]
            if not state:
                comp.file, comp.sha256 = None, None
                continue
            name = f"{kind}.safetensors"
            tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            save_file(tensors, str(tmp / name), metadata=metadata)
            comp.file, comp.sha256 = name, sha256_file(tmp / name)
        (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")

    write_dir_atomic(path, fill)
    return path


def read_card(path: Path) -> ModelCard:
    """Read and validate ``path/model.json``, with a one-line error if anything is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"model folder {str(path)!r} does not exist; pass --model with a checkpoint folder "
            "(one that contains model.json)"
        )
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a folder; --model takes a checkpoint folder")
    card_path = path / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(
            f"{str(path)!r} has no {CARD_FILE}, so it is not a soundctm checkpoint; "
            "point --model at the folder that `soundctm train` or `soundctm distill` wrote"
        )
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{card_path} is not valid JSON ({exc}); the checkpoint is damaged"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        raise CheckpointError(
            f"{card_path} is not a soundctm model card (no format {CARD_FORMAT!r})"
        )
    check_format_version(data.get("format_version"), card_path, CARD_VERSION)
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        raise CheckpointError(f"{card_path} is invalid at {where}: {first['msg']}") from exc
    for kind, comp in card.components.items():
        if comp.file is not None:
            inside_file(path, comp.file, field=f"components.{kind}.file", where=card_path)
        if comp.sha256 and not SHA256_PATTERN.fullmatch(comp.sha256):
            raise CheckpointError(
                f"{card_path} is invalid at components.{kind}.sha256: {comp.sha256!r} is not a "
                "SHA-256 digest (64 hex digits); the checkpoint is damaged: re-save it"
            )
    return card


def check_format_version(version: object, where: Path, supported: int) -> int:
    """``version`` if it is a positive integer no newer than ``supported``; else a one-line
    :class:`CheckpointError` (``True``, ``1.0``, ``"1"``, ``0`` and ``-7`` are all refused)."""
    if type(version) is not int or version < 1:
        raise CheckpointError(
            f"{where} has format_version {version!r}, which must be a positive integer "
            f"(this soundctm reads versions 1 to {supported}); the file is damaged or not "
            "written by soundctm"
        )
    if version > supported:
        raise CheckpointError(
            f"{where} has format version {version!r}, newer than this soundctm supports "
            f"({supported}); upgrade soundctm"
        )
    return version


def is_absolute_path(name: str) -> bool:
    """True for an absolute POSIX or Windows path (``/x``, ``C:\\x``, ``\\\\host\\x``, ``\\x``)."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or windows.is_absolute() or bool(windows.drive or windows.root)


def inside_file(root: Path, name: object, *, field: str, where: Path) -> Path:
    """``root / name``, refused with a :class:`CheckpointError` naming ``field`` (in ``where``)
    unless ``name`` is a relative path that stays inside ``root``.

    Refused: a non-string or empty name, an absolute path (POSIX or Windows), any ``..``
    component, and a path that resolves (symlinks followed) outside ``root`` or to ``root``
    itself. ``root`` may itself be reached through a symlink. The file need not exist.
    """
    problem = ""
    if not isinstance(name, str) or not name.strip():
        problem = "is not a file name"
    else:
        if is_absolute_path(name):
            problem = "is an absolute path"
        elif ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
            problem = "contains '..'"
        else:
            base = Path(root).resolve()
            target = (Path(root) / name).resolve()
            if target == base or base not in target.parents:
                problem = f"resolves to {str(target)!r}, outside the folder {str(base)!r}"
    if problem:
        raise CheckpointError(
            f"{where} is invalid at {field}: {name!r} {problem}; files named there must be "
            "relative paths inside the model folder: the model is damaged or unsafe, do not use it"
        )
    return Path(root) / str(name)


def read_weights(
    path: Path, card: ModelCard, kind: str, *, verify: bool = True
) -> dict[str, Tensor]:
    """Load the state dict of component ``kind`` (empty if it has no file).

    The file must lie inside ``path`` (see :func:`inside_file`), whatever ``verify`` says. With
    ``verify`` (the default) the card must list the file's SHA-256 and the file must match it,
    which catches truncation and bit rot; ``verify=False`` is the explicit way to load a file
    whose hash is missing or not to be checked.
    """
    file = component_file(path, card, kind)
    if file is None:
        return {}
    if verify:
        verify_file(card, kind, file, Path(path) / CARD_FILE)
    try:
        tensors: dict[str, Tensor] = {}
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[key] = fh.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({exc}); the checkpoint is corrupt or "
            "truncated: copy it again or re-save it"
        ) from exc
    return tensors


def component_file(path: Path, card: ModelCard, kind: str) -> Path | None:
    """The weights file of component ``kind`` (``None`` if it has none): inside ``path`` (see
    :func:`inside_file`) and present, or a one-line :class:`CheckpointError`."""
    comp = card.components[kind]
    if comp.file is None:
        return None
    card_path = Path(path) / CARD_FILE
    file = inside_file(Path(path), comp.file, field=f"components.{kind}.file", where=card_path)
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {comp.file}, named in its model.json; "
            "the checkpoint is incomplete: copy it again or re-save it"
        )
    return file


def verify_file(card: ModelCard, kind: str, file: Path, card_path: Path) -> None:
    """Check ``file`` (component ``kind``) against the SHA-256 in the card: a missing hash is an
    error too, since every checkpoint soundctm saves lists one."""
    digest = card.components[kind].sha256
    if not digest:
        raise CheckpointError(
            f"{card_path} has no components.{kind}.sha256 for {card.components[kind].file}, so "
            "the file cannot be verified; re-save the checkpoint (soundctm always writes the "
            "hash), or load it with verify=False (Pipeline.load) if you trust it"
        )
    if sha256_file(file) != digest.lower():
        raise CheckpointError(
            f"{file} is corrupt or truncated (its SHA-256 differs from model.json); "
            "copy the checkpoint again or re-save it"
        )
