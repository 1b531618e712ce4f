"""The ``audioldm`` autoencoder: AudioLDM's mel VAE with its HiFi-GAN vocoder, the stage 1 of the
official SoundCTM-UNet (docs/method.md §6; the facts are those of
docs/official-models.md §A, "Stage 1" and "Mel front end").

* :class:`AudioLDMAutoencoder`: audio ``[B, n]`` at 16 kHz <-> latents ``[B, 8, T, 16]``. The VAE
  is a diffusers ``AutoencoderKL`` over a log-mel "image" (time x 64 mel bins), the vocoder a
  transformers ``SpeechT5HifiGan``. Built from JSON parameters only; its weights are stored in
  soundctm checkpoints like any module's.
* :func:`soundctm.builtin.official.audioldm_stage1.from_official_stage1` reads the official
  Lightning checkpoint ``audioldm-s-full.ckpt``
  and returns the card parameters, the state dict and a summary (sizes read from the weights).

State-dict keys (stable; they are the file format of ``autoencoder.safetensors``):
``vae.<diffusers AutoencoderKL name>`` (``vae.encoder.conv_in.weight``, ...,
``vae.quant_conv.*``, ``vae.post_quant_conv.*``) and ``vocoder.<SpeechT5HifiGan name>``
(``vocoder.conv_pre.*``, ``vocoder.upsampler.<i>.*``, ``vocoder.resblocks.<j>.convs{1,2}.<k>.*``,
``vocoder.conv_post.*`` and the buffers ``vocoder.mean`` / ``vocoder.scale``, zeros and ones:
``normalize_before`` is off). The mel filterbank and the window are not stored (they follow from
the parameters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from soundctm.engine.components import CheckpointWeights
from soundctm.engine.dsp import check_rank, frame_signal, mel_filterbank
from soundctm.errors import InvalidArgumentError

#: ``log(clamp(mel, 1e-5))``: the log floor of AudioLDM's (and HiFi-GAN's) mel front end.
LOG_FLOOR = 1e-5

#: Clips are peak-normalised to this amplitude, before and after padding (official front end).
PEAK = 0.5

#: The posterior log-variance is clamped to this range (LDM's diagonal Gaussian).
LOGVAR_RANGE = (-30.0, 20.0)

#: The AudioLDM VAE of ``audioldm-s-full`` (the sizes the converter reads from the weights).
OFFICIAL_VAE: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [128, 256, 512],
    "latent_channels": 8,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

#: Its HiFi-GAN (16 kHz, 64 mel bins, hop 160 = 5*4*2*2*2).
OFFICIAL_VOCODER: dict[str, Any] = {
    "model_in_dim": 64,
    "upsample_initial_channel": 1024,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "leaky_relu_slope": 0.1,
}

VAE_PREFIX = "first_stage_model."
VOCODER_PREFIX = "first_stage_model.vocoder."


def _merged(name: str, given: Mapping[str, Any] | None, official: dict[str, Any]) -> dict[str, Any]:
    """``official`` updated by ``given``; unknown keys are an error naming the allowed ones."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(official))
    if unknown:
        raise InvalidArgumentError(
            f"unknown audioldm {name} parameter(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(official)}"
        )
    merged = {**official, **given}
    # JSON-able and comparable: lists, not tuples
    return {k: _listify(v) for k, v in merged.items()}


def _listify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    return value


def vae_kwargs(vae: Mapping[str, Any]) -> dict[str, Any]:
    """The ``diffusers.AutoencoderKL`` keyword arguments of a ``vae`` parameter dict: one
    ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` per entry of ``block_out_channels``."""
    levels = len(vae["block_out_channels"])
    return {
        **dict(vae),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def build_vae(vae: Mapping[str, Any]) -> nn.Module:
    """A diffusers ``AutoencoderKL`` (random weights) for a ``vae`` parameter dict."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_kwargs(vae))


def build_vocoder(vocoder: Mapping[str, Any], sample_rate: int) -> nn.Module:
    """A transformers ``SpeechT5HifiGan`` (random weights, ``normalize_before=False``)."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    config = SpeechT5HifiGanConfig(
        **dict(vocoder), sampling_rate=int(sample_rate), normalize_before=False
    )
    return SpeechT5HifiGan(config)


class AudioLDMAutoencoder(nn.Module, CheckpointWeights):
    """AudioLDM's VAE + HiFi-GAN vocoder as one autoencoder (docs/official-models.md §A).

    Parameters (all JSON, they are written to the card):

    * ``scale_factor``: the latent scale of the official checkpoint (its ``scale_factor``
      tensor): ``latent = scale_factor * z`` and ``z = latent / scale_factor``. Required: read
      it with :func:`from_official_stage1`.
    * ``vae``: ``AutoencoderKL`` sizes, any of ``in_channels`` (1), ``out_channels`` (1),
      ``block_out_channels`` ([128, 256, 512]; one level each, the VAE downsamples time and
      mel bins by ``2 ** (levels - 1)`` = 4), ``latent_channels`` (8), ``layers_per_block`` (2),
      ``norm_num_groups`` (32). Missing keys take these official values.
    * ``vocoder``: ``SpeechT5HifiGanConfig`` fields, any of ``model_in_dim`` (64 = mel bins),
      ``upsample_initial_channel`` (1024), ``upsample_rates`` ([5, 4, 2, 2, 2], their product is
      the hop), ``upsample_kernel_sizes`` ([16, 16, 8, 4, 4]), ``resblock_kernel_sizes``
      ([3, 7, 11]), ``resblock_dilation_sizes`` ([[1, 3, 5]] * 3), ``leaky_relu_slope`` (0.1).
    * ``sample_rate`` (16000), ``n_fft`` (1024 = window), ``hop_length`` (160, must equal the
      vocoder's upsampling), ``f_min`` / ``f_max`` (0 / 8000 Hz): the mel front end.

    Lengths: a clip of ``n = round(seconds * sample_rate)`` samples has
    ``frames = 4 * ceil(n / 640)`` mel frames (``ceil(n / hop)`` rounded up to a multiple of the
    VAE's downsampling 4) and ``T = frames / 4`` latent frames; the latent is
    ``(8, T, 64 / 4 = 16)``. 10.24 s gives 1024 frames and ``T = 256`` (the official training
    length), 10 s gives ``T = 250``. ``decode`` returns ``hop * frames = 640 * T`` samples
    (the vocoder makes ``160 * frames + 32``, the tail is cropped): exactly ``n`` when ``seconds``
    is a multiple of 40 ms (10 s: 160,000 samples, the official crop), otherwise rounded up.

    Encoding (the official front end): per clip remove the mean, divide by ``max|x| + 1e-8``
    and scale to 0.5; zero-pad or crop from the start to ``hop * frames`` samples; peak-normalise
    to 0.5 again (a silent clip stays silent); STFT with a periodic Hann window of ``n_fft``,
    reflect padding ``n_fft / 2`` on each side, magnitude; Slaney mel filterbank (librosa's
    default, Slaney scale and area normalisation: :func:`~soundctm.engine.dsp.mel_filterbank`);
    ``log(clamp(., 1e-5))``; the ``frames + 1`` STFT frames cropped to ``frames``. The VAE
    encoder and ``quant_conv`` give the posterior mean and log-variance (clamped to [-30, 20]);
    the latent is ``scale_factor`` times the mean (the default) or a sample.

    Decoding: ``mel = vae.decode(latents / scale_factor)`` (``[B, 1, frames, 64]``), the
    vocoder on ``[B, frames, 64]``, cropped. It traces with ``torch.export`` and exports to ONNX
    (``torch.onnx.export(dynamo=True)``). No phase retrieval: a neural vocoder.
    """

    #: The VAE and vocoder weights go into soundctm checkpoints.
    checkpoint_weights = True
    #: Latent lengths are rounded up (``latent_multiple``), so the sampler crops the audio to
    #: the clip, as the official crops its 10.24 s to 10 s.
    crop_to_clip = True

    @staticmethod
    def expand_params(params: dict[str, Any]) -> dict[str, Any]:
        """Card parameters with the ``vae`` and ``vocoder`` dicts written out in full, so a
        checkpoint never depends on the defaults of this module."""
        params = dict(params)
        params["vae"] = _merged("vae", params.get("vae"), OFFICIAL_VAE)
        params["vocoder"] = _merged("vocoder", params.get("vocoder"), OFFICIAL_VOCODER)
        return params

    def __init__(
        self,
        *,
        scale_factor: float,
        vae: dict[str, Any] | None = None,
        vocoder: dict[str, Any] | None = None,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 160,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        latent_multiple: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(latent_multiple, bool) or not isinstance(latent_multiple, int):
            raise InvalidArgumentError(
                f"audioldm latent_multiple must be an int, got {latent_multiple!r}"
            )
        if latent_multiple < 1:
            raise InvalidArgumentError(
                f"audioldm latent_multiple must be >= 1, got {latent_multiple}"
            )
        #: Latent frames are rounded up to a multiple of this (8 for the official UNet, whose
        #: three downsamplings need it: 10 s -> 250 -> 256 latent frames, 10.24 s, as the
        #: official generates; the sampler crops the decoded audio to the clip length).
        self.latent_multiple = latent_multiple
        vae_cfg = _merged("vae", vae, OFFICIAL_VAE)
        voc_cfg = _merged("vocoder", vocoder, OFFICIAL_VOCODER)
        scale = float(scale_factor)
        if not math.isfinite(scale) or scale <= 0:
            raise InvalidArgumentError(f"audioldm scale_factor must be > 0, got {scale_factor!r}")
        upsampling = math.prod(int(u) for u in voc_cfg["upsample_rates"])
        if int(hop_length) != upsampling:
            raise InvalidArgumentError(
                f"audioldm hop_length {hop_length} must equal the vocoder's upsampling "
                f"{upsampling} (the product of upsample_rates {voc_cfg['upsample_rates']})"
            )
        if not 1 <= int(hop_length) <= int(n_fft):
            raise InvalidArgumentError(f"need 1 <= hop_length <= n_fft, got {hop_length}, {n_fft}")
        levels = len(vae_cfg["block_out_channels"])
        if levels < 1:
            raise InvalidArgumentError("audioldm vae block_out_channels must not be empty")
        self.downsampling = 2 ** (levels - 1)
        self.n_mels = int(voc_cfg["model_in_dim"])
        if self.n_mels % self.downsampling:
            raise InvalidArgumentError(
                f"audioldm vocoder model_in_dim {self.n_mels} (mel bins) must be divisible by the "
                f"VAE's downsampling {self.downsampling}"
            )
        if int(vae_cfg["in_channels"]) != 1 or int(vae_cfg["out_channels"]) != 1:
            raise InvalidArgumentError("audioldm vae in_channels and out_channels must be 1")
        self.scale_factor = scale
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.latent_channels = int(vae_cfg["latent_channels"])
        self.vae_config = vae_cfg
        self.vocoder_config = voc_cfg
        self.vae = build_vae(vae_cfg)
        self.vocoder = build_vocoder(voc_cfg, self.sample_rate)
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, f_min, f_max)
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer(
            "window", torch.hann_window(self.n_fft, periodic=True), persistent=False
        )

    # -- contract -------------------------------------------------------------------------------
    @property
    def samples_per_latent_frame(self) -> int:
        """Audio samples per latent frame: ``hop_length * downsampling`` (640)."""
        return self.hop_length * self.downsampling

    def frames_for(self, n: int) -> int:
        """Mel frames for ``n`` samples: ``ceil(n / hop)`` rounded up to a multiple of the VAE's
        downsampling times ``latent_multiple`` (at least one latent frame)."""
        latent = max(1, -(-int(n) // self.samples_per_latent_frame))
        latent = -(-latent // self.latent_multiple) * self.latent_multiple
        return latent * self.downsampling

    def latent_shape(self, seconds: float) -> tuple[int, int, int]:
        """``(latent_channels, T, n_mels / downsampling)``, ``(8, T, 16)``, for a clip of
        ``seconds`` (``T = ceil(round(seconds * sample_rate) / 640)``)."""
        frames = self.frames_for(round(seconds * self.sample_rate))
        return (
            self.latent_channels,
            frames // self.downsampling,
            self.n_mels // self.downsampling,
        )

    def encode(
        self,
        audio: Tensor,
        *,
        frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Audio ``[B, n]`` to latents ``[B, 8, frames / 4, 16]``: ``scale_factor`` times the
        posterior mean, or a posterior sample drawn with ``generator`` when one is given.
        ``frames`` (a multiple of 4) fixes the mel length (the official training pads or crops
        every clip to 1024 frames, 10.24 s); by default :meth:`frames_for` of ``n``."""
        mean, logvar = self.posterior(audio, frames=frames)
        if generator is None:
            return self.scale_factor * mean
        noise = torch.randn(mean.shape, generator=generator, device=generator.device)
        z = mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype)
        return self.scale_factor * z

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, 8, T, 16]`` to audio ``[B, 640 * T]`` (see the class docstring)."""
        return self.vocode(self.decode_mel(latents))

    # -- pieces ---------------------------------------------------------------------------------
    def prepare(self, audio: Tensor, frames: int) -> Tensor:
        """The official waveform normalisation: ``[B, n]`` -> ``[B, hop * frames]`` (mean
        removed, peak 0.5, padded with zeros or cropped from the start, peak 0.5 again)."""
        x = audio - audio.mean(dim=-1, keepdim=True)
        x = PEAK * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-8)
        length = frames * self.hop_length
        x = nn.functional.pad(x, (0, max(0, length - x.shape[-1])))[:, :length]
        # the official divides by the peak without an epsilon (silence becomes NaN, then 0)
        peak = x.abs().amax(dim=-1, keepdim=True)
        x = PEAK * x / peak.clamp_min(torch.finfo(x.dtype).tiny)
        return x.clamp(-1.0, 1.0)

    def log_mel(self, audio: Tensor, *, frames: int | None = None) -> Tensor:
        """The official log-mel ``[B, frames, n_mels]`` (time x mel) of audio ``[B, n]``,
        normalised by :meth:`prepare` first."""
        audio = check_rank(audio, 2, "audio [B, n]").float()
        frames = self._check_frames(audio.shape[-1] if frames is None else frames, frames is None)
        x = self.prepare(audio, frames)
        half = self.n_fft // 2
        padded = nn.functional.pad(x[:, None], (half, half), mode="reflect")[:, 0]
        spec = torch.fft.rfft(frame_signal(padded, self.n_fft, self.hop_length) * self.window)
        magnitude = torch.sqrt(spec.real * spec.real + spec.imag * spec.imag)[:, :frames]
        mel = torch.einsum("btf,mf->btm", magnitude, self.filterbank)
        return torch.log(mel.clamp_min(LOG_FLOOR))

    def posterior(self, audio: Tensor, *, frames: int | None = None) -> tuple[Tensor, Tensor]:
        """Unscaled posterior ``(mean, logvar)``, each ``[B, 8, frames / 4, 16]``, of audio
        ``[B, n]``: ``quant_conv(encoder(log_mel[:, None]))`` split in halves, the log-variance
        clamped to [-30, 20]."""
        mel = self.log_mel(audio, frames=frames)
        vae: Any = self.vae
        dtype = next(vae.parameters()).dtype
        moments = vae.quant_conv(vae.encoder(mel[:, None].to(dtype)))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode_mel(self, latents: Tensor) -> Tensor:
        """Latents ``[B, 8, T, 16]`` to the VAE's log-mel ``[B, 4 T, n_mels]``:
        ``vae.decode(latents / scale_factor)``."""
        latents = check_rank(latents, 4, "latents [B, channels, T, mel/4]")
        want = (self.latent_channels, self.n_mels // self.downsampling)
        if (latents.shape[1], latents.shape[3]) != want:
            raise InvalidArgumentError(
                f"audioldm latents need shape [B, {want[0]}, T, {want[1]}], got "
                f"{tuple(latents.shape)}"
            )
        vae: Any = self.vae
        dtype = next(vae.parameters()).dtype
        mel = vae.decode(latents.to(dtype) / self.scale_factor, return_dict=False)[0]
        return mel[:, 0]

    def vocode(self, mel: Tensor) -> Tensor:
        """Log-mel ``[B, frames, n_mels]`` to audio ``[B, hop * frames]`` with the HiFi-GAN
        (its extra tail samples are cropped)."""
        mel = check_rank(mel, 3, "mel [B, frames, n_mels]")
        audio = self.vocoder(mel)
        return audio[:, : mel.shape[1] * self.hop_length].float()

    def _check_frames(self, value: int, from_samples: bool) -> int:
        if from_samples:
            return self.frames_for(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"frames must be a whole number, got {value!r}")
        if value < self.downsampling or value % self.downsampling:
            raise InvalidArgumentError(
                f"frames must be a positive multiple of {self.downsampling}, got {value}"
            )
        return value


__all__ = [
    "LOGVAR_RANGE",
    "LOG_FLOOR",
    "OFFICIAL_VAE",
    "OFFICIAL_VOCODER",
    "PEAK",
    "AudioLDMAutoencoder",
    "build_vae",
    "build_vocoder",
    "vae_kwargs",
]
