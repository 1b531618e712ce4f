"""The ``mel`` autoencoder: normalised log-mel spectrogram latents, decoded by Griffin-Lim.

Nothing is learned and nothing needs downloading, so the whole toolkit (training, distillation,
sampling, evaluation) runs offline with it. It is a stand-in for a learned VAE + neural vocoder
(AudioLDM's 64-bin mel at 16 kHz, n_fft 1024, hop 160, f_max 8 kHz, uses the same front end).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from soundctm.engine.components import CheckpointWeights, PhaseRetrieval
from soundctm.engine.dsp import (
    PHASE_FLOOR,
    frame_signal,
    mel_filterbank,
    overlap_add,
    reflect_pad,
    unit_phase_planes,
)
from soundctm.errors import InvalidArgumentError

#: The log floor: smaller magnitudes are clipped (AudioLDM / HiFi-GAN: ``log(clamp(x, 1e-5))``).
LOG_FLOOR = 1e-5

#: Mean and standard deviation of ``log(max(mel, 1e-5))`` measured on synthetic clips (see
#: :class:`MelAutoencoder`); they turn log-mels into latents with a std close to ``sigma_data``.
LOG_MEL_MEAN = -7.9
LOG_MEL_STD = 3.77


#: Griffin-Lim runs on at most this many STFT samples (clips x frames x n_fft) at once when run
#: eagerly: two 3-second clips of the default codec (95 frames of 1024).
GRIFFIN_LIM_CHUNK = 1 << 18

#: Upper bounds checked before the filterbank is built (an absurd card fails at once instead of
#: allocating a filterbank of ``n_mels x n_fft`` values or looping for hours).
MEL_LIMITS: dict[str, int] = {
    "sample_rate": 768_000,
    "n_fft": 1 << 16,
    "n_mels": 4096,
    "griffin_lim_iters": 100_000,
}


class MelAutoencoder(nn.Module, PhaseRetrieval, CheckpointWeights):
    """Log-mel latents ``[B, n_mels, frames]`` with a Griffin-Lim decoder; nothing to train.

    Encode: STFT (periodic Hann window, ``center=True``, reflect padding) of the audio padded with
    zeros to ``frames * hop_length`` samples, ``frames = ceil(n / hop_length)``; magnitude; a
    Slaney-scale, Slaney-normalised mel filterbank (:func:`mel_filterbank`); ``log(max(., 1e-5))``;
    then the FIXED affine map ``latent = (log_mel - log_mean) * sigma_data / log_std``. The
    constants (``LOG_MEL_MEAN = -7.9``, ``LOG_MEL_STD = 3.77``) were measured once on 300 real
    SynthCaps train clips (3 s at 16 kHz): pooled log-mel mean -7.90, std 3.77, so their latents
    have std 0.50 = ``sigma_data``. On the peak-normalised synthetic mix of tests/test_mel.py
    (``synthetic_clips``: sines, square waves, chirps, bells, noise; pooled mean -7.13, std 4.42)
    the latent std is about 0.59. A single clip's latents can be offset and narrower or wider;
    nothing is estimated at run time.

    Decode: undo the affine map and the log; a linear magnitude spectrogram from the mel
    pseudo-inverse (``torch.linalg.pinv`` of the filterbank, clamped at 0); phase by fast
    Griffin-Lim (Perraudin et al. 2013; Griffin & Lim 1984) with ``griffin_lim_iters`` iterations,
    momentum 0.99 and a zero initial phase (deterministic), then an inverse STFT of exactly
    ``frames * hop_length`` samples. Shapes depend only on the input shape (no data-dependent
    control flow) and the STFT is written with real tensors (``unfold``, ``rfft``/``irfft``,
    ``fold``), so ``decode`` exports to ONNX (``torch.onnx.export(dynamo=True)``, opset 18).

    Quality limits, honestly: Griffin-Lim leaves audible phase artefacts (a phasey, "metallic"
    or reverberant sound, smeared transients). Re-encoding the decoded audio gives a mel
    spectral convergence (:func:`spectral_convergence`) of about 0.08 (noise, noise bursts) to
    0.20 (pure tones), 0.14 on average, with 32 iterations; 64 mel bands lose the fine frequency
    resolution above about 1 kHz (harmonics closer than a band merge, pitch is only as exact as
    the band spacing), content above ``f_max`` is lost, and everything below the log floor
    (about -100 dB) becomes silence. Good enough to train, test and compare models offline; not a
    substitute for a neural vocoder.

    ``latent_shape(seconds)`` gives ``frames = ceil(seconds * sample_rate / hop_length)`` and
    ``decode`` returns ``frames * hop_length`` samples: exactly ``seconds * sample_rate`` when that
    is a multiple of the hop (every multiple of 10 ms with the defaults), otherwise rounded up.
    10.24 s gives AudioLDM's 1024 frames.
    """

    #: Nothing to store in a checkpoint: the buffers follow from the constructor arguments.
    checkpoint_weights = False

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        sigma_data: float = 0.5,
        griffin_lim_iters: int = 32,
        momentum: float = 0.99,
        log_mean: float = LOG_MEL_MEAN,
        log_std: float = LOG_MEL_STD,
    ) -> None:
        super().__init__()
        limits = {
            "sample_rate": (sample_rate, MEL_LIMITS["sample_rate"]),
            "n_fft": (n_fft, MEL_LIMITS["n_fft"]),
            "n_mels": (n_mels, MEL_LIMITS["n_mels"]),
            "griffin_lim_iters": (griffin_lim_iters, MEL_LIMITS["griffin_lim_iters"]),
        }
        for name, (value, limit) in limits.items():
            if value > limit:
                raise InvalidArgumentError(
                    f"mel {name} must be at most {limit:,}, got {value:,}; the card or settings "
                    "are wrong"
                )
        if sample_rate < 1:
            raise InvalidArgumentError(f"mel sample_rate must be positive, got {sample_rate}")
        if hop_length < 1 or hop_length > n_fft or n_fft < 2:
            raise InvalidArgumentError(
                f"need 1 <= hop_length <= n_fft, got hop_length={hop_length}, n_fft={n_fft}"
            )
        if n_mels < 1 or griffin_lim_iters < 0 or sigma_data <= 0 or log_std <= 0:
            raise InvalidArgumentError(
                "need n_mels >= 1, griffin_lim_iters >= 0, sigma_data > 0 and log_std > 0"
            )
        if not 0 <= momentum < 1:
            raise InvalidArgumentError(f"Griffin-Lim momentum must be in [0, 1), got {momentum}")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.sigma_data = float(sigma_data)
        self.griffin_lim_iters = int(griffin_lim_iters)
        # iterative phase retrieval: exported decoders are checked on the spectrogram
        self.phase_retrieval = self.griffin_lim_iters > 0
        self.momentum = float(momentum)
        self.log_mean = float(log_mean)
        self.log_std = float(log_std)
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, f_min, f_max)
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer(
            "filterbank_pinv", torch.linalg.pinv(fb.double()).float(), persistent=False
        )
        self.register_buffer(
            "window", torch.hann_window(self.n_fft, periodic=True), persistent=False
        )

    # -- contract -------------------------------------------------------------------------------
    def latent_shape(self, seconds: float) -> tuple[int, int]:
        """``(n_mels, frames)`` for a clip of ``seconds``."""
        n = round(seconds * self.sample_rate)
        return (self.n_mels, self.frames_for(n))

    def frames_for(self, n: int) -> int:
        """Number of latent frames for ``n`` samples: ``ceil(n / hop_length)`` (at least 1)."""
        return max(1, -(-int(n) // self.hop_length))

    def encode(self, audio: Tensor) -> Tensor:
        """Audio ``[B, n]`` (float, about [-1, 1]) to latents ``[B, n_mels, ceil(n / hop)]``."""
        audio = self._check(audio, 2, "audio [B, n]")
        return self.normalise(torch.log(self.mel(audio).clamp_min(LOG_FLOOR)))

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, n_mels, frames]`` to audio ``[B, frames * hop_length]``."""
        latents = self._check(latents, 3, "latents [B, n_mels, frames]")
        if latents.shape[1] != self.n_mels:
            raise InvalidArgumentError(
                f"mel latents need {self.n_mels} channels, got {latents.shape[1]}"
            )
        magnitude = self.magnitude(latents)
        length = latents.shape[-1] * self.hop_length
        rows = max(1, GRIFFIN_LIM_CHUNK // (magnitude.shape[1] * self.n_fft))
        if torch.compiler.is_compiling() or magnitude.shape[0] <= rows:
            return self.griffin_lim(magnitude, length)
        # eagerly, a few clips at a time: their working set stays in the CPU caches (measured:
        # 8 clips of 3 s in pairs 1.4x faster than at once); every row is computed alone anyway
        chunks = magnitude.split(rows)
        return torch.cat([self.griffin_lim(m, length) for m in chunks])

    def magnitude(self, latents: Tensor) -> Tensor:
        """The linear magnitude spectrogram ``[B, frames + 1, n_fft // 2 + 1]`` that
        :meth:`decode` gives Griffin-Lim: the mel pseudo-inverse of ``exp(denormalise(z))``,
        clamped at 0. The STFT of ``frames * hop`` samples (``center=True``) has one frame more
        than the latents: the last one is repeated."""
        mel = torch.exp(self.denormalise(latents.float()))
        magnitude = torch.einsum("fm,bmt->btf", self.filterbank_pinv, mel).clamp_min(0.0)
        return torch.cat([magnitude, magnitude[:, -1:]], dim=1)

    def griffin_lim_settings(self) -> dict[str, Any] | None:
        """The settings of :meth:`griffin_lim` for a host implementation
        (:mod:`soundctm.export.phase`; ``export.json phase_retrieval``), or None when there is
        no iteration or the hop does not divide n_fft."""
        if self.griffin_lim_iters == 0 or self.n_fft % self.hop_length:
            return None
        return {
            "algorithm": "fast-griffin-lim",
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "iterations": self.griffin_lim_iters,
            "momentum": self.momentum,
            "window": "hann",
            "center": True,
            "phase_floor": PHASE_FLOOR,
        }

    # -- pieces ---------------------------------------------------------------------------------
    def normalise(self, log_mel: Tensor) -> Tensor:
        """``(log_mel - log_mean) * sigma_data / log_std`` (fixed constants)."""
        return (log_mel - self.log_mean) * (self.sigma_data / self.log_std)

    def denormalise(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`."""
        return latents * (self.log_std / self.sigma_data) + self.log_mean

    def stft(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Real and imaginary parts ``[B, n / hop + 1, n_fft // 2 + 1]`` of the STFT of ``[B, n]``.

        Same as ``torch.stft(center=True, pad_mode="reflect", window=hann)``, written with
        ``unfold`` + ``rfft`` and real tensors so that it exports to ONNX (DFT op)."""
        spec = self._spectrum(audio)
        return spec.real, spec.imag

    def _spectrum(self, audio: Tensor) -> Tensor:
        """The complex STFT of :meth:`stft`."""
        half = self.n_fft // 2
        if audio.shape[-1] > half:
            padded = reflect_pad(audio, half)
        else:
            padded = nn.functional.pad(audio, (half, half))
        return torch.fft.rfft(frame_signal(padded, self.n_fft, self.hop_length) * self.window)

    def istft(self, real: Tensor, imag: Tensor, length: int) -> Tensor:
        """Inverse of :meth:`stft`: windowed overlap-add divided by the summed squared window
        (the least-squares inverse of Griffin & Lim 1984, eq. 6), cropped to ``length``."""
        return self._synthesis(torch.complex(real, imag), self.envelope(real.shape[1], length))

    def envelope(self, count: int, length: int) -> Tensor:
        """``sum_k w^2(n - k hop)`` (at least 1e-11) over the ``length`` samples that an inverse
        STFT of ``count`` frames keeps (the denominator of Griffin & Lim 1984, eq. 6);
        ``[1, length]``."""
        win_sq = (self.window * self.window).expand(1, count, self.n_fft)
        half = self.n_fft // 2
        envelope = overlap_add(win_sq, self.hop_length, half, length)
        return envelope.clamp_min(1e-11)

    def _synthesis(self, spec: Tensor, envelope: Tensor) -> Tensor:
        """Windowed overlap-add of the inverse DFTs of a complex spectrum, cropped to the
        envelope's length and divided by it (:meth:`istft`)."""
        frames = torch.fft.irfft(spec, n=self.n_fft) * self.window
        length = envelope.shape[-1]
        return overlap_add(frames, self.hop_length, self.n_fft // 2, length) / envelope

    def mel(self, audio: Tensor) -> Tensor:
        """Linear mel magnitude ``[B, n_mels, ceil(n / hop)]`` of audio ``[B, n]``."""
        frames = self.frames_for(audio.shape[-1])
        audio = nn.functional.pad(audio.float(), (0, frames * self.hop_length - audio.shape[-1]))
        real, imag = self.stft(audio)
        magnitude = torch.sqrt(real * real + imag * imag)[:, :frames]
        return torch.einsum("mf,btf->bmt", self.filterbank, magnitude)

    def griffin_lim(self, magnitude: Tensor, length: int) -> Tensor:
        """Fast Griffin-Lim (Perraudin, Balazs & Sondergaard 2013, eq. 4-5) for a magnitude
        ``[B, frames, n_fft // 2 + 1]``: alternate projections onto consistent spectrograms
        (``stft(istft(.))``) and onto the given magnitude, with the momentum step
        ``c_n = t_n - alpha / (1 + alpha) * t_{n-1}`` (torchaudio's convention). The initial
        phase is zero, so the result is deterministic. Complex numbers are kept as (real,
        imaginary) pairs of real tensors (it exports to ONNX; on the CPU this is also faster
        than complex tensors)."""
        envelope = self.envelope(magnitude.shape[1], length)
        phase = torch.zeros(2, *magnitude.shape, dtype=magnitude.dtype, device=magnitude.device)
        phase[0] = 1.0  # phase 0: (cos, sin) = (1, 0)
        prev: Tensor | None = None
        beta = self.momentum / (1 + self.momentum)
        unit = phase[:, :1, :1, :1].clone()  # (1, 0): the phase of near-silent bins
        for _ in range(self.griffin_lim_iters):
            spec = self._spectrum(self._synthesis(self._complex(magnitude * phase), envelope))
            pair = self._planes(spec)
            # the momentum step; on the first pass t_{n-1} = 0 and t - beta * 0 = t exactly
            phase = unit_phase_planes(pair if prev is None else pair - beta * prev, unit=unit)
            prev = pair
        return self._synthesis(self._complex(magnitude * phase), envelope)

    @staticmethod
    def _complex(pair: Tensor) -> Tensor:
        """``pair[0] + i pair[1]`` for ``[2, ...]`` planes."""
        return torch.complex(pair[0], pair[1])

    @staticmethod
    def _planes(spec: Tensor) -> Tensor:
        """``[real, imag]`` planes ``[2, ...]`` of a complex tensor (a contiguous copy: the
        following operations on it are faster than on a strided view)."""
        return torch.stack([spec.real, spec.imag])

    @staticmethod
    def _check(x: Tensor, dim: int, what: str) -> Tensor:
        if x.dim() != dim:
            raise InvalidArgumentError(f"expected {what}, got shape {tuple(x.shape)}")
        return x.float()
