"""``from_official_gaussian_dac``: the official SoundCTM-DiT's GaussianDAC (``weights.pth`` and
``z_stats.pth``) as the parameters and weights of the ``gaussian-dac`` autoencoder
(:mod:`soundctm.builtin.gaussian_dac`; facts in docs/official-models.md, section B)."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from soundctm.builtin.gaussian_dac import ARCHITECTURE, GaussianDACAutoencoder, check_params
from soundctm.builtin.official.soundctm_unet import load_torch_file
from soundctm.errors import CheckpointError, InvalidArgumentError

#: The constructor kwargs of the official ``GaussianDAC`` (``sa_edm/dac/model/dac.py``); the
#: audiotools ``save`` writes every one of them (defaults included) to ``metadata.kwargs``.
OFFICIAL_KWARGS = (*ARCHITECTURE, "sample_rate", "double_z")


def _params_from_kwargs(kwargs: Any, path: Path) -> dict[str, Any]:
    """The card parameters of ``metadata.kwargs``; one-line errors naming ``path``."""
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(
            f"{path} has no metadata.kwargs dict (the GaussianDAC constructor arguments); it is "
            "not the official gaussiandac/weights.pth"
        )
    unknown = sorted(str(k) for k in kwargs if k not in OFFICIAL_KWARGS)
    if unknown:
        raise CheckpointError(
            f"{path}: metadata.kwargs has constructor argument(s) {', '.join(unknown)} that "
            f"GaussianDAC does not take (known: {', '.join(OFFICIAL_KWARGS)})"
        )
    if kwargs.get("double_z", True) is not True:
        raise CheckpointError(
            f"{path}: metadata.kwargs double_z is {kwargs['double_z']!r}; a GaussianDAC "
            "encoder gives mean and log-variance (double_z=True)"
        )
    given = {k: _as_int(v) for k, v in kwargs.items() if k in (*ARCHITECTURE, "sample_rate")}
    if given.get("latent_dim") is None and "encoder_dim" in given and "encoder_rates" in given:
        # the official default: the encoder's last width
        rates = given["encoder_rates"]
        if isinstance(rates, list | tuple) and isinstance(given["encoder_dim"], int):
            given["latent_dim"] = given["encoder_dim"] * 2 ** len(rates)
    try:
        return check_params(given)
    except InvalidArgumentError as exc:
        raise CheckpointError(f"{path}: metadata.kwargs: {exc}") from exc


def _as_int(value: Any) -> Any:
    """Integer-like values (numpy integers, 0-d tensors of an integer type) as ints, lists of
    them as lists; anything else unchanged (the parameter check reports it)."""
    if isinstance(value, list | tuple):
        return [_as_int(v) for v in value]
    if isinstance(value, int | float | str) or value is None:  # bool is an int
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def _fold_weight_norm(state: Mapping[str, Any], path: Path) -> tuple[dict[str, Tensor], int]:
    """Every weight-norm pair as a plain ``weight`` (``g * v / ||v||``, the norm over all axes
    but 0, as ``remove_weight_norm`` computes it); old-style ``weight_g`` / ``weight_v`` and
    the new ``parametrizations.weight.original0`` / ``original1`` are both accepted."""
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    directions = set(pairs.values())
    out: dict[str, Tensor] = {}
    folded = 0
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is not a tensor")
        g_suffix = next((s for s in pairs if key.endswith(s)), None)
        if g_suffix is None:
            if not any(key.endswith(s) for s in directions):
                out[key] = value.float().contiguous()
            continue
        base = key[: -len(g_suffix)]
        v_key = base + pairs[g_suffix]
        if v_key not in state:
            raise CheckpointError(f"{path} has {key} but not {v_key}")
        v = state[v_key]
        if not isinstance(v, Tensor) or value.shape != (v.shape[0], *([1] * (v.dim() - 1))):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, not a weight-norm gain of "
                f"{v_key} (dim 0)"
            )
        out[base + ".weight"] = torch._weight_norm(v.float(), value.float(), 0).contiguous()
        folded += 1
    for key in state:
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(v_suffix) and key[: -len(v_suffix)] + g_suffix not in state:
                raise CheckpointError(f"{path} has {key} but not its gain {g_suffix[1:]}")
    return out, folded


def _expected_shapes(params: dict[str, Any]) -> dict[str, torch.Size]:
    """Key -> shape of the state dict of ``GaussianDACAutoencoder(**params)`` (built on the
    meta device: no memory, no random init)."""
    with torch.device("meta"):
        model = GaussianDACAutoencoder(**params)
    return {k: v.shape for k, v in model.state_dict().items()}


def _z_stats(path: Path, latent_dim: int, trust_pickle: bool) -> tuple[Tensor, Tensor]:

    data = load_torch_file(path, trust_pickle=trust_pickle)
    stats = []
    for name in ("z_mean", "z_std"):
        value = data.get(name)
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path} has no {name} tensor; it is not the official z_stats.pth "
                "({'z_mean': (64,), 'z_std': (64,)})"
            )
        if value.numel() != latent_dim:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(value.shape)}, the GaussianDAC has "
                f"{latent_dim} latent channels"
            )
        value = value.detach().reshape(latent_dim).float().contiguous()
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {name} has non-finite values")
        stats.append(value)
    if bool((stats[1] <= 0).any()):
        raise CheckpointError(f"{path}: z_std has values <= 0")
    return stats[0], stats[1]


def from_official_gaussian_dac(
    weights_path: str | Path,
    z_stats_path: str | Path,
    *,
    trust_pickle: bool = False,
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """Convert the official ``gaussiandac/weights.pth`` and ``z_stats.pth`` (hub
    ``koichisaito/soundctm_dit``: ``utils_checkpoints/vae/gaussiandac/weights.pth`` and
    ``model_checkpoints/soundctm/z_stats.pth``) to ``(params, state_dict, info)`` for
    :class:`GaussianDACAutoencoder`.

    Both files are read with ``torch.load(weights_only=True)`` (``load_torch_file``; the
    metadata kwargs are plain ints and lists); one that needs arbitrary unpickling is refused
    with a :class:`~soundctm.errors.CheckpointError` unless ``trust_pickle=True``. ``params``
    are ``metadata.kwargs`` (``latent_dim`` None means the encoder's last width, as the
    official; ``double_z`` must be true and is dropped); the weight-norm pairs are folded into
    plain weights (module docstring) and ``z_mean`` / ``z_std`` added; the keys and shapes are
    checked against the model the kwargs describe, built on the meta device, so the state dict
    loads with ``strict=True`` into ``GaussianDACAutoencoder(**params)``. ``info`` summarises
    the conversion (sources, kwargs as read, hop, tensor counts). Anything missing or
    inconsistent raises a one-line ``CheckpointError`` naming the file.
    """

    weights_path, z_stats_path = Path(weights_path), Path(z_stats_path)
    for path, what in (
        (weights_path, "GaussianDAC weights gaussiandac/weights.pth"),
        (z_stats_path, "latent statistics z_stats.pth"),
    ):
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file (the official {what})")
    ckpt = load_torch_file(weights_path, trust_pickle=trust_pickle)
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"{weights_path} has no 'state_dict' dict; it is not the official "
            "gaussiandac/weights.pth"
        )
    metadata = ckpt.get("metadata")
    kwargs = metadata.get("kwargs") if isinstance(metadata, Mapping) else None
    params = _params_from_kwargs(kwargs, weights_path)

    out, folded = _fold_weight_norm({str(k): v for k, v in state.items()}, weights_path)
    expected = _expected_shapes(params)
    stats = ("z_mean", "z_std")
    missing = sorted(set(expected) - set(out) - set(stats))
    unexpected = sorted(set(out) - set(expected))
    if set(stats) & set(out):
        unexpected = sorted({*unexpected, *(set(stats) & set(out))})
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected {unexpected[0]}"
        more = len(missing) + len(unexpected) - 1
        raise CheckpointError(
            f"{weights_path}: its weights do not fit the GaussianDAC its metadata.kwargs "
            f"describe: the state dict {what}" + (f" (and {more} more)" if more else "")
        )
    for key, value in out.items():
        if value.shape != expected[key]:
            raise CheckpointError(
                f"{weights_path}: {key} has shape {tuple(value.shape)}, the architecture of its "
                f"metadata.kwargs needs {tuple(expected[key])}"
            )
    out["z_mean"], out["z_std"] = _z_stats(z_stats_path, params["latent_dim"], trust_pickle)

    info: dict[str, Any] = {
        "source": str(weights_path),
        "z_stats": str(z_stats_path),
        "format": "GaussianDAC weights.pth (audiotools) + z_stats.pth",
        "kwargs": {str(k): _plain(v) for k, v in dict(kwargs or {}).items()},
        "hop_length": math.prod(params["encoder_rates"]),
        "latent_dim": params["latent_dim"],
        "tensors": len(state),
        "weight_norm_folded": folded,
    }
    return params, out, info


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return repr(value)


__all__ = ["from_official_gaussian_dac"]
