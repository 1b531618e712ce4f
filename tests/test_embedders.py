"""Evaluation embedders: the contract, weight-file safety, mel-stats, VGGish on random weights."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from soundctm.builtin.synthcaps import SOURCES, generate
from soundctm.eval.embedders import (
    Embedder,
    MelStatsEmbedder,
    WeightsFileError,
    WeightsNotFoundError,
    has_frames,
    has_logits,
    has_text,
    load_weight_file,
    resample_for,
)
from soundctm.eval.metrics import frechet_from_embeddings
from soundctm.eval.vggish import WEIGHTS_ENV, VGGish, VGGishEmbedder, vggish_mel_matrix

SR = 16000


# -- contract -----------------------------------------------------------------------------------


def test_optional_capabilities_are_detected():
    e = MelStatsEmbedder()
    assert isinstance(e, Embedder)
    assert has_frames(e) and not has_logits(e) and not has_text(e)

    class Clap:
        name, sample_rate, dim, checksum = "fake-clap", 48000, 4, "none"

        def embed(self, audio):
            return torch.zeros(audio.shape[0], 4)

        def embed_text(self, texts):
            return torch.zeros(len(texts), 4)

        def logits(self, audio):
            return torch.zeros(audio.shape[0], 3)

    assert isinstance(Clap(), Embedder) and has_text(Clap()) and has_logits(Clap())
    assert resample_for(Clap(), torch.zeros(2, 16000), 16000).shape == (2, 48000)
    assert resample_for(e, torch.zeros(2, 32000), 32000).shape == (2, 16000)


# -- mel-stats ----------------------------------------------------------------------------------


def test_mel_stats_shape_and_determinism():
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(3, SR + 123, generator=g) * 0.1
    e = MelStatsEmbedder()
    assert e.name == "mel-stats" and e.checksum == "none" and e.dim == 3 * 64 + 8 == 200
    y = e.embed(audio)
    assert y.shape == (3, 200) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert torch.equal(y, e.embed(audio))
    assert torch.equal(y, MelStatsEmbedder().embed(audio))  # nothing random, nothing learned
    # one clip alone gives its row of the batch
    assert torch.allclose(e.embed(audio[1:2])[0], y[1], atol=1e-5)
    assert MelStatsEmbedder(n_mels=16).embed(audio).shape == (3, 56)


def test_mel_stats_edge_cases_are_finite():
    e = MelStatsEmbedder()
    silence = torch.zeros(2, SR)
    short = torch.randn(1, 100)
    assert torch.isfinite(e.embed(silence)).all()
    assert torch.isfinite(e.embed(short)).all() and e.embed(short).shape == (1, 200)
    frames = e.embed_frames(torch.randn(2, int(2.5 * SR)) * 0.1)
    assert [tuple(f.shape) for f in frames] == [(2, 200), (2, 200)]
    assert e.embed_frames(short)[0].shape == (1, 200)


def test_mel_stats_separates_synthcaps_sources():
    clips = [generate("train", i, seconds=1.0) for i in range(200)]
    emb = MelStatsEmbedder().embed(torch.from_numpy(np.stack([c.audio for c in clips]))).numpy()
    tonal = np.array([SOURCES[c.attributes["source"]].texture == "tonal" for c in clips])
    assert tonal.sum() >= 40 and (~tonal).sum() >= 40
    same_mix = frechet_from_embeddings(emb[:40], emb[40:80]).value
    different = frechet_from_embeddings(emb[tonal][:40], emb[~tonal][:40]).value
    # measured: about 110 between two halves of the same mix, about 790 tonal vs noisy
    assert different > 3 * same_mix > 0


# -- weight files -------------------------------------------------------------------------------

CALLED: list[str] = []


def _record() -> None:
    CALLED.append("ran")


class Payload:
    """An object whose unpickling would run code: weights_only must refuse it."""

    def __reduce__(self):
        return (_record, ())


def test_pickle_with_an_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(2), "payload": Payload()}, path)
    CALLED.clear()
    with pytest.raises(WeightsFileError, match=r"evil\.pth"):
        load_weight_file(path)
    assert CALLED == []
    with pytest.raises(WeightsFileError, match=r"evil\.pth"):
        VGGishEmbedder(path)
    assert CALLED == []


def test_non_tensor_entries_are_refused(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"a": torch.zeros(2), "step": 3}, path)
    with pytest.raises(WeightsFileError, match="non-tensor entry 'step'"):
        load_weight_file(path)


def test_safetensors_and_numpy_arrays_load(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.arange(3.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_weight_file(tmp_path / "w.safetensors")["a"], torch.arange(3.0))
    # torchvggish's PCA file holds numpy arrays
    torch.save({"pca_means": np.ones(4, np.float64)}, tmp_path / "pca.pth")
    means = load_weight_file(tmp_path / "pca.pth")["pca_means"]
    assert torch.equal(means, torch.ones(4, dtype=torch.float64))


def test_missing_weights_say_where_and_what_to_do(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "vggish-10086976.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        VGGishEmbedder(missing)
    message = str(info.value)
    assert str(missing) in message and WEIGHTS_ENV in message and "\n" not in message
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_ENV):
        VGGishEmbedder()
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(WeightsNotFoundError, match="nowhere"):
        VGGishEmbedder()


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, path)
    with pytest.raises(WeightsFileError, match="not a torchvggish VGGish state dict"):
        VGGishEmbedder(path)


# -- VGGish -------------------------------------------------------------------------------------


def reference_examples(data: np.ndarray) -> np.ndarray:
    """AudioSet vggish_input.waveform_to_examples / mel_features.py, transcribed in numpy."""

    def frame(x, window, hop):
        n = 1 + (x.shape[0] - window) // hop
        return np.stack([x[i * hop : i * hop + window] for i in range(n)])

    def hz_to_mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))  # periodic Hann
    spec = np.abs(np.fft.rfft(frame(data, 400, 160) * window, 512))
    bins_mel = hz_to_mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)
    mel = np.empty((257, 64))
    for i in range(64):
        lo, c, hi = edges[i : i + 3]
        mel[:, i] = np.maximum(
            0.0, np.minimum((bins_mel - lo) / (c - lo), (hi - bins_mel) / (hi - c))
        )
    mel[0, :] = 0.0
    log_mel = np.log(spec @ mel + 0.01)
    return frame(log_mel, 96, 96)


def test_vggish_front_end_matches_audioset_reference():
    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * SR)) / SR
    data = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    model = VGGish(init_weights=False)  # the front end needs no weights
    ex, counts = model.examples(torch.from_numpy(data[None]).float())
    ref = reference_examples(data)
    assert counts == [2] and ex.shape == (2, 1, 96, 64) and ref.shape == (2, 96, 64)
    assert np.abs(ex[:, 0].numpy() - ref).max() < 1e-3
    mel = vggish_mel_matrix()
    assert mel.shape == (257, 64) and float(mel[0].abs().max()) == 0.0
    assert float(mel.max()) <= 1.0 + 1e-9
    # shorter than one example: padded to one
    assert model.examples(torch.zeros(1, 8000))[1] == [1]


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory):
    """A VGGish with random weights saved as torchvggish does: torch.save of the state dict."""
    torch.manual_seed(0)
    model = VGGish().eval()
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_vggish_loads_torchvggish_format_and_embeds(vggish_file, monkeypatch):
    path, model = vggish_file
    keys = list(torch.load(path, map_location="cpu", weights_only=True))
    assert keys[0] == "features.0.weight" and "embeddings.4.bias" in keys and len(keys) == 18
    e = VGGishEmbedder(path)
    assert (e.name, e.sample_rate, e.dim) == ("vggish", 16000, 128)
    assert e.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    audio = torch.randn(2, 2 * SR, generator=torch.Generator().manual_seed(1)) * 0.1
    y = e.embed(audio)
    assert y.shape == (2, 128) and torch.isfinite(y).all()
    frames = e.embed_frames(audio)
    assert [tuple(f.shape) for f in frames] == [(2, 128), (2, 128)]
    assert torch.allclose(y, torch.stack([f.mean(0) for f in frames]))
    with torch.no_grad():
        ex, _ = model.examples(audio)
        direct = model(ex)
    assert torch.allclose(torch.cat(frames), direct, atol=1e-5)
    # the file through the environment variable gives the same model
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    assert torch.equal(VGGishEmbedder().embed(audio), y)


def test_vggish_final_relu_and_pca_postprocessing(vggish_file):
    _, model = vggish_file
    ex = torch.randn(3, 1, 96, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = model(ex)
        assert (raw < 0).any()  # no final ReLU by default (the FAD implementations drop it)
        model.final_relu = True
        assert (model(ex) >= 0).all()
        model.final_relu = False
        model.postprocess = True
        with pytest.raises(WeightsNotFoundError, match="PCA"):
            model(ex)
        model.load_pca({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128)})
        q = model(ex)
        model.postprocess = False
    expected = torch.round((raw.clamp(-2, 2) + 2) * 255 / 4)
    assert torch.equal(q, expected) and q.min() >= 0 and q.max() <= 255
    assert math.isclose(float(q[0, 0]), round((max(-2, min(2, float(raw[0, 0]))) + 2) * 63.75))


def test_vggish_settings_that_change_embeddings_get_their_own_cache_folder(vggish_file, tmp_path):
    """final_relu and postprocessing change the embeddings of the same weights, so a cached
    embedding made with one setting must never be served to another."""
    from soundctm.eval.cache import cache_namespace

    path, _ = vggish_file
    pca = tmp_path / "vggish_pca_params-random.pth"
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128)}, pca)
    spaces = {
        cache_namespace(VGGishEmbedder(path)),
        cache_namespace(VGGishEmbedder(path, final_relu=True)),
        cache_namespace(VGGishEmbedder(path, postprocess=True, pca=pca)),
    }
    assert len(spaces) == 3
    assert cache_namespace(VGGishEmbedder(path)) == f"vggish-{_sha16(path)}-16000"


def _sha16(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
