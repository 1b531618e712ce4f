"""PaSST: the front end against a numpy transcription of hear21passt's AugmentMelSTFT (eval
mode), the network against a reference forward pass written from the state dict, the two
evaluation protocols, weight-file handling, the cache key; an opt-in check on the real file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from soundctm.eval.cache import EmbeddingCache, cache_namespace
from soundctm.eval.context import EvalContext
from soundctm.eval.embedders import has_frames, has_logits
from soundctm.eval.evalset import EvalItem, EvalSet
from soundctm.eval.passt import (
    PASST,
    WEIGHTS_ENV,
    PaSST,
    PaSSTEmbedder,
    PaSSTMel,
    audioldm_window,
    kaldi_mel_banks,
    peak_normalise,
    stable_audio_windows,
)
from soundctm.eval.weights import WeightsFileError, WeightsNotFoundError

SR = 32000


# -- front end ----------------------------------------------------------------------------------


def reference_mel_banks(n_mels=128, n_fft=1024, sr=32000, low=0.0, high=15000.0):
    """torchaudio.compliance.kaldi.get_mel_banks (vtln_warp 1) + hear21passt's zero column."""
    n_bins = n_fft // 2

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    delta = (mel(high) - mel(low)) / (n_mels + 1)
    out = np.zeros((n_mels, n_bins + 1))
    bin_mel = mel(np.arange(n_bins) * sr / n_fft)
    for m in range(n_mels):
        left = mel(low) + m * delta
        center, right = left + delta, left + 2 * delta
        up = (bin_mel - left) / (center - left)
        down = (right - bin_mel) / (right - center)
        out[m, :n_bins] = np.maximum(0.0, np.minimum(up, down))
    return out


def reference_front_end(x: np.ndarray) -> np.ndarray:
    """AugmentMelSTFT.forward in eval mode, transcribed in numpy: pre-emphasis conv [-0.97, 1],
    torch.stft(n_fft 1024, hop 320, win 800 symmetric Hann zero-padded to 1024 in the middle,
    center, reflect), power, Kaldi mel, log(+1e-5), (x + 4.5) / 5."""
    y = x[1:] - 0.97 * x[:-1]
    y = np.pad(y, (512, 512), mode="reflect")
    n = np.arange(800)
    win = np.zeros(1024)
    win[112:912] = 0.5 - 0.5 * np.cos(2 * np.pi * n / 799)
    count = 1 + (len(y) - 1024) // 320
    frames = np.stack([y[i * 320 : i * 320 + 1024] for i in range(count)])
    power = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2
    mel = reference_mel_banks() @ power.T
    return (np.log(mel + 1e-5) + 4.5) / 5.0


def test_front_end_matches_hear21passt_transcription():
    banks = kaldi_mel_banks()
    ref_banks = reference_mel_banks()
    assert banks.shape == (128, 513) and float(banks[:, -1].abs().max()) == 0.0
    assert np.abs(banks.numpy() - ref_banks).max() < 1e-6
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 523.0 * t) + 0.05 * rng.standard_normal(t.size)
    mel = PaSSTMel()(torch.from_numpy(x[None]).float())[0].numpy()
    ref = reference_front_end(x)
    assert mel.shape == ref.shape == (128, 1 + (t.size - 1) // 320)
    assert np.abs(mel - ref).max() < 2e-4


# -- network ------------------------------------------------------------------------------------


def reference_forward(sd: dict, mel: torch.Tensor, heads: int):
    """hear21passt's PaSST.forward (eval) written out from the state dict."""
    import torch.nn.functional as F

    x = F.conv2d(mel, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=10)
    t = x.shape[-1]
    x = x + sd["time_new_pos_embed"][..., :t] + sd["freq_new_pos_embed"]
    x = x.flatten(2).transpose(1, 2)
    b, _, c = x.shape
    cls = sd["cls_token"].expand(b, -1, -1) + sd["new_pos_embed"][:, :1]
    dist = sd["dist_token"].expand(b, -1, -1) + sd["new_pos_embed"][:, 1:]
    x = torch.cat([cls, dist, x], 1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(
            b, -1, 3, heads, c // heads
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1)
        h = (att @ v).transpose(1, 2).reshape(b, -1, c)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    feats = (x[:, 0] + x[:, 1]) / 2
    h = F.layer_norm(feats, (c,), sd["head.0.weight"], sd["head.0.bias"], eps=1e-5)
    return h @ sd["head.1.weight"].T + sd["head.1.bias"], feats


@pytest.fixture(scope="module")
def passt_file(tmp_path_factory):
    """A tiny PaSST (2 blocks of width 32, 10 classes; the released grid and patch sizes) with
    random weights, saved as the release is: torch.save of the state dict."""
    torch.manual_seed(0)
    model = PaSST(embed_dim=32, depth=2, num_heads=1, mlp_hidden=64, num_classes=10)
    with torch.no_grad():  # non-trivial norms and biases, so that a wrong one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.startswith("head.0"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("passt") / PASST.filename
    torch.save(model.state_dict(), path)
    return path


def test_network_matches_reference_forward(passt_file):
    sd = torch.load(passt_file, weights_only=True)
    assert {"cls_token", "dist_token", "head_dist.weight", "blocks.1.attn.qkv.weight"} <= set(sd)
    e = PaSSTEmbedder(passt_file)
    assert (e.dim, e.num_classes, len(e.model.blocks)) == (32, 10, 2)  # sizes read from keys
    assert e.checksum == hashlib.sha256(passt_file.read_bytes()).hexdigest()
    # a stand-in is not the published file: used as given, reported as differing
    assert e.weights[0].status == "differs" and e.weights[0].file == PASST.filename
    audio = torch.randn(2, 3 * SR, generator=torch.Generator().manual_seed(1)) * 0.1
    mel = PaSSTMel()(audioldm_window(audio))[:, None]
    ref_logits, ref_feats = reference_forward(sd, mel, heads=1)  # dim // 64, at least 1
    logits, feats = e.logits(audio), e.embed(audio)
    assert logits.shape == (2, 10) and feats.shape == (2, 32)
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(feats, ref_feats, atol=1e-4, rtol=1e-4)
    assert has_logits(e) and has_frames(e)


def test_older_flat_patch_projection_loads(passt_file, tmp_path):
    sd = torch.load(passt_file, weights_only=True)
    flat = dict(sd, **{"patch_embed.proj.weight": sd["patch_embed.proj.weight"].reshape(32, -1)})
    torch.save(flat, tmp_path / "flat.pt")
    audio = torch.randn(1, SR) * 0.1
    assert torch.equal(
        PaSSTEmbedder(tmp_path / "flat.pt").logits(audio), PaSSTEmbedder(passt_file).logits(audio)
    )


# -- protocols ----------------------------------------------------------------------------------


def test_audioldm_window_and_stable_audio_windows():
    x = torch.randn(2, 3 * SR) + 0.5
    w = audioldm_window(x)
    assert w.shape == (2, 10 * SR) and torch.allclose(
        w[:, : 3 * SR].mean(-1), torch.zeros(2), atol=1e-5
    )
    assert float(w[:, 3 * SR :].abs().max()) == 0.0
    assert audioldm_window(torch.randn(1, 12 * SR)).shape == (1, 10 * SR)
    n = int(10.031 * SR)
    assert stable_audio_windows(n) == [(0, 10 * SR, 10 * SR), (5 * SR, n, 10 * SR)]
    assert stable_audio_windows(3 * SR) == [(0, 3 * SR, 10 * SR)]  # padded: > 15% of 10 s
    assert stable_audio_windows(SR) == [(0, SR, SR)]  # <= 15%: used as it is
    assert [s for s, _, _ in stable_audio_windows(20 * SR)] == [0, 5 * SR, 10 * SR]
    y = peak_normalise(torch.stack([torch.sin(torch.arange(100.0)) * 0.2, torch.zeros(100)]))
    assert abs(float(y[0].abs().max()) - 10 ** (-1 / 20)) < 1e-6 and float(y[1].abs().max()) == 0


def test_stable_audio_protocol_pools_window_logits(passt_file):
    e = PaSSTEmbedder(passt_file, protocol="stable-audio")
    audio = torch.randn(1, 11 * SR, generator=torch.Generator().manual_seed(2)) * 0.1
    x = peak_normalise(audio)
    per_window = [
        e.model(e.mel(torch.nn.functional.pad(x[:, s:t], (0, n - (t - s))))[:, None])[0]
        for s, t, n in stable_audio_windows(audio.shape[-1])
    ]
    assert len(per_window) == 2
    with torch.no_grad():
        mean = torch.stack(per_window).mean(0)
        maxed = torch.stack(per_window).amax(0)
    assert torch.allclose(e.logits(audio), mean, atol=1e-5)
    e.collect = "max"
    assert torch.allclose(e.logits(audio), maxed, atol=1e-5)
    assert not torch.allclose(mean, maxed, atol=1e-3)
    assert e.logits(torch.randn(1, 1000)).shape == (1, 10)  # very short clips still work


def test_protocols_have_their_own_cache_entries(passt_file, tmp_path):
    a = PaSSTEmbedder(passt_file)
    b = PaSSTEmbedder(passt_file, protocol="stable-audio")
    assert cache_namespace(a) != cache_namespace(b)
    assert cache_namespace(a).startswith(f"passt-{a.checksum[:16]}-32000")
    rng = np.random.default_rng(3)
    items = [
        EvalItem(f"k{i}", (0.1 * rng.standard_normal(SR // 2)).astype(np.float32)) for i in range(2)
    ]
    evalset = EvalSet(items, 16000)  # resampled to 32 kHz for PaSST
    ctx = EvalContext(EmbeddingCache(tmp_path / "cache"))
    first = ctx.logits(a, evalset, "generated")
    again = EvalContext(EmbeddingCache(tmp_path / "cache"))
    assert np.array_equal(again.logits(a, evalset, "generated"), first)
    assert (again.cache.hits, again.cache.misses) == (2, 0)
    again.logits(b, evalset, "generated")
    assert again.cache.misses == 2  # the other protocol is computed, not read


# -- weight files -------------------------------------------------------------------------------


def test_missing_and_wrong_weight_files(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError) as info:
        PaSSTEmbedder(tmp_path / "nowhere.pt")
    msg = str(info.value)
    assert "nowhere.pt" in msg and WEIGHTS_ENV in msg and PASST.filename in msg and "\n" not in msg
    with pytest.raises(WeightsNotFoundError, match="downloads are off"):
        PaSSTEmbedder()
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, tmp_path / "other.pt")
    with pytest.raises(WeightsFileError, match="not a PaSST state dict"):
        PaSSTEmbedder(tmp_path / "other.pt")
    with pytest.raises(Exception, match="protocol must be one of"):
        PaSSTEmbedder(tmp_path / "other.pt", protocol="nope")


def test_registered_as_passt(passt_file):
    from soundctm.plugins.registry import get_registry

    e = get_registry().build("embedder", "passt", weights=str(passt_file), protocol="stable-audio")
    assert isinstance(e, PaSSTEmbedder) and e.protocol == "stable-audio"


# -- the real file (opt-in) -----------------------------------------------------------------------

REAL = os.environ.get("TEST_PASST_WEIGHTS", "")


@pytest.mark.skipif(
    not REAL or not Path(REAL).is_file(), reason="set TEST_PASST_WEIGHTS to the real file"
)
def test_real_weights():
    e = PaSSTEmbedder(REAL)
    assert (e.dim, e.num_classes, len(e.model.blocks)) == (768, 527, 12)
    assert e.weights[0].status == "verified"  # the pinned SHA-256 is the real file's
    assert Path(REAL).stat().st_size == PASST.size
    t = torch.arange(10 * SR) / SR
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * t)[None]
    noise = 0.3 * torch.randn(1, 10 * SR, generator=torch.Generator().manual_seed(0))
    logits = e.logits(torch.cat([tone, noise]))
    assert logits.shape == (2, 527) and torch.isfinite(logits).all()
    p = logits.softmax(-1)
    assert (p[0] - p[1]).abs().sum() > 0.2  # a tone and noise are told apart
