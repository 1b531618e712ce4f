"""Audio utilities: loading, mono mixdown, resampling, crop/pad, levels.

soundfile bundles libsndfile, which reads WAV, FLAC, OGG/Vorbis and MP3 with nothing else
installed; torchaudio is deliberately not used (README.md: Why no torchaudio).

Two resamplers:

- :func:`resample_soxr` (and :func:`read_audio`, which uses it): libsoxr's high-quality
  resampler (the ``soxr`` package), on the CPU, not differentiable. Every audio FILE soundctm
  reads goes through it (data sets, evaluation folders, the input of ``vary``): its stop band
  is over 100 dB down, where the windowed sinc below lets a 9 kHz tone through into 16 kHz
  output at -17 dB.
- :func:`resample`: band-limited interpolation with a windowed-sinc low-pass filter (Smith,
  "Digital Audio Resampling", https://ccrma.stanford.edu/~jos/resample/), a polyphase
  ``conv1d`` in pure torch (torchaudio's ``sinc_interp_hann`` / ``sinc_interp_kaiser``). It is
  kept where a torch path is wanted: on the device, inside a graph, differentiable (the
  embedders of ``soundctm eval``, which resample generated audio in memory).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from soundctm.errors import AudioFileError, InvalidArgumentError

#: File suffixes :func:`load_audio` is expected to read (libsndfile decides in the end).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def load_audio(path: str | Path, *, frames: int = -1) -> tuple[Tensor, int]:
    """Read an audio file as ``(float32 tensor [channels, n], sample_rate)``.

    ``frames`` limits the read to the first ``frames`` samples per channel (``-1``: all).
    Raises :class:`~soundctm.errors.AudioFileError` naming the file if it cannot be read.
    """
    path = Path(path)
    try:
        data, sample_rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioFileError(
            f"cannot read audio file {path} ({_reason(exc)}); check that it is a valid "
            "WAV, FLAC, OGG or MP3 file"
        ) from exc
    x = torch.from_numpy(np.ascontiguousarray(data.T))
    return x, int(sample_rate)


def resample_soxr(x: Tensor, orig_sr: int, new_sr: int, *, quality: str = "HQ") -> Tensor:
    """Resample ``x`` ``[..., n]`` from ``orig_sr`` to ``new_sr`` Hz with libsoxr (``soxr``,
    quality ``HQ``: a linear-phase filter whose stop band is more than 100 dB down). CPU and
    float32; the output has ``round(n * new_sr / orig_sr)`` samples (soxr's length)."""
    if orig_sr <= 0 or new_sr <= 0:
        raise InvalidArgumentError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    if int(orig_sr) == int(new_sr):
        return x
    import soxr

    shape = x.shape
    flat = x.detach().reshape(-1, shape[-1]).float().cpu().numpy()
    # soxr takes [n, channels]: all rows at once as channels of one signal
    out = soxr.resample(np.ascontiguousarray(flat.T), int(orig_sr), int(new_sr), quality=quality)
    out = np.asarray(out, dtype=np.float32).reshape(-1, flat.shape[0]).T
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(*shape[:-1], out.shape[-1])


def read_audio(path: str | Path, sample_rate: int, *, frames: int = -1) -> Tensor:
    """A file as a mono float32 tensor ``[n]`` at ``sample_rate``: decoded by soundfile (the
    first ``frames`` frames, ``-1``: all), channels averaged, resampled with
    :func:`resample_soxr`. A file that is not audio, is empty or holds NaN or infinite samples
    is an :class:`~soundctm.errors.AudioFileError` naming it."""
    x, rate = load_audio(path, frames=frames)
    if x.shape[-1] == 0:
        raise AudioFileError(f"audio file {path} is empty (0 samples); give a file with sound")
    if not bool(torch.isfinite(x).all()):
        raise AudioFileError(f"audio file {path} holds NaN or infinite samples; fix it")
    return resample_soxr(to_mono(x), rate, int(sample_rate))


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_mono(x: Tensor) -> Tensor:
    """Average the channels of ``x`` [channels, n] into a 1-D tensor [n] (1-D input is kept)."""
    if x.dim() == 1:
        return x
    if x.dim() != 2:
        raise InvalidArgumentError(
            f"to_mono expects [channels, n] audio, got shape {tuple(x.shape)}"
        )
    return x.mean(dim=0)


@functools.lru_cache(maxsize=32)
def _sinc_kernel_cached(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, window: str, beta: float
) -> tuple[Tensor, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    if window == "hann":
        win = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    else:
        b = torch.tensor(float(beta), dtype=torch.float64)
        win = torch.special.i0(b * torch.sqrt(1 - (t / lowpass_filter_width) ** 2))
        win = win / torch.special.i0(b)
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    kernel = sinc * win * (base / orig)
    return kernel[:, None, :], width


def sinc_resample_kernel(
    orig: int,
    new: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    window: str = "hann",
    beta: float = 14.769656459379492,
) -> tuple[Tensor, int]:
    """The polyphase windowed-sinc filter bank for resampling by ``new / orig`` (gcd-reduced).

    Phase ``j`` (output sample ``j`` of every block of ``new``) is the low-pass impulse response
    ``h(t) = (f_c / orig) * sinc(f_c * t) * w(t)`` sampled at input offsets ``t = i/orig - j/new``,
    with cutoff ``f_c = rolloff * min(orig, new)`` (in units of the reduced rates, i.e. a
    fraction ``rolloff`` of the lower Nyquist frequency) and ``|f_c * t| <= lowpass_filter_width``
    zero crossings each side. The window is ``w = cos^2(pi f_c t / (2 W))`` (Hann) or a Kaiser
    window ``I0(beta sqrt(1 - (f_c t / W)^2)) / I0(beta)``. Returns the float64 kernel
    ``[new, 1, 2 * width + orig]`` and ``width``, the zero padding each side in input samples.
    """
    if window not in ("hann", "kaiser"):
        raise InvalidArgumentError(f"resampling window must be 'hann' or 'kaiser', got {window!r}")
    if lowpass_filter_width < 1 or not 0 < rolloff <= 1:
        raise InvalidArgumentError(
            f"need lowpass_filter_width >= 1 and 0 < rolloff <= 1, got "
            f"{lowpass_filter_width}, {rolloff}"
        )
    g = math.gcd(int(orig), int(new))
    kernel, width = _sinc_kernel_cached(
        int(orig) // g, int(new) // g, int(lowpass_filter_width), float(rolloff), window, beta
    )
    return kernel.clone(), width


def resample(
    x: Tensor,
    orig_sr: int,
    new_sr: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    window: str = "hann",
    beta: float = 14.769656459379492,
) -> Tensor:
    """Resample ``x`` [..., n] from ``orig_sr`` to ``new_sr`` Hz with a windowed-sinc filter.

    Band-limited interpolation (Smith, "Digital Audio Resampling"): with ``g = gcd(orig_sr,
    new_sr)``, ``o = orig_sr / g`` and ``m = new_sr / g``, every block of ``o`` input samples
    yields ``m`` output samples, one per filter phase of :func:`sinc_resample_kernel`; this is
    one ``conv1d`` with ``m`` output channels and stride ``o``. Content above ``rolloff`` times
    the lower of the two Nyquist frequencies is removed, so downsampling does not alias. The
    defaults (Hann window, 6 zero crossings, rolloff 0.99) are torchaudio's ``sinc_interp_hann``
    defaults. Their transition band is wide: the pass band is flat within 0.5% up to about 60%
    of the lower Nyquist frequency, a tone at 87.5% of it loses about 2.5 dB (7 kHz from 16 kHz),
    tones well above it are suppressed by over 50 dB (12 kHz from 44.1 to 16 kHz: -55 dB), but
    tones just above it alias partly (4.1 kHz from 16 to 8 kHz: -8 dB). A larger
    ``lowpass_filter_width`` or the Kaiser window sharpens the filter. The output has
    ``ceil(n * new_sr / orig_sr)`` samples.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise InvalidArgumentError(f"sample rates must be positive, got {orig_sr} and {new_sr}")
    if int(orig_sr) == int(new_sr):
        return x
    g = math.gcd(int(orig_sr), int(new_sr))
    o, m = int(orig_sr) // g, int(new_sr) // g
    if window not in ("hann", "kaiser"):
        raise InvalidArgumentError(f"resampling window must be 'hann' or 'kaiser', got {window!r}")
    if lowpass_filter_width < 1 or not 0 < rolloff <= 1:
        raise InvalidArgumentError(
            f"need lowpass_filter_width >= 1 and 0 < rolloff <= 1, got "
            f"{lowpass_filter_width}, {rolloff}"
        )
    kernel, width = _sinc_kernel_cached(
        o, m, int(lowpass_filter_width), float(rolloff), window, beta
    )
    dtype = x.dtype if x.is_floating_point() else torch.float32
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(dtype)
    n = flat.shape[-1]
    padded = torch.nn.functional.pad(flat, (width, width + o))
    out = torch.nn.functional.conv1d(
        padded[:, None], kernel.to(device=x.device, dtype=dtype), stride=o
    )
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = -(-n * m // o)  # ceil(n * m / o)
    return out[:, :target].reshape(*shape[:-1], target)


def crop_or_pad(x: Tensor, n: int, *, offset: int = 0) -> Tensor:
    """Exactly ``n`` samples of ``x`` [..., length] from ``offset`` on, zero-padded at the end."""
    if n < 0 or offset < 0:
        raise InvalidArgumentError(f"need n >= 0 and offset >= 0, got n={n}, offset={offset}")
    x = x[..., offset : offset + n]
    missing = n - x.shape[-1]
    return torch.nn.functional.pad(x, (0, missing)) if missing > 0 else x


def peak_db(x: Tensor) -> float:
    """The peak level of ``x`` in dB relative to full scale (``-inf`` for all zeros)."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def peak_normalise(x: Tensor, peak: float = 0.95, eps: float = 1e-8) -> Tensor:
    """Scale ``x`` (any shape, as a whole) to ``max |x| == peak``: ``x * peak / (max|x| + eps)``.

    ``eps`` keeps silence silent instead of dividing by zero.
    """
    if x.numel() == 0:
        return x
    return x * (peak / (x.abs().max() + eps))


def is_silent(x: Tensor, threshold_db: float = -60.0) -> bool:
    """True when the peak level of ``x`` is below ``threshold_db`` dBFS (or ``x`` is empty)."""
    return peak_db(x) < threshold_db
