"""Host Griffin-Lim (soundctm.export.phase, numpy + scipy FFT) against the torch decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundctm.builtin.mel import MelAutoencoder
from soundctm.engine.dsp import overlap_add as torch_overlap_add
from soundctm.export.checks import SPECTRAL_CHECK_TOLERANCE, waveform_spectral_convergence
from soundctm.export.phase import GriffinLimSettings, griffin_lim, hann, overlap_add


def _latents(ae: MelAutoencoder, seconds: float = 1.0) -> torch.Tensor:
    from soundctm.builtin.synthcaps import generate

    audio = np.stack([generate("test", i, 0, ae.sample_rate, seconds).audio for i in range(3)])
    return ae.encode(torch.from_numpy(audio).float())


def test_reflection_padding_and_frames():
    from soundctm.export.phase import _pad, _windowed_frames

    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    assert np.array_equal(_pad(x, 8), np.pad(x, ((0, 0), (8, 8)), mode="reflect"))
    assert np.array_equal(_pad(x[:, :4], 8), np.pad(x[:, :4], ((0, 0), (8, 8))))
    w = hann(16)
    want = torch.from_numpy(x).unfold(-1, 16, 8).numpy() * w
    np.testing.assert_array_equal(_windowed_frames(x, w, 8), want)
    np.testing.assert_array_equal(
        _windowed_frames(x, w, 4), torch.from_numpy(x).unfold(-1, 16, 4).numpy() * w
    )


def test_hann_and_overlap_add_match_torch():
    np.testing.assert_allclose(hann(64), torch.hann_window(64).numpy(), atol=1e-6)
    frames = np.random.default_rng(0).standard_normal((2, 9, 64)).astype(np.float32)
    for hop, start, length in [(32, 32, 8 * 32), (16, 32, 100), (64, 0, 9 * 64)]:
        want = torch_overlap_add(torch.from_numpy(frames), hop, start, length).numpy()
        np.testing.assert_allclose(overlap_add(frames, hop, start, length), want, atol=1e-6)


@pytest.mark.parametrize(
    ("hop", "iters", "limit"), [(512, 1, 2e-3), (512, 32, None), (128, 8, None)]
)
def test_host_griffin_lim_keeps_the_torch_spectrogram(hop, iters, limit):
    """Same algorithm, another FFT: no iteration agrees to 2e-6, 1 iteration to 3e-4 (bins
    near the phase floor of 1e-6 flip with the rounding); after many the phases may settle
    differently (docs/onnx.md) and the spectrogram stays within the export check."""
    ae = MelAutoencoder(hop_length=hop, griffin_lim_iters=iters)
    z = _latents(ae)
    settings = GriffinLimSettings.from_spec(ae.griffin_lim_settings())
    with torch.no_grad():
        ref = ae.decode(z)
        got = torch.from_numpy(griffin_lim(ae.magnitude(z).numpy(), settings))
    assert got.shape == ref.shape and got.dtype == torch.float32
    diff = waveform_spectral_convergence(ref, got)
    assert diff < (limit or SPECTRAL_CHECK_TOLERANCE)


def test_settings_are_checked():
    ae = MelAutoencoder(hop_length=512)
    spec = ae.griffin_lim_settings()
    assert spec is not None and spec["iterations"] == 32
    for bad in ({"algorithm": "other"}, {"hop_length": 500}, {"window": "hamming"}):
        with pytest.raises(ValueError):
            GriffinLimSettings.from_spec({**spec, **bad})
    assert MelAutoencoder(hop_length=160).griffin_lim_settings() is None  # hop does not divide
    assert MelAutoencoder(griffin_lim_iters=0).griffin_lim_settings() is None
