"""The graph modules the exporter traces around any backbone and autoencoder, and the latent
shapes they are exported for (docs/onnx.md).

* :class:`NetworkGraph`: the preconditioned CTM network ``g(x, t, s)`` (method.md §2-3);
* :class:`HalfBackbone`: a float16 copy of a backbone for ``fp16`` exports;
* :class:`DecoderGraph`: latents -> waveform;
* :class:`MagnitudeGraph`: latents -> magnitude spectrogram (Griffin-Lim decoders).

Text encoders bring their own graph (:class:`~soundctm.engine.components.OnnxExportable`).
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.engine.components import Decoder, Encoder
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM

#: The fewest latent frames an exported graph accepts (0.32 s with the mel codec), unless the
#: model's own clip is shorter.
MIN_FRAMES = 32
#: The export check runs the graphs on the shortest clip with this many frames on every frame
#: axis (the card's clip if that is shorter), not on the card's whole clip: a long clip with a
#: fine latent (10 s at hop 8: 55,296 frames) would make the check's attention alone tens of GB.
CHECK_FRAMES = 2 * MIN_FRAMES


class HalfBackbone(nn.Module):
    """A copy of ``backbone`` in float16: latents and text tokens are cast to float16, the
    per-sample ``c_noise`` values and ``omega`` stay float32 (the backbone casts its own
    embeddings), and the output is cast back to float32."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(backbone).half()

    def forward(
        self,
        x: Tensor,
        t_noise: Tensor,
        s_noise: Tensor | None,
        omega: Tensor | None,
        cond: Conditioning,
    ) -> Tensor:
        half = Conditioning(cond.tokens.half(), cond.mask)
        return self.inner(x.half(), t_noise, s_noise, omega, half).float()


class NetworkGraph(nn.Module):
    """``(x, t, s, omega, tokens, mask) -> g(x, t, s)``, the preconditioned CTM network
    ``c_skip(t) x + c_out(t) F(c_in(t) x; c_noise(t), c_noise(s), omega)`` (method.md §2-3).

    For a teacher ``s`` and ``omega`` are ignored and the output is the denoiser ``D(x, t)``.
    The preconditioning is computed in float32 even when the backbone runs in float16.
    """

    def __init__(self, ctm: CTM) -> None:
        super().__init__()
        self.ctm = ctm

    def forward(
        self, x: Tensor, t: Tensor, s: Tensor, omega: Tensor, tokens: Tensor, mask: Tensor
    ) -> Tensor:
        return self.ctm.g(x, t, s, Conditioning(tokens, mask), omega)


class DecoderGraph(nn.Module):
    """``latents [B, *latent_shape] -> audio [B, samples]`` (the autoencoder's decode)."""

    def __init__(self, autoencoder: Decoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latents: Tensor) -> Tensor:
        audio = self.autoencoder.decode(latents)
        return audio.reshape(audio.shape[0], -1).float()


class MagnitudeGraph(nn.Module):
    """``latents -> magnitude [B, frames, n_fft // 2 + 1]``: a Griffin-Lim decoder up to its
    phase retrieval (:class:`~soundctm.engine.components.HostPhaseRetrieval`), for runtimes that
    retrieve the phase on the host (:mod:`soundctm.export.phase`)."""

    def __init__(self, autoencoder: Any) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latents: Tensor) -> Tensor:
        return self.autoencoder.magnitude(latents).float()


# ---------------------------------------------------------------------------- shapes
def frame_axes(autoencoder: Any, seconds: float, max_seconds: float) -> list[int]:
    """The latent axes (0-based, batch excluded) whose size changes with the clip length."""
    a = tuple(autoencoder.latent_shape(max_seconds))
    b = tuple(autoencoder.latent_shape(min(seconds, max_seconds / 2)))
    return [i for i, (p, q) in enumerate(zip(a, b, strict=True)) if p != q]


def check_seconds(autoencoder: Any, seconds: float, axes: list[int]) -> float:
    """The clip length the export check runs the graphs at: the shortest with ``CHECK_FRAMES``
    frames on every frame axis, never past ``seconds`` (the card's clip). It lies inside the
    exported frame range, whose minimum is at most ``MIN_FRAMES``. Without frame axes (a
    fixed-length model) it is ``seconds``."""

    def frames(secs: float) -> int:
        return min(int(autoencoder.latent_shape(secs)[i]) for i in axes)

    if not axes or frames(seconds) <= CHECK_FRAMES:
        return seconds
    secs = seconds * CHECK_FRAMES / frames(seconds)  # frames grow in proportion to the length
    for _ in range(32):
        if frames(secs) >= CHECK_FRAMES:
            return secs
        secs *= 1.05
    return seconds


def samples_per_frame(
    autoencoder: Any, sample_rate: int, seconds: float, max_seconds: float
) -> int | None:
    """``k`` such that ``frames = ceil(round(seconds * sample_rate) / k)`` on the (single) frame
    axis for every length tried, or None (the exported model then only makes ``seconds`` clips)."""
    axes = frame_axes(autoencoder, seconds, max_seconds)
    if len(axes) != 1:
        return None
    axis = axes[0]
    n_max = round(max_seconds * sample_rate)
    k = round(n_max / autoencoder.latent_shape(max_seconds)[axis])
    if k < 1:
        return None
    for frac in (0.05, 0.13, 0.25, 0.31, 0.5, 0.77, 1.0):
        secs = seconds if frac == 1.0 else max_seconds * frac
        n = round(secs * sample_rate)
        if autoencoder.latent_shape(secs)[axis] != max(1, math.ceil(n / k)):
            return None
    return k


def decoder_example(autoencoder: object, sample_rate: int, seconds: float, like: Tensor) -> Tensor:
    """Latents to check the decoder on: the encoding of a tone in noise when the autoencoder can
    encode (:class:`~soundctm.engine.components.Encoder`; decoders such as Griffin-Lim are
    ill-conditioned on random latents), else noise."""
    if isinstance(autoencoder, Encoder):
        n = round(seconds * sample_rate)
        g = torch.Generator().manual_seed(1)
        t = torch.arange(n, dtype=torch.float32) / sample_rate
        audio = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (220.0, 880.0)])
        audio = audio + 0.05 * torch.randn(audio.shape, generator=g)
        with torch.no_grad():
            latents = autoencoder.encode(audio.to(like.device)).to(like.dtype)
        if latents.shape == like.shape:
            return latents
    return like * 0.5


def graph_input_names(module: nn.Module) -> list[str]:
    """The graph input names of a graph module: its forward's parameter names."""
    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


__all__ = [
    "CHECK_FRAMES",
    "MIN_FRAMES",
    "DecoderGraph",
    "HalfBackbone",
    "MagnitudeGraph",
    "NetworkGraph",
    "decoder_example",
    "frame_axes",
    "graph_input_names",
    "samples_per_frame",
]
