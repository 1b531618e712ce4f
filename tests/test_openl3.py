"""OpenL3: both front ends against numpy transcriptions (openl3 0.4 / kapre 0.3 as
stable-audio-metrics runs it; the torchopenl3 port), the network against a transcription of
torchopenl3's forward on random weights in its file format, framing, weight-file handling; an
opt-in check on the real file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soundctm.eval.cache import cache_namespace
from soundctm.eval.embedders import has_frames
from soundctm.eval.openl3 import (
    OPENL3_ENV,
    OPENL3_MUSIC,
    OpenL3,
    OpenL3Embedder,
    frame_audio,
    htk_mel_area,
    openl3_mel,
)
from soundctm.eval.weights import WeightsFileError, WeightsNotFoundError

SR = 48000
WIDTHS = (4, 4, 8, 8, 8, 8, 16, 16)


def slaney_mel(sr=48000, n_fft=2048, n_mels=256):
    """librosa.filters.mel(htk=False, norm='slaney'), transcribed."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1000.0) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    fft = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    w = np.zeros((n_mels, fft.size))
    for i in range(n_mels):
        lo, c, hi = mel_f[i : i + 3]
        w[i] = np.maximum(0, np.minimum((fft - lo) / (c - lo), (hi - fft) / (hi - c)))
        w[i] *= 2.0 / (hi - lo)
    return w


def db(x):
    """kapre 0.1.4 amplitude_to_decibel."""
    d = 10 * np.log10(np.maximum(x, 1e-10))
    return np.maximum(d - d.max(), -80.0)


def reference_openl3_04(frame: np.ndarray) -> np.ndarray:
    """kapre 0.3 get_melspectrogram_layer(n_fft 2048, hop 242, n_mels 256, pad_end) + the v1 dB
    of openl3 0.4: tf.signal.stft frames ceil(n / hop), periodic Hann, |X|, mel."""
    count = int(np.ceil(len(frame) / 242))
    x = np.pad(frame, (0, (count - 1) * 242 + 2048 - len(frame)))
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)
    mag = np.abs(np.fft.rfft(np.stack([x[i * 242 : i * 242 + 2048] for i in range(count)]) * win))
    return db(slaney_mel() @ mag.T)


def torchopenl3_kernels():
    """torchopenl3 CustomSTFT.get_stft_kernels: windowed DFT rows as conv1d kernels."""
    t = np.arange(2048)
    w = np.arange(1025)[:, None] * 2 * np.pi / 2048
    win = 0.5 - 0.5 * np.cos(2 * np.pi * t / 2048)
    return (np.cos(w * t) * win)[:, None, :], (-np.sin(w * t) * win)[:, None, :]


def reference_torchopenl3(frame: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """torchopenl3 CustomMelSTFT (mel256): 'same' padding for a 48000-sample input, conv1d
    STFT, power, mel, sqrt (power_melgram 1), dB."""
    pad = 2048 - 48000 % 242
    x = torch.from_numpy(np.pad(frame, (pad // 2, pad - pad // 2)))[None, None]
    re, im = (torch.from_numpy(k) for k in torchopenl3_kernels())
    power = (F.conv1d(x, re, stride=242) ** 2 + F.conv1d(x, im, stride=242) ** 2)[0].numpy()
    return db(np.sqrt(mel_basis @ power))


def test_front_ends_match_their_references():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    frame = 0.3 * np.sin(2 * np.pi * 1000.0 * t) + 0.05 * rng.standard_normal(SR)
    window = torch.hann_window(2048, periodic=True, dtype=torch.float64).float()
    x = torch.from_numpy(frame[None]).float()
    basis = torch.from_numpy(slaney_mel()).float()
    ours = openl3_mel(x, "openl3-0.4", basis, window)[0, 0].numpy()
    ref = reference_openl3_04(frame)
    assert ours.shape == ref.shape == (256, 199)
    assert np.abs(ours - ref).max() < 2e-3 and ours.max() == 0.0  # dB below the peak
    file_basis = htk_mel_area().numpy()
    ours = openl3_mel(x, "torchopenl3", torch.from_numpy(file_basis), window)[0, 0].numpy()
    ref = reference_torchopenl3(frame.astype(np.float64), file_basis.astype(np.float64))
    assert ours.shape == ref.shape == (256, 199)
    assert np.abs(ours - ref).max() < 2e-3
    # the two front ends are different maps (magnitude vs power, Slaney vs HTK, padding)
    assert np.abs(ours - reference_openl3_04(frame)).max() > 1.0


def test_framing_follows_openl3():
    def openl3_count(n, hop_s):  # openl3 core._get_num_windows with center=True
        n += SR // 2
        return 1 if n <= SR else 1 + int(np.ceil((n - SR) / int(hop_s * SR)))

    for n, hop in [(10 * SR, 0.5), (int(10.031 * SR), 0.5), (SR // 3, 0.5), (5 * SR, 0.1)]:
        frames = frame_audio(torch.ones(1, n), hop)
        assert frames.shape == (1, openl3_count(n, hop), SR)
        assert float(frames[0, 0, : SR // 2].abs().max()) == 0.0  # centred: half a frame of zeros
    assert frame_audio(torch.ones(1, 10 * SR), 0.5).shape[1] == 20


def reference_forward(sd: dict, mel: torch.Tensor) -> torch.Tensor:
    """torchopenl3 PytorchOpenl3.forward after the spectrogram, transcribed."""

    def bn(x, i):
        p = f"batch_normalization_{i}."
        return F.batch_norm(
            x,
            sd[p + "running_mean"],
            sd[p + "running_var"],
            sd[p + "weight"],
            sd[p + "bias"],
            False,
            0.0,
            0.001,
        )

    def conv(x, name):
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), sd[name + ".weight"], sd[name + ".bias"])

    x = bn(mel, 1)
    for i in range(1, 8):
        x = F.relu(bn(conv(x, f"conv2d_{i}"), i + 1))
        if i in (2, 4, 6):
            x = F.max_pool2d(x, 2, 2)
    x = conv(x, "audio_embedding_layer")
    x = F.max_pool2d(x, (32, 24), (32, 24))
    return x.swapaxes(1, 2).swapaxes(2, 3).reshape(x.shape[0], -1)


@pytest.fixture(scope="module")
def openl3_file(tmp_path_factory):
    """A narrow OpenL3 with random weights and batch-norm statistics, saved as the torchopenl3
    files are: the state dict with the port's speclayer buffers."""
    torch.manual_seed(0)
    model = OpenL3(WIDTHS)
    sd = model.state_dict()
    for k in sd:
        if "running_var" in k:
            sd[k] = 0.5 + torch.rand_like(sd[k])
        elif "running_mean" in k or (
            k.startswith("batch_normalization") and "num_batches" not in k
        ):
            sd[k] = 0.2 * torch.randn_like(sd[k]) + (1.0 if k.endswith(".weight") else 0.0)
    re, im = torchopenl3_kernels()
    sd["speclayer.dft_real_kernels"] = torch.from_numpy(re).float()
    sd["speclayer.dft_imag_kernels"] = torch.from_numpy(im).float()
    sd["speclayer.mel_basis"] = htk_mel_area() * 1.01  # the file's own basis is the one used
    path = tmp_path_factory.mktemp("openl3") / OPENL3_ENV.filename
    torch.save(sd, path)
    return path


def test_network_matches_torchopenl3_forward(openl3_file):
    sd = torch.load(openl3_file, weights_only=True)
    e = OpenL3Embedder(openl3_file, frontend="torchopenl3", peak_db=None)
    assert e.dim == 16 and e.checksum == hashlib.sha256(openl3_file.read_bytes()).hexdigest()
    assert e.weights[0].file == OPENL3_ENV.filename and has_frames(e)
    audio = torch.randn(2, SR, generator=torch.Generator().manual_seed(1)) * 0.1
    frames = frame_audio(audio, 0.5)  # [2, 2, 48000]
    mel = openl3_mel(frames.reshape(4, SR), "torchopenl3", sd["speclayer.mel_basis"], e.window)
    ref = reference_forward(sd, mel).reshape(2, 2, -1)
    out = e.embed_frames(audio)
    assert [tuple(f.shape) for f in out] == [(2, 16), (2, 16)]
    assert torch.allclose(torch.stack(out), ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(e.embed(audio), ref.mean(1), atol=1e-4, rtol=1e-4)


def test_defaults_follow_stable_audio_metrics(openl3_file):
    e = OpenL3Embedder(openl3_file)
    assert (e.content_type, e.frontend, e.hop_s, e.peak_db) == ("env", "openl3-0.4", 0.5, -1.0)
    audio = torch.randn(1, SR // 2, generator=torch.Generator().manual_seed(2)) * 0.05
    # peak normalisation: the level of the input does not matter
    assert torch.allclose(e.embed(audio), e.embed(3 * audio), atol=1e-4)
    other = OpenL3Embedder(openl3_file, frontend="torchopenl3")
    assert len({cache_namespace(e), cache_namespace(other)}) == 2
    assert not torch.allclose(e.embed(audio), other.embed(audio), atol=1e-3)


def test_weight_file_errors(tmp_path, openl3_file):
    with pytest.raises(WeightsNotFoundError) as info:
        OpenL3Embedder(tmp_path / "nowhere.pth.tar")
    assert OPENL3_ENV.env in str(info.value) and OPENL3_ENV.filename in str(info.value)
    with pytest.raises(WeightsNotFoundError, match=OPENL3_MUSIC.env):
        OpenL3Embedder(content_type="music")
    sd = torch.load(openl3_file, weights_only=True)
    del sd["conv2d_3.bias"]
    torch.save(sd, tmp_path / "broken.pth.tar")
    with pytest.raises(WeightsFileError, match="not an OpenL3 state dict"):
        OpenL3Embedder(tmp_path / "broken.pth.tar")
    with pytest.raises(Exception, match="frontend must be one of"):
        OpenL3Embedder(openl3_file, frontend="librosa")


def test_registered_as_openl3(openl3_file):
    from soundctm.plugins.registry import get_registry

    e = get_registry().build("embedder", "openl3", weights=str(openl3_file), hop_s=0.1)
    assert isinstance(e, OpenL3Embedder) and e.hop_s == 0.1


# -- the real file (opt-in) -----------------------------------------------------------------------

REAL = os.environ.get("TEST_OPENL3_WEIGHTS", "")


@pytest.mark.skipif(
    not REAL or not Path(REAL).is_file(), reason="set TEST_OPENL3_WEIGHTS to the real file"
)
def test_real_weights():
    sd = torch.load(REAL, map_location="cpu", weights_only=True)
    re, im = torchopenl3_kernels()
    # the port's own STFT kernels are the windowed DFT our front end computes with an FFT
    assert np.abs(sd["speclayer.dft_real_kernels"].numpy() - re).max() < 1e-5
    assert np.abs(sd["speclayer.dft_imag_kernels"].numpy() - im).max() < 1e-5
    e = OpenL3Embedder(REAL)
    assert e.dim == 512
    assert e.weights[0].status == "git-verified"  # the pinned Git object id is the real file's
    t = torch.arange(3 * SR) / SR
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None]
    noise = 0.3 * torch.randn(1, 3 * SR, generator=torch.Generator().manual_seed(0))
    y = e.embed(torch.cat([tone, noise]))
    assert y.shape == (2, 512) and torch.isfinite(y).all()
    assert float((y[0] - y[1]).norm()) > 0.1 * float(y.norm(dim=1).mean())
