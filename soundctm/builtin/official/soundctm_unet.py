"""``soundctm import soundctm-unet``: the official SoundCTM-UNet (16 kHz) as a soundctm checkpoint.

The official folder (Hugging Face ``Sony/soundctm``) holds (docs/official-models.md, section A):

- ``ckpt/teacher/pytorch_model_2_sigma_025.bin``: the TANGO-EDM teacher, ``unet.`` (a diffusers
  UNet) and ``text_encoder.`` (FLAN-T5's encoder);
- ``ckpt/audioldm-s-full.ckpt``: AudioLDM's stage 1 (VAE + HiFi-GAN) and ``scale_factor``;
- ``soundctm_ckpt/<step>/pytorch_model.bin`` (the student's online weights, ``ctm_unet.`` and
  ``text_encoder.``), ``ema_0.999_<step>.pt`` (its EMA weights, no prefix) and
  ``summary.jsonl`` (line 1: the training arguments, among them ``text_encoder_name`` and the
  noise levels);
- optionally ``configs/diffusion_model_config.json`` (the UNet configuration; the built-in
  :data:`~soundctm.builtin.unet.OFFICIAL_CONFIG` otherwise).

The student's network is the teacher's UNet plus the s embedding (official
``s_time_embedding.``, diffusers' ``class_embedding.``). By default the converted student holds
the EMA weights; the official inference script in fact runs the online weights (its EMA loading
loop never applies the file), so ``weights="online"`` reproduces its outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundctm.engine.checkpoint import sha256_file
from soundctm.errors import CheckpointError, InvalidArgumentError, first_line

#: Bumped whenever the conversion changes what it writes (it keys the hub cache too).
CONVERTER_VERSION = 1
SOURCE_NAME = "soundctm-unet"

TEACHER_FILE = "ckpt/teacher/pytorch_model_2_sigma_025.bin"
STAGE1_FILE = "ckpt/audioldm-s-full.ckpt"
STUDENT_DIR = "soundctm_ckpt"
ONLINE_FILE = "pytorch_model.bin"
SUMMARY_FILE = "summary.jsonl"
UNET_CONFIG_FILE = "configs/diffusion_model_config.json"

#: The official sampling defaults (section C): 1 step, omega 3.5, nu 1; the teacher: Heun,
#: 40 steps, CFG 3.5. A 10 s clip; the latent covers 10.24 s (1024 mel frames).
STUDENT_DEFAULTS = {"solver": "gamma", "steps": 1, "gamma": 0.0, "nu": 1.0, "omega": 3.5}
TEACHER_DEFAULTS = {"solver": "heun", "steps": 40, "gamma": 0.0, "nu": 1.0, "omega": 3.5}
SECONDS, MAX_SECONDS = 10.0, 10.24
WEIGHTS = ("ema", "online")


@dataclass(frozen=True)
class OfficialFiles:
    """Where the official files are in a source folder."""

    root: Path
    teacher: Path | None
    stage1: Path
    online: Path
    ema: Path | None
    summary: Path
    unet_config: Path | None

    def sources(self) -> dict[str, Path]:
        """Every file the conversion reads, by its path relative to the folder."""
        files = [self.teacher, self.stage1, self.online, self.ema, self.summary, self.unet_config]
        return {str(p.relative_to(self.root)): p for p in files if p is not None}


def locate(src: Path, unet_config: Path | None = None, *, teacher: bool = True) -> OfficialFiles:
    """Find the official files under ``src`` (the hub layout); one line naming what is missing.
    The teacher's file is needed only with ``teacher``."""
    src = Path(src)
    if not src.is_dir():
        raise InvalidArgumentError(f"{str(src)!r} is not a folder; pass the official folder")

    def need(rel: str) -> Path:
        path = src / rel
        if not path.is_file():
            raise CheckpointError(
                f"{src} has no {rel}; it is not the official SoundCTM-UNet folder (hub "
                "Sony/soundctm), or the download is incomplete"
            )
        return path

    steps = sorted(
        (p for p in (src / STUDENT_DIR).glob("*") if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if not steps:
        raise CheckpointError(f"{src} has no {STUDENT_DIR}/<step>/ folder with the student")
    step = steps[-1].relative_to(src)
    ema = sorted((src / step).glob("ema_*.pt"))
    config = unet_config if unet_config is not None else src / UNET_CONFIG_FILE
    if unet_config is not None and not unet_config.is_file():
        raise InvalidArgumentError(f"UNet config {str(unet_config)!r} does not exist")
    return OfficialFiles(
        root=src,
        teacher=need(TEACHER_FILE) if teacher else None,
        stage1=need(STAGE1_FILE),
        online=need(f"{step}/{ONLINE_FILE}"),
        ema=ema[-1] if ema else None,
        summary=need(f"{step}/{SUMMARY_FILE}"),
        unet_config=config if config.is_file() else None,
    )


def read_summary(path: Path) -> dict[str, Any]:
    """Line 1 of ``summary.jsonl``: the student's training arguments (a JSON object)."""
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        data = json.loads(first)
    except (IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} does not start with a JSON object line ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"line 1 of {path} is not a JSON object")
    return data


def load_torch_file(path: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """A ``torch.save`` dict, unpickled with ``weights_only=True`` unless ``trust_pickle``."""
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds pickled objects beyond tensors ({first_line(exc)}); if you trust the "
            "file, allow full unpickling with --trust-pickle"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} cannot be read as a torch checkpoint ({first_line(exc)}); the file is "
            "truncated or not what it should be; download it again"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a dict of tensors")
    return data


def with_prefix(state: dict[str, Any], prefix: str, path: Path) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, prefix removed; a one-line error if none."""
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(
            f"{path} has no weights under {prefix!r}; it is not the file expected"
        )
    return out


def student_unet_state(state: dict[str, Any]) -> dict[str, Any]:
    """Official student UNet names -> the ``unet2d`` student's (``s_time_embedding.`` is
    diffusers' ``class_embedding.``), under ``unet.``."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("s_time_embedding."):
            key = "class_embedding." + key[len("s_time_embedding.") :]
        renamed["unet." + key] = value
    return renamed


def unet_config_from(files: OfficialFiles) -> dict[str, Any]:
    """The UNet configuration: the official JSON when present, else the built-in one."""
    from soundctm.builtin.unet import OFFICIAL_CONFIG

    if files.unet_config is None:
        return dict(OFFICIAL_CONFIG)
    try:
        data = json.loads(files.unet_config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{files.unet_config} is not valid JSON ({exc})") from exc
    drop = {"_class_name", "_diffusers_version", "sample_size", "num_class_embeds"}
    return {k: v for k, v in data.items() if k not in drop}


def resolve_text_encoder(name: str, root: Path) -> str:
    """``text_encoder_name`` of the summary: a folder under the official folder if there is one,
    a local folder, else the hub id as it is (the Hugging Face cache, or a download)."""
    for candidate in (root / name, Path(name).expanduser()):
        if candidate.is_dir():
            return str(candidate.resolve())
    return name


def t5_config(source: str, state: dict[str, Any]) -> dict[str, Any]:
    """The T5 configuration of ``source`` (local or cached), checked against the weights."""
    from transformers import AutoConfig

    from soundctm.engine.hf import quiet_transformers

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"the configuration of the text encoder {source!r} is not available "
            f"({first_line(exc)}); download it once with `hf download {source}` or pass "
            "--text-encoder DIR"
        ) from exc
    width = state.get("shared.weight")
    if width is not None and tuple(width.shape) != (config["vocab_size"], config["d_model"]):
        raise CheckpointError(
            f"the text encoder weights are {tuple(width.shape)}, but {source!r} describes "
            f"{(config['vocab_size'], config['d_model'])}; pass the matching --text-encoder"
        )
    keep = (
        "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
        "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
        "layer_norm_epsilon", "feed_forward_proj", "is_gated_act", "dense_act_fn",
        "pad_token_id", "eos_token_id",
    )  # fmt: skip
    return {k: config[k] for k in keep if k in config}


def import_soundctm_unet(
    src: str | Path,
    out: str | Path,
    *,
    weights: str = "ema",
    teacher: bool = False,
    unet_config: str | Path | None = None,
    text_encoder: str | None = None,
    trust_pickle: bool = False,
    callback: Callable[[object], None] | None = None,
) -> Path:
    """Convert the official folder ``src`` into a checkpoint at ``out`` (a new folder).

    ``weights`` picks the student's EMA (default) or online weights; ``teacher`` also writes
    the teacher into ``out/teacher`` (for ``sample --teacher``). Returns ``out``.
    """
    from soundctm.engine.files import write_dir_atomic
    from soundctm.events import Message, emit

    if weights not in WEIGHTS:
        raise InvalidArgumentError(f"weights must be ema or online, got {weights!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgumentError(f"{out} exists and is not empty; choose a new --out folder")
    files = locate(Path(src), Path(unet_config) if unet_config else None, teacher=teacher)
    if weights == "ema" and files.ema is None:
        raise CheckpointError(
            f"{files.online.parent} has no ema_*.pt file; import the online weights with "
            "--weights online"
        )
    summary = read_summary(files.summary)
    emit(callback, Message(f"hashing {len(files.sources())} source files"))
    sources = {rel: sha256_file(p) for rel, p in files.sources().items()}
    unet = unet_config_from(files)
    encoder_source = text_encoder or resolve_text_encoder(
        str(summary.get("text_encoder_name", "google/flan-t5-large")), files.root
    )

    from soundctm.builtin.official.audioldm_stage1 import from_official_stage1

    emit(callback, Message(f"reading {STAGE1_FILE}"))
    stage1_params, stage1_state, _ = from_official_stage1(files.stage1, trust_pickle=trust_pickle)

    def provenance(kind: str) -> dict[str, Any]:
        return {
            "imported_from": SOURCE_NAME,
            "converter_version": CONVERTER_VERSION,
            "source": str(files.root.resolve()),
            "source_files": sources,
            "weights": weights if kind == "ctm" else "teacher",
            "text_encoder_name": summary.get("text_encoder_name"),
        }

    def fill(tmp: Path) -> None:
        emit(callback, Message(f"converting the student ({weights} weights)"))
        online = load_torch_file(files.online, trust_pickle=trust_pickle)
        t5_state = with_prefix(online, "text_encoder.", files.online)
        if weights == "online":
            unet_state = with_prefix(online, "ctm_unet.", files.online)
        else:
            assert files.ema is not None
            unet_state = load_torch_file(files.ema, trust_pickle=trust_pickle)
        del online
        t5 = t5_config(encoder_source, t5_state)
        _write(
            tmp,
            "ctm",
            unet,
            student_unet_state(unet_state),
            t5,
            t5_state,
            encoder_source,
            stage1_params,
            stage1_state,
            summary,
            provenance("ctm"),
        )
        del unet_state, t5_state
        if files.teacher is not None:
            emit(callback, Message("converting the teacher"))
            state = load_torch_file(files.teacher, trust_pickle=trust_pickle)
            _write(
                tmp / "teacher",
                "teacher",
                unet,
                {"unet." + k: v for k, v in with_prefix(state, "unet.", files.teacher).items()},
                t5,
                with_prefix(state, "text_encoder.", files.teacher),
                encoder_source,
                stage1_params,
                stage1_state,
                summary,
                provenance("teacher"),
            )

    write_dir_atomic(out, fill)
    return out


import_soundctm_unet.hub_repos = ("Sony/soundctm",)  # type: ignore[attr-defined]
#: What ``--model hf:Sony/soundctm`` downloads: the student and stage 1, not the teacher.
import_soundctm_unet.hub_files = (  # type: ignore[attr-defined]
    STAGE1_FILE,
    f"{STUDENT_DIR}/*",
    "configs/*",
)
import_soundctm_unet.converter_version = CONVERTER_VERSION  # type: ignore[attr-defined]


def _write(
    path: Path,
    kind: str,
    unet: dict[str, Any],
    unet_state: dict[str, Any],
    t5: dict[str, Any],
    t5_state: dict[str, Any],
    tokenizer: str,
    stage1_params: dict[str, Any],
    stage1_state: dict[str, Any],
    summary: dict[str, Any],
    provenance: dict[str, Any],
) -> None:
    """Build the pipeline of one model, load the converted weights strictly, save it."""
    from soundctm.engine.checkpoint import SamplingDefaults
    from soundctm.engine.pipeline import Pipeline

    defaults = STUDENT_DEFAULTS if kind == "ctm" else TEACHER_DEFAULTS
    pipe = Pipeline.build(
        kind=kind,
        backbone=("unet2d", {"config": unet, "student": kind == "ctm"}),
        text_encoder=("flan-t5", {"config": t5, "tokenizer": tokenizer, "max_length": 512}),
        autoencoder=("audioldm", {**stage1_params, "latent_multiple": _latent_multiple(unet)}),
        sigma_data=float(summary.get("sigma_data", 0.25)),
        seconds=SECONDS,
        max_seconds=MAX_SECONDS,
        defaults=SamplingDefaults(**defaults),
        provenance=provenance,
    )
    pipe.card.sigma_min = float(summary.get("sigma_min", 0.002))
    pipe.card.sigma_max = float(summary.get("sigma_max", 80.0))
    for name, module, state in (
        ("UNet", pipe.ctm.backbone, unet_state),
        ("text encoder", pipe.text_encoder, {"model." + k: v for k, v in t5_state.items()}),
        ("stage 1 (VAE + vocoder)", pipe.autoencoder, stage1_state),
    ):
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"the official {name} weights do not fit its configuration "
                f"({first_line(exc)}); pass the UNet config they were trained with"
            ) from exc
    pipe.save(path)


def _latent_multiple(unet: dict[str, Any]) -> int:
    """Latent frames must be a multiple of the UNet's downsampling (2 per level but the last)."""
    return 2 ** (len(unet["block_out_channels"]) - 1)


__all__ = [
    "CONVERTER_VERSION",
    "OfficialFiles",
    "import_soundctm_unet",
    "locate",
    "read_summary",
    "student_unet_state",
]
