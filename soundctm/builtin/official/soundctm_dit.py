"""``soundctm import soundctm-dit``: the official SoundCTM-DiT (44.1 kHz) as a soundctm checkpoint.

The official files (Hugging Face ``koichisaito/soundctm_dit``; docs/official-models.md, section B)
in one of two layouts:

- the hub layout: ``model_checkpoints/soundctm/`` (the student's EMA weights
  ``ac_v1_iclr_ema_0999_010446.pt`` / ``ac_v2_ema_0999_030000.pt``, their
  ``*_summary.jsonl`` and ``z_stats.pth``) and ``utils_checkpoints/{clap,vae}/``
  (``clap/630k-audioset-best.pt``, ``vae/gaussiandac/weights.pth``);
- the official demo's layout: ``ckpt/models/`` and ``ckpt/utils/`` (the demo writes
  ``ckpt/utils/630k-audioset-best.pt`` and ``ckpt/utils/gaussiandac/weights.pth``; the hub's
  ``clap/`` and ``vae/`` sub-folders are accepted there too).

``configs/dit_config/dit_v1.json`` / ``dit_v2.json`` under the source folder (the official
repository's) override the built-in configuration
(:data:`~soundctm.builtin.dit_official.OFFICIAL_DIT_PRESETS`).

The EMA file is the whole official model's state dict: ``dit.`` (the student network) and
``text_encoder.model.`` (the whole LAION-CLAP model). The official demo builds CLAP from
``630k-audioset-best.pt`` and then loads the EMA file over everything, so the text encoder it
runs is the EMA file's: the converter takes it from there, and reads the CLAP file only when the
EMA file has no text encoder (the hub download therefore skips the 1.9 GB CLAP file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundctm.builtin.official.soundctm_unet import (
    load_torch_file,
    read_summary,
    resolve_text_encoder,
    with_prefix,
)
from soundctm.engine.checkpoint import sha256_file
from soundctm.errors import CheckpointError, InvalidArgumentError

#: Bumped whenever the conversion changes what it writes (it keys the hub cache too).
CONVERTER_VERSION = 1
SOURCE_NAME = "soundctm-dit"
HUB_REPO = "koichisaito/soundctm_dit"

#: The released variants: the name used by the official demo (``--variants``) -> ours.
VARIANT_NAMES = {"ac_v1_iclr": "v1", "ac_v2": "v2", "v1": "v1", "v2": "v2"}
#: Our variant -> the release's file prefix.
RELEASE_PREFIX = {"v1": "ac_v1_iclr", "v2": "ac_v2"}
#: The variant a hub id without ``#VARIANT`` gets (the official demo's default, ac_v2).
DEFAULT_VARIANT = "v2"

MODEL_DIRS = ("model_checkpoints/soundctm", "ckpt/models")
UTIL_DIRS = ("utils_checkpoints", "ckpt/utils")
CLAP_FILES = ("clap/630k-audioset-best.pt", "630k-audioset-best.pt")
DAC_FILES = ("vae/gaussiandac/weights.pth", "gaussiandac/weights.pth")
Z_STATS = "z_stats.pth"
CONFIG_FILE = "configs/dit_config/dit_{variant}.json"

#: The official sampling defaults (section C): 1 step, omega 5, nu 1; 10.031 s clips.
STUDENT_DEFAULTS = {"solver": "gamma", "steps": 1, "gamma": 0.0, "nu": 1.0, "omega": 5.0}
SECONDS = 10.031
#: EDM settings when there is no summary (those of every released summary).
EDM_DEFAULTS = {"sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0}
#: The RoBERTa tokenizer of LAION-CLAP's text branch.
TOKENIZER = "roberta-base"
_CONFIG_KEYS = (
    "io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "global_cond_dim",
    "project_cond_tokens", "patch_size",
)  # fmt: skip


def parse_variant(variant: object) -> str:
    """``v1`` / ``ac_v1_iclr`` -> ``v1``; ``v2`` / ``ac_v2`` -> ``v2``; a one-line error else."""
    found = VARIANT_NAMES.get(str(variant).strip().lower()) if variant is not None else None
    if found is None:
        raise InvalidArgumentError(
            f"unknown SoundCTM-DiT variant {variant!r}; choose v1 (ac_v1_iclr, the ICLR'25 model) "
            "or v2 (ac_v2)"
        )
    return found


@dataclass(frozen=True)
class OfficialDiTFiles:
    """Where the official files of one variant are in a source folder."""

    root: Path
    variant: str
    ema: Path
    summary: Path | None
    z_stats: Path
    dac: Path
    clap: Path | None
    config: Path | None

    def sources(self) -> dict[str, Path]:
        """Every file the conversion may read, by its path relative to the folder."""
        files = [self.ema, self.summary, self.z_stats, self.dac, self.clap, self.config]
        return {str(p.relative_to(self.root)): p for p in files if p is not None}


def _first(root: Path, candidates: list[str]) -> Path | None:
    return next((root / c for c in candidates if (root / c).is_file()), None)


def _step(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def locate(src: Path, variant: str, config: Path | None = None) -> OfficialDiTFiles:
    """Find the official files of ``variant`` under ``src`` (either layout); one line naming
    what is missing."""
    src = Path(src)
    if not src.is_dir():
        raise InvalidArgumentError(f"{str(src)!r} is not a folder; pass the official folder")
    prefix = RELEASE_PREFIX[variant]
    models = [src / d for d in MODEL_DIRS if (src / d).is_dir()]
    if not models:
        raise CheckpointError(
            f"{src} has neither model_checkpoints/soundctm/ (the hub layout of {HUB_REPO}) nor "
            "ckpt/models/ (the official demo's); pass the folder that holds them"
        )
    emas = sorted(
        (p for m in models for p in m.glob(f"{prefix}*ema*.pt") if p.is_file()), key=_step
    )
    if not emas:
        raise CheckpointError(
            f"{models[0]} has no {prefix}_ema_*.pt (the variant {variant} student); download "
            f"model_checkpoints/soundctm/{prefix}_ema_*.pt from {HUB_REPO}, or choose the "
            "other --variant"
        )
    ema = emas[-1]
    z_stats = _first(ema.parent, [Z_STATS]) or next(
        (m / Z_STATS for m in models if (m / Z_STATS).is_file()), None
    )
    if z_stats is None:
        raise CheckpointError(
            f"{ema.parent} has no {Z_STATS} (the latent statistics); download "
            f"model_checkpoints/soundctm/{Z_STATS} from {HUB_REPO}"
        )
    utils = [src / d for d in UTIL_DIRS if (src / d).is_dir()]
    dac = next((p for u in utils if (p := _first(u, list(DAC_FILES)))), None)
    if dac is None:
        raise CheckpointError(
            f"{src} has no utils_checkpoints/vae/gaussiandac/weights.pth (nor "
            f"ckpt/utils/gaussiandac/weights.pth): the GaussianDAC; download it from {HUB_REPO}"
        )
    clap = next((p for u in utils if (p := _first(u, list(CLAP_FILES)))), None)
    summary = _first(ema.parent, [f"{prefix}_summary.jsonl"])
    if config is not None:
        if not Path(config).is_file():
            raise InvalidArgumentError(f"DiT config {str(config)!r} does not exist")
        config = Path(config)
    else:
        config = _first(src, [CONFIG_FILE.format(variant=variant)])
    return OfficialDiTFiles(src, variant, ema, summary, z_stats, dac, clap, config)


def dit_config(files: OfficialDiTFiles) -> dict[str, Any]:
    """The DiT configuration: the official JSON when present, else the built-in preset."""
    from soundctm.builtin.dit_official import OFFICIAL_DIT_PRESETS

    config = dict(OFFICIAL_DIT_PRESETS[files.variant])
    if files.config is None:
        return config
    try:
        data = json.loads(files.config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{files.config} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{files.config} is not a JSON object")
    kind = data.get("transformer_type", "continuous_transformer")
    if kind != "continuous_transformer":
        raise CheckpointError(
            f"{files.config}: transformer_type {kind!r} is not the released one "
            "(continuous_transformer)"
        )
    config.update({k: data[k] for k in _CONFIG_KEYS if k in data})
    return config


def edm_settings(files: OfficialDiTFiles) -> dict[str, float]:
    """sigma_data / sigma_min / sigma_max: the summary's line 1, else the released values."""
    out = dict(EDM_DEFAULTS)
    if files.summary is not None:
        summary = read_summary(files.summary)
        for key in out:
            value = summary.get(key)
            if value is not None:
                try:
                    out[key] = float(value)
                except (TypeError, ValueError) as exc:
                    raise CheckpointError(
                        f"{files.summary}: {key} is {value!r}, not a number"
                    ) from exc
    return out


def import_soundctm_dit(
    src: str | Path,
    out: str | Path,
    *,
    variant: str = DEFAULT_VARIANT,
    dit_config_file: str | Path | None = None,
    tokenizer: str | None = None,
    num_attention_heads: int = 12,
    trust_pickle: bool = False,
    callback: Callable[[object], None] | None = None,
) -> Path:
    """Convert the official files of ``variant`` (v1 or v2) under ``src`` into a checkpoint at
    ``out`` (a new folder); returns ``out``.

    ``dit_config_file`` replaces ``configs/dit_config/dit_<variant>.json``; ``tokenizer`` is
    the RoBERTa tokenizer (a folder or hub id; default ``roberta-base``, or a folder of that
    name under ``src``); ``num_attention_heads`` is CLAP's RoBERTa head count (12: shapes do
    not tell it).
    """
    from soundctm.builtin.clap import clap_text_state, from_official_clap
    from soundctm.builtin.official.gaussian_dac_weights import from_official_gaussian_dac
    from soundctm.engine.files import write_dir_atomic
    from soundctm.events import Message, emit

    variant = parse_variant(variant)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgumentError(f"{out} exists and is not empty; choose a new --out folder")
    files = locate(Path(src), variant, Path(dit_config_file) if dit_config_file else None)
    config = dit_config(files)
    edm = edm_settings(files)
    if files.summary is None:
        emit(callback, Message(f"no {RELEASE_PREFIX[variant]}_summary.jsonl: using {edm}"))
    tokenizer = tokenizer or resolve_text_encoder(TOKENIZER, files.root)  # a folder or hub id

    emit(callback, Message(f"reading {files.dac.relative_to(files.root)}"))
    dac_params, dac_state, _ = from_official_gaussian_dac(
        files.dac, files.z_stats, trust_pickle=trust_pickle
    )
    if dac_params["latent_dim"] != config["io_channels"]:
        raise CheckpointError(
            f"the GaussianDAC {files.dac} has {dac_params['latent_dim']} latent channels, the "
            f"DiT config {config['io_channels']}; the files are of different models"
        )

    emit(callback, Message(f"reading {files.ema.relative_to(files.root)}"))
    state = load_torch_file(files.ema, trust_pickle=trust_pickle)
    dit_state = with_prefix(state, "dit.", files.ema)
    clap_state = {
        k[len("text_encoder.model.") :]: v
        for k, v in state.items()
        if k.startswith("text_encoder.model.")
    }
    del state
    if clap_state:
        text_from = str(files.ema.relative_to(files.root))
        clap_params, text_state, _ = clap_text_state(
            clap_state, variant, source=str(files.ema), num_attention_heads=num_attention_heads
        )
    elif files.clap is not None:
        text_from = str(files.clap.relative_to(files.root))
        emit(callback, Message(f"{files.ema.name} has no text encoder: reading {text_from}"))
        clap_params, text_state, _ = from_official_clap(
            files.clap, variant, trust_pickle=trust_pickle, num_attention_heads=num_attention_heads
        )
    else:
        raise CheckpointError(
            f"{files.ema} has no text_encoder.model.* weights and there is no "
            f"630k-audioset-best.pt; download utils_checkpoints/clap/630k-audioset-best.pt from "
            f"{HUB_REPO}"
        )
    del clap_state
    width = int(clap_params["config"].get("projection_dim" if variant == "v1" else "hidden_size"))
    if width != config["cond_token_dim"]:
        raise CheckpointError(
            f"the CLAP text embedding of variant {variant} is {width}-d but the DiT config takes "
            f"{config['cond_token_dim']}-d tokens; pass the matching --variant or DiT config"
        )
    used = {files.ema, files.z_stats, files.dac, files.summary, files.config}
    if text_from != str(files.ema.relative_to(files.root)):
        used.add(files.clap)
    emit(callback, Message(f"hashing {len([p for p in used if p is not None])} source files"))
    sources = {rel: sha256_file(p) for rel, p in files.sources().items() if p in used}
    provenance = {
        "imported_from": SOURCE_NAME,
        "converter_version": CONVERTER_VERSION,
        "source": str(files.root.resolve()),
        "source_files": sources,
        "variant": variant,
        "release": RELEASE_PREFIX[variant],
        "weights": "ema",
        "text_encoder_from": text_from,
        "dit_config": str(files.config.relative_to(files.root)) if files.config else "built-in",
    }

    def fill(tmp: Path) -> None:
        emit(callback, Message("converting the student"))
        _write(
            tmp,
            config,
            dit_state,
            {**clap_params, "tokenizer": tokenizer},
            text_state,
            dac_params,
            dac_state,
            edm,
            provenance,
        )

    write_dir_atomic(out, fill)
    return out


def hub_files(variant: str | None = None) -> tuple[str, ...]:
    """What ``--model hf:koichisaito/soundctm_dit#VARIANT`` downloads: the variant's EMA
    weights and summary, the latent statistics and the GaussianDAC (not CLAP: the EMA file holds
    the text encoder the official code runs)."""
    prefix = RELEASE_PREFIX[parse_variant(variant or DEFAULT_VARIANT)]
    return (
        f"model_checkpoints/soundctm/{prefix}_ema_*.pt",
        f"model_checkpoints/soundctm/{prefix}_summary.jsonl",
        f"model_checkpoints/soundctm/{Z_STATS}",
        "utils_checkpoints/vae/gaussiandac/*",
    )


import_soundctm_dit.hub_repos = (HUB_REPO,)  # type: ignore[attr-defined]
import_soundctm_dit.hub_files = hub_files  # type: ignore[attr-defined]
import_soundctm_dit.hub_variants = tuple(VARIANT_NAMES)  # type: ignore[attr-defined]
import_soundctm_dit.parse_variant = parse_variant  # type: ignore[attr-defined]
import_soundctm_dit.hub_default_variant = DEFAULT_VARIANT  # type: ignore[attr-defined]
import_soundctm_dit.converter_version = CONVERTER_VERSION  # type: ignore[attr-defined]


def _write(
    path: Path,
    config: dict[str, Any],
    dit_state: dict[str, Any],
    clap_params: dict[str, Any],
    text_state: dict[str, Any],
    dac_params: dict[str, Any],
    dac_state: dict[str, Any],
    edm: dict[str, float],
    provenance: dict[str, Any],
) -> None:
    """Build the pipeline lazily (meta device, the converted tensors assigned), save it."""
    from soundctm.engine.checkpoint import SamplingDefaults
    from soundctm.engine.pipeline import Pipeline

    weights = {
        "backbone": (dit_state, "official DiT"),
        "text_encoder": (text_state, "CLAP text encoder"),
        "autoencoder": (dac_state, "GaussianDAC"),
    }
    try:
        pipe = Pipeline.build(
            kind="ctm",
            backbone=("dit-official", {**config, "student": True}),
            text_encoder=("clap", clap_params),
            autoencoder=("gaussian-dac", dac_params),
            sigma_data=edm["sigma_data"],
            seconds=SECONDS,
            max_seconds=SECONDS,
            defaults=SamplingDefaults(**STUDENT_DEFAULTS),
            provenance=provenance,
            weights={kind: state for kind, (state, _) in weights.items()},
        )
    except CheckpointError as exc:
        raise CheckpointError(
            f"the official weights do not fit the configuration ({exc}); pass the DiT config "
            "they were trained with (--dit-config) or the matching --variant"
        ) from exc
    pipe.card.sigma_min = edm["sigma_min"]
    pipe.card.sigma_max = edm["sigma_max"]
    pipe.save(path)


__all__ = [
    "CONVERTER_VERSION",
    "DEFAULT_VARIANT",
    "OfficialDiTFiles",
    "dit_config",
    "hub_files",
    "import_soundctm_dit",
    "locate",
    "parse_variant",
]
