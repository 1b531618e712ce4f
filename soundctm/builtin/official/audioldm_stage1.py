"""``from_official_stage1``: AudioLDM's stage 1 (``audioldm-s-full.ckpt``, the official
SoundCTM-UNet's VAE + HiFi-GAN) as the parameters and weights of the ``audioldm`` autoencoder
(:mod:`soundctm.builtin.audioldm`; facts in docs/official-models.md)."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from soundctm.builtin.audioldm import (
    OFFICIAL_VOCODER,
    VAE_PREFIX,
    VOCODER_PREFIX,
    build_vae,
    build_vocoder,
    vae_kwargs,
)
from soundctm.errors import CheckpointError


def _ldm_vae_converter() -> Any:
    """diffusers' own LDM/CompVis -> diffusers VAE key converter: in
    ``diffusers.loaders.single_file_utils`` in current releases (checked: 0.42.1, signature
    ``(checkpoint, config)``), in ``pipelines.stable_diffusion.convert_from_ckpt`` in old ones."""
    try:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    except ImportError:  # pragma: no cover - old diffusers
        from diffusers.pipelines.stable_diffusion.convert_from_ckpt import (
            convert_ldm_vae_checkpoint,
        )
    return convert_ldm_vae_checkpoint


def _load_torch_file(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (the official audioldm-s-full.ckpt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "weights only load failed" in str(exc).lower():
            raise CheckpointError(
                f"{path} holds pickled objects beyond tensors and plain values; load it only if "
                "you trust the file, with trust_pickle=True"
            ) from exc
        raise CheckpointError(
            f"{path} cannot be read as a torch checkpoint ({_first(exc)})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path} cannot be read as a torch checkpoint, truncated or not a torch.save file "
            f"({_first(exc)})"
        ) from exc


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _indices(keys: Iterable[str], prefix: str) -> list[int]:
    """The sorted distinct integers ``i`` of keys ``prefix<i>.<...>``."""
    found = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _read_vae_sizes(vae: dict[str, Tensor], path: Path, norm_num_groups: int) -> dict[str, Any]:
    """The ``vae`` parameters from the shapes of LDM-named VAE weights."""

    def need(key: str) -> Tensor:
        if key not in vae:
            raise CheckpointError(f"{path} has no VAE weight {VAE_PREFIX}{key}")
        return vae[key]

    conv_in = need("encoder.conv_in.weight")
    levels = _indices(list(vae), "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"{path} has no VAE encoder blocks {VAE_PREFIX}encoder.down.<i>")
    channels = [int(need(f"encoder.down.{i}.block.0.conv2.weight").shape[0]) for i in levels]
    layers = len(_indices(list(vae), "encoder.down.0.block."))
    moments = int(need("quant_conv.weight").shape[0])
    z_moments = int(need("encoder.conv_out.weight").shape[0])
    if moments % 2 or moments != z_moments:
        raise CheckpointError(
            f"{path}: VAE quant_conv has {moments} outputs and the encoder {z_moments}; "
            "diffusers' AutoencoderKL needs z_channels == embed_dim"
        )
    sizes = {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(need("decoder.conv_out.weight").shape[0]),
        "block_out_channels": channels,
        "latent_channels": moments // 2,
        "layers_per_block": layers,
        "norm_num_groups": int(norm_num_groups),
    }
    if int(conv_in.shape[0]) != channels[0]:
        raise CheckpointError(f"{path}: VAE conv_in and the first block disagree in width")
    if any(c % int(norm_num_groups) for c in channels):
        raise CheckpointError(
            f"{path}: VAE widths {channels} are not divisible by norm_num_groups={norm_num_groups}"
        )
    return sizes


def _read_vocoder_sizes(
    voc: dict[str, Tensor],
    path: Path,
    upsample_rates: list[int] | None,
    resblock_dilation_sizes: list[list[int]] | None,
    leaky_relu_slope: float,
) -> dict[str, Any]:
    """The ``vocoder`` parameters from the shapes of HiFi-GAN weights (official names)."""
    where = f"{path}: vocoder ({VOCODER_PREFIX}*)"
    if "conv_pre.weight" not in voc:
        raise CheckpointError(f"{path} has no vocoder weight {VOCODER_PREFIX}conv_pre.weight")
    pre = voc["conv_pre.weight"]
    ups = _indices(list(voc), "ups.")
    blocks = _indices(list(voc), "resblocks.")
    if not ups or not blocks or len(blocks) % len(ups):
        raise CheckpointError(f"{where} has {len(ups)} upsamplers and {len(blocks)} resblocks")
    kernels_per_level = len(blocks) // len(ups)
    resblock_kernels = [
        int(voc[f"resblocks.{j}.convs1.0.weight"].shape[-1]) for j in range(kernels_per_level)
    ]
    convs = len(_indices(list(voc), "resblocks.0.convs1."))
    if upsample_rates is None:
        upsample_rates = list(OFFICIAL_VOCODER["upsample_rates"])
    if resblock_dilation_sizes is None:
        resblock_dilation_sizes = [[1, 3, 5]] * kernels_per_level
    if len(upsample_rates) != len(ups):
        raise CheckpointError(
            f"{where} has {len(ups)} upsamplers, not {len(upsample_rates)}; pass its "
            "upsample_rates (strides cannot be read from the weights)"
        )
    if len(resblock_dilation_sizes) != kernels_per_level or any(
        len(d) != convs for d in resblock_dilation_sizes
    ):
        raise CheckpointError(
            f"{where} has {kernels_per_level} resblock kernels of {convs} convolutions; pass "
            "matching resblock_dilation_sizes"
        )
    return {
        "model_in_dim": int(pre.shape[1]),
        "upsample_initial_channel": int(pre.shape[0]),
        "upsample_rates": [int(u) for u in upsample_rates],
        "upsample_kernel_sizes": [int(voc[f"ups.{i}.weight"].shape[-1]) for i in ups],
        "resblock_kernel_sizes": resblock_kernels,
        "resblock_dilation_sizes": [[int(d) for d in ds] for ds in resblock_dilation_sizes],
        "leaky_relu_slope": float(leaky_relu_slope),
    }


def _expected_shapes(params: dict[str, Any]) -> dict[str, torch.Size]:
    """Key -> shape of the state dict :class:`AudioLDMAutoencoder` would have (built on the
    meta device: no memory, no random init)."""
    with torch.device("meta"):
        vae = build_vae(params["vae"])
        voc = build_vocoder(params["vocoder"], params["sample_rate"])
    shapes = {f"vae.{k}": v.shape for k, v in vae.state_dict().items()}
    shapes.update({f"vocoder.{k}": v.shape for k, v in voc.state_dict().items()})
    return shapes


def from_official_stage1(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    norm_num_groups: int = 32,
    upsample_rates: list[int] | None = None,
    resblock_dilation_sizes: list[list[int]] | None = None,
    leaky_relu_slope: float = 0.1,
    sample_rate: int = 16000,
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """Convert the official stage-1 checkpoint ``audioldm-s-full.ckpt`` (a Lightning dict) to
    ``(params, state_dict, info)`` for :class:`AudioLDMAutoencoder`.

    The file is read with ``torch.load(weights_only=True)``; one that needs arbitrary
    unpickling is refused with a :class:`~soundctm.errors.CheckpointError` unless
    ``trust_pickle=True``. From ``state_dict`` it takes ``scale_factor``, the VAE under
    ``first_stage_model.`` (LDM/CompVis names, converted by diffusers'
    ``convert_ldm_vae_checkpoint``) and the HiFi-GAN under ``first_stage_model.vocoder.``
    (``ups.`` renamed ``upsampler.``, buffers ``mean`` = 0 and ``scale`` = 1 added); every
    other key (``model.diffusion_model.*``, ``cond_stage_model.*``, ``betas``, ...) is skipped.

    Sizes are read from the weights: VAE widths per level (``encoder.down.<i>.block.0.conv2``),
    layers per block, latent channels (``quant_conv``); vocoder ``model_in_dim`` and
    ``upsample_initial_channel`` (``conv_pre``), upsampling and resblock kernel sizes. What
    shapes cannot tell takes the documented official values unless given: ``norm_num_groups``
    32, ``upsample_rates`` [5, 4, 2, 2, 2], dilations [1, 3, 5] per resblock kernel, leaky
    slope 0.1. ``params`` are full card parameters; the state dict loads with ``strict=True``
    into ``AudioLDMAutoencoder(**params)``; ``info`` summarises the conversion (source,
    scale factor, tensor counts, skipped key groups, Lightning epoch/step when present).
    Anything missing or inconsistent raises a one-line ``CheckpointError`` naming the file.
    """
    path = Path(path)
    ckpt = _load_torch_file(path, trust_pickle)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and any(str(k).startswith(VAE_PREFIX) for k in ckpt):
        state = ckpt
    else:
        raise CheckpointError(
            f"{path} is not an AudioLDM Lightning checkpoint: it has no 'state_dict' dict"
        )
    state = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    vae_ldm = {
        k[len(VAE_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(VAE_PREFIX) and not k.startswith(VOCODER_PREFIX)
    }
    voc_official = {
        k[len(VOCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(VOCODER_PREFIX)
    }
    if not vae_ldm:
        raise CheckpointError(f"{path} has no VAE weights ({VAE_PREFIX}* keys)")
    if not voc_official:
        raise CheckpointError(f"{path} has no vocoder weights ({VOCODER_PREFIX}* keys)")
    if "scale_factor" not in state or state["scale_factor"].numel() != 1:
        raise CheckpointError(f"{path} has no scale_factor (a 0-d tensor in its state_dict)")
    scale_factor = float(state["scale_factor"].reshape(()).item())

    vae_sizes = _read_vae_sizes(vae_ldm, path, norm_num_groups)
    voc_sizes = _read_vocoder_sizes(
        voc_official, path, upsample_rates, resblock_dilation_sizes, leaky_relu_slope
    )
    params: dict[str, Any] = {
        "scale_factor": scale_factor,
        "vae": vae_sizes,
        "vocoder": voc_sizes,
        "sample_rate": int(sample_rate),
        "n_fft": 1024,
        "hop_length": math.prod(voc_sizes["upsample_rates"]),
        "f_min": 0.0,
        "f_max": 8000.0,
    }

    convert = _ldm_vae_converter()
    try:
        converted = convert({VAE_PREFIX + k: v for k, v in vae_ldm.items()}, vae_kwargs(vae_sizes))
    except Exception as exc:
        raise CheckpointError(
            f"{path}: diffusers cannot convert its VAE weights ({_first(exc)})"
        ) from exc
    out: dict[str, Tensor] = {f"vae.{k}": v.contiguous() for k, v in converted.items()}
    for k, v in voc_official.items():
        name = "upsampler." + k[len("ups.") :] if k.startswith("ups.") else k
        out[f"vocoder.{name}"] = v.contiguous()
    n_mels = voc_sizes["model_in_dim"]
    out.setdefault("vocoder.mean", torch.zeros(n_mels))
    out.setdefault("vocoder.scale", torch.ones(n_mels))

    expected = _expected_shapes(params)
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected {unexpected[0]}"
        more = len(missing) + len(unexpected) - 1
        raise CheckpointError(
            f"{path}: its stage-1 weights do not fit the AudioLDM VAE/vocoder: the conversion "
            f"{what}" + (f" (and {more} more)" if more else "")
        )
    for k, shape in expected.items():
        if out[k].shape != shape:
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(out[k].shape)}, the architecture read from the "
                f"weights needs {tuple(shape)}"
            )

    skipped = sorted(
        {k.split(".", 1)[0] for k in state if not k.startswith(VAE_PREFIX) and k != "scale_factor"}
    )
    info: dict[str, Any] = {
        "source": str(path),
        "format": "AudioLDM stage-1 Lightning checkpoint (audioldm-s-full)",
        "scale_factor": scale_factor,
        "vae_tensors": len(vae_ldm),
        "vae_tensors_not_converted": len(vae_ldm) - len(converted),
        "vocoder_tensors": len(voc_official),
        "skipped_tensors": len(state) - len(vae_ldm) - len(voc_official) - 1,
        "skipped_groups": skipped,
    }
    if isinstance(ckpt, dict):
        for key in ("epoch", "global_step"):
            if isinstance(ckpt.get(key), int):
                info[key] = int(ckpt[key])
    return params, out, info


__all__ = ["from_official_stage1"]
