"""Audio utilities: loading several formats, mono mixdown, windowed-sinc resampling, levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from soundctm.engine.audio import (
    crop_or_pad,
    is_silent,
    load_audio,
    peak_db,
    peak_normalise,
    resample,
    sinc_resample_kernel,
    to_mono,
)
from soundctm.errors import AudioFileError, InvalidArgumentError


def tone(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.9) -> torch.Tensor:
    t = torch.arange(round(sr * seconds), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def spectrum(x: torch.Tensor, sr: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude spectrum (Blackman-windowed, normalised so a sine of amplitude A peaks at A)."""
    x = x.double()
    w = torch.blackman_window(x.shape[-1], periodic=False, dtype=torch.float64)
    mag = torch.fft.rfft(x * w).abs() * 2 / w.sum()
    return torch.fft.rfftfreq(x.shape[-1], 1 / sr), mag


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [
        ("wav", "PCM_16", 1e-4),
        ("flac", "PCM_24", 1e-6),
        ("ogg", "VORBIS", None),
        ("mp3", None, None),
    ],
)
def test_load_audio_formats(tmp_path, fmt, subtype, atol):
    if fmt.upper() not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot handle {fmt}")
    stereo = torch.stack([tone(440, 16000, 0.5), tone(660, 16000, 0.5, amp=0.3)])
    path = tmp_path / f"a.{fmt}"
    sf.write(str(path), stereo.T.numpy(), 16000, subtype=subtype)
    x, sr = load_audio(path)
    assert sr == 16000
    assert x.dtype == torch.float32
    assert x.shape[0] == 2
    if fmt in ("wav", "flac"):
        assert x.shape[1] == stereo.shape[1]
        assert torch.allclose(x, stereo, atol=atol)
    else:  # lossy codecs: compare the spectral peak of each channel
        for ch, freq in ((0, 440), (1, 660)):
            freqs, mag = spectrum(x[ch, 2000:7000], sr)
            assert float(freqs[mag.argmax()]) == pytest.approx(freq, abs=8)
    head, _ = load_audio(path, frames=100)
    assert head.shape == (2, 100)


def test_load_audio_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioFileError, match=r"bad\.wav"):
        load_audio(bad)
    with pytest.raises(AudioFileError, match=r"missing\.wav"):
        load_audio(tmp_path / "missing.wav")


def test_to_mono():
    x = torch.stack([torch.ones(4), -torch.ones(4) * 3])
    assert torch.equal(to_mono(x), -torch.ones(4))
    assert torch.equal(to_mono(torch.ones(5)), torch.ones(5))
    with pytest.raises(InvalidArgumentError):
        to_mono(torch.ones(1, 2, 3))


@pytest.mark.parametrize(
    ("freq", "orig", "new"),
    [(1000, 16000, 44100), (440, 44100, 16000), (3000, 48000, 16000), (5000, 16000, 22050)],
)
def test_resample_preserves_frequency_and_amplitude(freq, orig, new):
    y = resample(tone(freq, orig), orig, new)
    assert y.shape == (new,)  # one second in, one second out
    freqs, mag = spectrum(y[200:-200], new)
    assert float(freqs[mag.argmax()]) == pytest.approx(freq, abs=new / y.shape[0] * 2)
    amplitude = float(y[200:-200].pow(2).mean().sqrt()) * math.sqrt(2)
    assert amplitude == pytest.approx(0.9, rel=0.01)


@pytest.mark.parametrize(("freq", "orig", "new"), [(12000, 44100, 16000), (7000, 16000, 8000)])
def test_downsampling_suppresses_aliasing(freq, orig, new):
    """A tone above the new Nyquist frequency must not fold back into the band."""
    y = resample(tone(freq, orig), orig, new)
    alias = abs(new - freq) if freq < new else freq - new  # where naive decimation folds it
    _, mag = spectrum(y[300:-300], new)
    assert float(mag.max()) < 0.9 * 10 ** (-40 / 20)  # at least 40 dB down (measured: 55 dB)
    naive = tone(freq, orig)[:: orig // math.gcd(orig, new)] if orig % new == 0 else None
    if naive is not None:  # sanity check that the alias really exists without the filter
        f2, m2 = spectrum(naive, new)
        assert float(f2[m2.argmax()]) == pytest.approx(alias, abs=5)
        assert float(m2.max()) > 0.5


def test_round_trip_16k_44k1_16k():
    x = tone(440, 16000, 2.0) + tone(3100, 16000, 2.0, amp=0.05)
    y = resample(resample(x, 16000, 44100), 44100, 16000)
    assert y.shape == x.shape
    err = (y - x)[500:-500]
    assert float(err.abs().max()) < 5e-3
    assert float(err.pow(2).mean().sqrt()) < 1e-3


def test_resample_batched_and_identity():
    x = torch.randn(2, 3, 1000)
    y = resample(x, 16000, 8000)
    assert y.shape == (2, 3, 500)
    assert torch.allclose(y[1, 2], resample(x[1, 2], 16000, 8000), atol=1e-6)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(InvalidArgumentError):
        resample(x, 0, 16000)
    with pytest.raises(InvalidArgumentError):
        resample(x, 16000, 8000, window="boxcar")


def test_sinc_kernel_shape_and_dc_gain():
    kernel, width = sinc_resample_kernel(44100, 16000)  # gcd-reduced to 441 -> 160
    assert kernel.shape == (160, 1, 2 * width + 441)
    # every phase of the low-pass filter passes DC with unit gain (up to the window's ripple)
    dc = kernel[:, 0].sum(dim=-1)
    assert torch.allclose(dc, torch.ones_like(dc), atol=0.01)
    kaiser, _ = sinc_resample_kernel(16000, 44100, window="kaiser")
    assert kaiser.shape[0] == 441


def test_crop_or_pad():
    x = torch.arange(10.0)
    assert torch.equal(crop_or_pad(x, 4), torch.arange(4.0))
    assert torch.equal(crop_or_pad(x, 4, offset=8), torch.tensor([8.0, 9.0, 0.0, 0.0]))
    assert torch.equal(crop_or_pad(x, 12)[10:], torch.zeros(2))
    assert crop_or_pad(torch.ones(2, 3), 5).shape == (2, 5)


def test_levels():
    x = tone(100, 8000) * 0.1
    assert float(peak_normalise(x).abs().max()) == pytest.approx(0.95, rel=1e-5)
    assert torch.equal(peak_normalise(torch.zeros(10)), torch.zeros(10))
    assert peak_db(torch.full((4,), 0.1)) == pytest.approx(-20.0)
    assert is_silent(torch.full((4,), 1e-4))  # -80 dBFS
    assert not is_silent(torch.full((4,), 1e-2))  # -40 dBFS
    assert is_silent(torch.zeros(4))
    assert is_silent(torch.full((4,), 1e-2), threshold_db=-30)
    assert np.isneginf(peak_db(torch.zeros(3)))
