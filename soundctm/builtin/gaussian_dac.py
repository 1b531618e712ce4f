"""The ``gaussian-dac`` autoencoder: GaussianDAC, the 44.1 kHz waveform VAE of the official
SoundCTM-DiT (docs/official-models.md §B, the GaussianDAC paragraph).

* :class:`GaussianDACAutoencoder`: mono audio ``[B, n]`` at 44.1 kHz <-> latents ``[B, 64, T]``,
  one latent frame per ``hop = prod(encoder_rates)`` samples (1024 in the official model). A
  self-contained torch implementation of the DAC architecture (Snake activations, residual units
  with dilations 1, 3, 9, strided and transposed strided convolutions) with the Gaussian
  bottleneck of the official ``sa_edm/dac/model/dac.py``; no descript-audio-codec (it imports
  torchaudio). Built from JSON parameters only (the constructor kwargs of the official file).
* :func:`soundctm.builtin.official.gaussian_dac_weights.from_official_gaussian_dac` reads the
  official ``gaussiandac/weights.pth``
  (``{"state_dict": ..., "metadata": {"kwargs": ...}}``) and ``z_stats.pth``
  (``{"z_mean": (64,), "z_std": (64,)}``) and returns the card parameters, the state dict and a
  summary.

Weight norm: the official convolutions are ``torch.nn.utils.weight_norm`` ones (old-style
``weight_g`` / ``weight_v`` keys), and the official inference removes the weight norm before use
(``build_stage1_models`` in ``sa_edm/models_edm.py`` calls ``remove_weight_norm``). The converter
does the same once: it folds every pair into a plain ``weight = g * v / ||v||`` (norm over all
axes but 0, ``torch._weight_norm``, the function both of torch's weight-norm implementations
call), so this module has plain convolutions: what the official runs, nothing recomputed per
call, and a plain graph for ``torch.export`` / ONNX. The autoencoder is frozen in soundctm (it
encodes training data and decodes samples), so the reparametrisation, which only matters to
its own GAN training, is not kept.

State-dict keys (stable; the file format of ``autoencoder.safetensors``), as released with
``weight`` for each ``weight_g`` / ``weight_v`` pair:

* ``encoder.block.0`` (conv 1 -> ``encoder_dim``, kernel 7); ``encoder.block.<1..n>`` one
  :class:`EncoderBlock` per rate (``.block.<0,1,2>`` residual units, ``.block.3.alpha``,
  ``.block.4`` the strided conv that doubles the width); ``encoder.block.<n+1>.alpha``,
  ``encoder.block.<n+2>`` (conv -> ``2 * latent_dim``, kernel 3);
* ``pre_conv`` (1x1, ``2 latent_dim`` -> ``2 latent_dim``: the posterior mean and log-variance),
  ``post_conv`` (1x1, ``latent_dim`` -> ``latent_dim``);
* ``decoder.model.0`` (conv ``latent_dim`` -> ``decoder_dim``, kernel 7);
  ``decoder.model.<1..m>`` one :class:`DecoderBlock` per rate (``.block.0.alpha``, ``.block.1``
  the transposed conv that halves the width, ``.block.<2,3,4>`` residual units);
  ``decoder.model.<m+1>.alpha``, ``decoder.model.<m+2>`` (conv -> 1, kernel 7), then tanh;
* a residual unit ``....block.<0..3>``: Snake (``alpha``), conv kernel 7 dilated, Snake, conv 1x1;
* ``z_mean`` / ``z_std`` (``latent_dim`` each): the latent statistics of ``z_stats.pth``, kept as
  buffers beside the weights they were measured on (the card stays readable, and the values
  are stored exactly, as float32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.engine.components import CheckpointWeights
from soundctm.engine.dsp import check_rank
from soundctm.errors import InvalidArgumentError

#: The official sample rate (mono).
SAMPLE_RATE = 44100

#: The official clip: 10.031 s, cropped to ``int(10.031 * 44100)`` = 442,367 samples; its latent
#: has ``ceil(442367 / 1024)`` = 432 frames.
OFFICIAL_SECONDS = 10.031

#: The posterior log-variance is clamped to this range (the official
#: ``DiagonalGaussianDistribution``, ``sa_edm/dac/model/distributions.py``).
LOGVAR_RANGE = (-30.0, 20.0)

#: The architecture parameters, all required (read them from the official file with
#: :func:`from_official_gaussian_dac`); ``sample_rate`` defaults to 44100.
ARCHITECTURE = ("encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates")

#: The dilations of the three residual units of every block.
DILATIONS = (1, 3, 9)

#: Upper bounds checked before anything is built (an absurd card fails at once).
LIMITS = {"dim": 1 << 14, "rate": 1 << 10, "levels": 16, "hop": 1 << 16}


# ---------------------------------------------------------------------------- network
def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake: ``x + sin(alpha x)^2 / (alpha + 1e-9)`` per channel (DAC's ``snake``)."""
    return x + torch.reciprocal(alpha + 1e-9) * torch.sin(alpha * x).pow(2)


class Snake1d(nn.Module):
    """Snake with a learned ``alpha`` of shape ``(1, channels, 1)`` (key ``alpha``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return snake(x, self.alpha)


class ResidualUnit(nn.Module):
    """``x + conv1x1(snake(conv7_dilated(snake(x))))``; the dilated conv is padded by
    ``3 * dilation`` on each side, so the length is kept (the official's centre crop of ``x``
    for a shorter branch never applies and is left out)."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            nn.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            nn.Conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Three residual units at ``dim / 2`` channels, Snake, then a conv of kernel
    ``2 stride``, ``stride``, padding ``ceil(stride / 2)`` to ``dim`` channels (length / stride
    for an even stride and a length divisible by it)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            *(ResidualUnit(half, d) for d in DILATIONS),
            Snake1d(half),
            nn.Conv1d(
                half, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, a transposed conv of kernel ``2 stride``, ``stride``, padding
    ``ceil(stride / 2)`` (length x stride for an even stride), then three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim),
            nn.ConvTranspose1d(
                in_dim,
                out_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
            ),
            *(ResidualUnit(out_dim, d) for d in DILATIONS),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACEncoder(nn.Module):
    """Audio ``[B, 1, n]`` -> ``[B, 2 latent_dim, n / hop]`` (the widths double per rate)."""

    def __init__(self, dim: int, rates: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, dim, kernel_size=7, padding=3)]
        for stride in rates:
            dim *= 2
            layers.append(EncoderBlock(dim, stride))
        layers += [Snake1d(dim), nn.Conv1d(dim, 2 * latent_dim, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACDecoder(nn.Module):
    """``[B, latent_dim, T]`` -> audio ``[B, 1, T * prod(rates)]`` in (-1, 1) (the widths halve
    per rate; the last activation is tanh)."""

    def __init__(self, latent_dim: int, dim: int, rates: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(latent_dim, dim, kernel_size=7, padding=3)]
        out_dim = dim
        for i, stride in enumerate(rates):
            in_dim, out_dim = dim // 2**i, dim // 2 ** (i + 1)
            layers.append(DecoderBlock(in_dim, out_dim, stride))
        layers += [Snake1d(out_dim), nn.Conv1d(out_dim, 1, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# ---------------------------------------------------------------------------- parameters
def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(
            f"gaussian-dac {name} must be a whole number in [{low}, {high}], got {value!r}"
        )
    return int(value)


def _rates(value: Any, name: str) -> list[int]:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= LIMITS["levels"]:
        raise InvalidArgumentError(
            f"gaussian-dac {name} must be a list of 1 to {LIMITS['levels']} strides, got {value!r}"
        )
    rates = [_whole(r, name, 2, LIMITS["rate"]) for r in value]
    if any(r % 2 for r in rates):
        # an odd stride s makes the transposed conv give s * T - 1 samples, not s * T
        raise InvalidArgumentError(
            f"gaussian-dac {name} must be even strides (an odd one does not map T frames to "
            f"stride * T samples), got {rates}"
        )
    return rates


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The full, validated parameter dict (lists, ints; ``sample_rate`` 44100 unless given);
    an :class:`~soundctm.errors.InvalidArgumentError` naming the first bad value."""
    allowed = (*ARCHITECTURE, "sample_rate")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"unknown gaussian-dac parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    missing = [k for k in ARCHITECTURE if k not in params]
    if missing:
        raise InvalidArgumentError(
            f"gaussian-dac needs {', '.join(missing)} (the constructor kwargs of the official "
            "weights.pth; read them with from_official_gaussian_dac)"
        )
    out = {
        "encoder_dim": _whole(params["encoder_dim"], "encoder_dim", 1, LIMITS["dim"]),
        "encoder_rates": _rates(params["encoder_rates"], "encoder_rates"),
        "latent_dim": _whole(params["latent_dim"], "latent_dim", 1, LIMITS["dim"]),
        "decoder_dim": _whole(params["decoder_dim"], "decoder_dim", 1, LIMITS["dim"]),
        "decoder_rates": _rates(params["decoder_rates"], "decoder_rates"),
        "sample_rate": _whole(params.get("sample_rate", SAMPLE_RATE), "sample_rate", 1, 768_000),
    }
    hop, up = math.prod(out["encoder_rates"]), math.prod(out["decoder_rates"])
    if hop != up or hop > LIMITS["hop"]:
        raise InvalidArgumentError(
            f"gaussian-dac encoder_rates {out['encoder_rates']} (hop {hop}) and decoder_rates "
            f"{out['decoder_rates']} ({up}) must have the same product, at most {LIMITS['hop']}"
        )
    if out["encoder_dim"] * 2 ** len(out["encoder_rates"]) > LIMITS["dim"]:
        raise InvalidArgumentError(
            f"gaussian-dac encoder_dim {out['encoder_dim']} doubled {len(out['encoder_rates'])} "
            f"times exceeds {LIMITS['dim']} channels"
        )
    if out["decoder_dim"] // 2 ** len(out["decoder_rates"]) < 1:
        raise InvalidArgumentError(
            f"gaussian-dac decoder_dim {out['decoder_dim']} halved "
            f"{len(out['decoder_rates'])} times leaves no channel"
        )
    return out


class GaussianDACAutoencoder(nn.Module, CheckpointWeights):
    """GaussianDAC (the official SoundCTM-DiT's stage 1) as one autoencoder
    (docs/official-models.md §B).

    Parameters (all JSON, they are written to the card): the constructor kwargs of the official
    ``weights.pth`` (``metadata.kwargs``):

    * ``encoder_dim``: the width of the first encoder conv, doubled by each encoder block;
    * ``encoder_rates``: the encoder strides (even); their product is the hop;
    * ``latent_dim``: the latent channels (64 in the official model); the encoder and
      ``pre_conv`` give ``2 * latent_dim`` channels, the posterior mean then the log-variance;
    * ``decoder_dim``: the width of the first decoder conv, halved by each decoder block;
    * ``decoder_rates``: the decoder strides (even), with the same product as ``encoder_rates``;
    * ``sample_rate``: 44100 (mono).

    The official ``double_z`` is always true for a GaussianDAC and is not a parameter; the
    latent statistics are the buffers ``z_mean`` / ``z_std`` (zeros and ones until the
    converted state dict is loaded).

    Lengths: a clip of ``n = round(seconds * sample_rate)`` samples has
    ``T = ceil(n / hop)`` latent frames (at least 1): 10.031 s = 442,367 samples gives 432
    (the official ``(64, 432)``). ``decode`` returns ``hop * T`` samples, rounded up to a whole
    frame (442,368 for 10.031 s), so :attr:`crop_to_clip` is set and the sampler crops to
    ``round(seconds * rate)`` samples; the official crops to ``int(10.031 * 44100)`` = 442,367,
    the same number (``round`` and ``int`` differ only for a fractional part of .5 or more).

    Encoding (the official ``encode_to_latent``): audio clamped to [-1, 1] (the official data
    pipeline clamps), zero-padded on the right to a multiple of the hop, the encoder and
    ``pre_conv``; the channels split into mean and log-variance (clamped to [-30, 20]); ``z``
    is the mean (the default, deterministic) or, with a ``generator``, a posterior sample
    ``mean + exp(logvar / 2) * noise`` (the official training encodes a sample); then the
    network's latent is ``x = (z - z_mean) / z_std * 0.5``.

    Decoding: ``z = 2 * z_std * x + z_mean``, then ``decoder(post_conv(z))`` (``post_conv``
    first, as the official ``GaussianDAC.decode``), ``[B, 1, hop T]`` -> ``[B, hop T]``
    float32 in (-1, 1) (tanh). It traces with ``torch.export`` and exports to ONNX
    (``torch.onnx.export(dynamo=True)``) with a dynamic batch and frame count.
    """

    #: The encoder/decoder weights and the latent statistics go into soundctm checkpoints.
    checkpoint_weights = True
    #: Decoded audio covers whole latent frames, so the sampler crops it to the clip.
    crop_to_clip = True

    @staticmethod
    def expand_params(params: dict[str, Any]) -> dict[str, Any]:
        """Card parameters written out in full (lists, ``sample_rate``), validated."""
        return check_params(params)

    def __init__(
        self,
        *,
        encoder_dim: int,
        encoder_rates: Sequence[int],
        latent_dim: int,
        decoder_dim: int,
        decoder_rates: Sequence[int],
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__()
        cfg = check_params(
            {
                "encoder_dim": encoder_dim,
                "encoder_rates": encoder_rates,
                "latent_dim": latent_dim,
                "decoder_dim": decoder_dim,
                "decoder_rates": decoder_rates,
                "sample_rate": sample_rate,
            }
        )
        self.config = cfg
        self.sample_rate = cfg["sample_rate"]
        self.latent_dim = cfg["latent_dim"]
        #: Audio samples per latent frame: ``prod(encoder_rates)`` (1024 official).
        self.hop_length = math.prod(cfg["encoder_rates"])
        self.encoder = DACEncoder(cfg["encoder_dim"], cfg["encoder_rates"], self.latent_dim)
        self.pre_conv = nn.Conv1d(2 * self.latent_dim, 2 * self.latent_dim, kernel_size=1)
        self.post_conv = nn.Conv1d(self.latent_dim, self.latent_dim, kernel_size=1)
        self.decoder = DACDecoder(self.latent_dim, cfg["decoder_dim"], cfg["decoder_rates"])
        self.register_buffer("z_mean", torch.zeros(self.latent_dim))
        self.register_buffer("z_std", torch.ones(self.latent_dim))

    # -- contract -------------------------------------------------------------------------------
    def frames_for(self, n: int) -> int:
        """Latent frames for ``n`` samples: ``ceil(n / hop)``, at least 1."""
        return max(1, -(-int(n) // self.hop_length))

    def latent_shape(self, seconds: float) -> tuple[int, int]:
        """``(latent_dim, T)`` with ``T = ceil(round(seconds * sample_rate) / hop)``:
        ``(64, 432)`` for the official 10.031 s."""
        return (self.latent_dim, self.frames_for(round(seconds * self.sample_rate)))

    def encode(self, audio: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Audio ``[B, n]`` to latents ``[B, latent_dim, ceil(n / hop)]``: the normalised
        posterior mean, or a posterior sample drawn with ``generator`` when one is given."""
        mean, logvar = self.posterior(audio)
        z = mean
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=generator.device)
            z = mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype)
        return self.normalise(z)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, latent_dim, T]`` to audio ``[B, hop * T]`` (float32)."""
        latents = check_rank(latents, 3, f"latents [B, {self.latent_dim}, T]")
        if latents.shape[1] != self.latent_dim:
            raise InvalidArgumentError(
                f"gaussian-dac latents need shape [B, {self.latent_dim}, T], got "
                f"{tuple(latents.shape)}"
            )
        dtype = self.post_conv.weight.dtype
        z = self.denormalise(latents.to(dtype))
        audio = self.decoder(self.post_conv(z))
        return audio[:, 0].float()

    # -- pieces ---------------------------------------------------------------------------------
    def normalise(self, z: Tensor) -> Tensor:
        """The network's latent ``x = (z - z_mean) / z_std * 0.5`` of a VAE latent ``z``."""
        mean = self.z_mean.to(z.dtype)[None, :, None]
        std = self.z_std.to(z.dtype)[None, :, None]
        return (z - mean) / std * 0.5

    def denormalise(self, x: Tensor) -> Tensor:
        """The VAE latent ``z = 2 * z_std * x + z_mean`` of a network latent ``x``."""
        mean = self.z_mean.to(x.dtype)[None, :, None]
        std = self.z_std.to(x.dtype)[None, :, None]
        return 2 * std * x + mean

    def posterior(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Audio ``[B, n]`` to the posterior mean and log-variance (clamped to [-30, 20]) of
        ``z``, each ``[B, latent_dim, ceil(n / hop)]`` (not normalised)."""
        audio = check_rank(audio, 2, "audio [B, n]")
        if audio.shape[-1] < 1:
            raise InvalidArgumentError("gaussian-dac cannot encode an empty clip")
        dtype = self.pre_conv.weight.dtype
        x = audio.to(dtype).clamp(-1.0, 1.0)
        pad = self.frames_for(x.shape[-1]) * self.hop_length - x.shape[-1]
        x = nn.functional.pad(x, (0, pad))[:, None]
        moments = self.pre_conv(self.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)


__all__ = [
    "ARCHITECTURE",
    "LOGVAR_RANGE",
    "OFFICIAL_SECONDS",
    "SAMPLE_RATE",
    "DACDecoder",
    "DACEncoder",
    "DecoderBlock",
    "EncoderBlock",
    "GaussianDACAutoencoder",
    "ResidualUnit",
    "Snake1d",
    "check_params",
    "snake",
]
