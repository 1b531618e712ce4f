"""The ``clap`` embedder (LAION-CLAP) on tiny random checkpoints in laion's own format: loading,
the front end and the network against an independent transcription, the CLAP score's direction,
MMD, and an opt-in check on the real ``630k-audioset-best.pt``."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from laion_clap_standin import DEPTHS, EMBED, HEADS, JOINT, laion_state, save_laion
from test_clap import write_tokenizer

from soundctm.eval.clap import LaionClapEmbedder
from soundctm.eval.metrics import frechet_from_embeddings, mmd_rbf
from soundctm.eval.weights import WeightsFileError

SR = 48000
L = 480000


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("roberta-tiny"))


@pytest.fixture(scope="module")
def vocab(tok) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tok)))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, vocab) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("laion")
    return {
        "plain": save_laion(laion_state(vocab), d / "630k-audioset-best.pt"),
        "fusion": save_laion(laion_state(vocab, fusion=True), d / "630k-audioset-fusion-best.pt"),
    }


# -- an independent transcription of the reference front end (numpy, float64) ----------------


def ref_quantise(x: np.ndarray) -> np.ndarray:
    """stable-audio-metrics: ``pyln.normalize.peak(x, -1.0)``, then laion's
    ``int16_to_float32(float32_to_int16(x))``."""
    x = x.astype(np.float32) * np.float32(10 ** (-1 / 20) / np.abs(x).max())
    q = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (q / 32767.0).astype(np.float32)


def ref_length(x: np.ndarray) -> np.ndarray:
    """laion ``get_audio_features``: repeatpad below 10 s, a crop above (here at the start)."""
    if len(x) > L:
        return x[:L]
    y = np.tile(x, int(L / len(x)))
    return np.pad(y, (0, L - len(y)))


def ref_power(x: np.ndarray) -> np.ndarray:
    """torchlibrosa / torchaudio STFT: centred, reflect padding, periodic Hann, power; [T, 513]."""
    xp = np.pad(x.astype(np.float64), (512, 512), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, 1024)[::480]
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    return np.abs(np.fft.rfft(frames * w, axis=1)) ** 2


def librosa_mel(sr=SR, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0) -> np.ndarray:
    """``librosa.filters.mel`` (htk=False, norm="slaney"), transcribed: [n_mels, 513]."""

    def hz2mel(f):
        f = np.asanyarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        return np.where(
            f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27), lin
        )

    def mel2hz(m):
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (m - 15.0)), m * 200.0 / 3)

    fft = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft)
    w = np.zeros((n_mels, len(fft)))
    for i in range(n_mels):
        w[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    return w * (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]


def torchaudio_mel(sr=SR, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0) -> np.ndarray:
    """``torchaudio.functional.melscale_fbanks`` (htk, norm None), transcribed: [n_mels, 513]."""
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    m = np.linspace(2595 * np.log10(1 + fmin / 700), 2595 * np.log10(1 + fmax / 700), n_mels + 2)
    f = 700 * (10 ** (m / 2595) - 1)
    slopes = f[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / np.diff(f)[:-1]
    up = slopes[:, 2:] / np.diff(f)[1:]
    return np.maximum(0, np.minimum(down, up)).T


def ref_logmel(x: np.ndarray, fusion: bool) -> np.ndarray:
    fb = torchaudio_mel() if fusion else librosa_mel()
    return 10 * np.log10(np.maximum(ref_power(x) @ fb.T, 1e-10))


def ref_features(clip: np.ndarray, fusion: bool) -> tuple[np.ndarray, bool]:
    x = ref_quantise(clip)
    if fusion and len(x) > L:
        mel = ref_logmel(x, True)
        chunk = L // 480 + 1
        parts = np.array_split(np.arange(0, len(mel) - chunk + 1), 3)
        starts = [int(p[len(p) // 2]) if len(p) else 0 for p in parts]  # laion: random
        # torchvision Resize (bilinear, no antialias in torchvision 0.16) on the whole mel
        shrunk = F.interpolate(
            torch.from_numpy(mel)[None, None], size=(chunk, 64), mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()  # fmt: skip
        return np.stack([shrunk] + [mel[s : s + chunk] for s in starts]), True
    mel = ref_logmel(ref_length(x), fusion)
    return (np.stack([mel] * 4) if fusion else mel[None]), False


# -- transformers' own conversion rules (convert_clap_original_pytorch_to_hf.py), restated ------

HF_RULES = (
    ("text_branch", "text_model"),
    ("audio_branch", "audio_model.audio_encoder"),
    ("attn", "attention.self"),
    ("self.proj", "output.dense"),
    ("attention.self_mask", "attn_mask"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
    ("norm1", "layernorm_before"),
    ("norm2", "layernorm_after"),
    ("bn0", "batch_norm"),
)


def hf_reference_model(state: dict[str, torch.Tensor], fusion: bool):
    """``ClapAudioModelWithProjection`` loaded the way transformers' conversion script does."""
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection

    out = {}
    for key, value in state.items():
        if not key.startswith(("audio_branch.", "audio_projection.")):
            continue
        for a, b in HF_RULES:
            key = key.replace(a, b)
        m = re.match(r".*_projection.(\d+).*", key)
        if m:
            layer = 1 if int(m.group(1)) == 0 else 2
            key = key.replace(f"_projection.{m.group(1)}.", f"_projection.linear{layer}.")
        if "qkv" in key:
            q, k, v = value.chunk(3, dim=0)
            for name, part in (("query", q), ("key", k), ("value", v)):
                out[key.replace("qkv", name)] = part
        else:
            out[key] = value
    config = ClapAudioConfig(
        patch_embeds_hidden_size=EMBED, depths=list(DEPTHS), num_attention_heads=list(HEADS),
        hidden_size=EMBED * 8, projection_dim=JOINT, enable_fusion=fusion,
    )  # fmt: skip
    model = ClapAudioModelWithProjection(config).eval()
    missing, _ = model.load_state_dict(out, strict=False)
    assert [k for k in missing if not k.endswith("relative_position_index")] == []
    return model


def test_front_end_and_network_match_the_reference(ckpts, tok, vocab):
    g = np.random.default_rng(0)
    t = np.arange(int(1.3 * SR)) / SR
    short = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * g.standard_normal(t.size)).astype(
        np.float32
    )
    long = (0.2 * g.standard_normal(int(10.6 * SR))).astype(np.float32)
    for kind, fusion in (("plain", False), ("fusion", True)):
        e = LaionClapEmbedder(ckpts[kind], tokenizer=str(tok))
        assert e.fusion is fusion and (e.name, e.sample_rate, e.dim) == ("clap", SR, JOINT)
        state = {
            k.removeprefix("module."): v
            for k, v in torch.load(ckpts[kind], weights_only=True)["state_dict"].items()
        }
        ref = hf_reference_model(state, fusion)
        for clip in (short, long):
            ours, longer = e.features(torch.from_numpy(clip))
            theirs, ref_longer = ref_features(clip, fusion)
            assert longer == ref_longer == (fusion and clip is long)
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-3, rtol=1e-4)
            with torch.no_grad():
                out = ref(
                    input_features=torch.from_numpy(theirs).float()[None],
                    is_longer=torch.tensor([[ref_longer]]) if fusion else None,
                )
            expected = F.normalize(out.audio_embeds, dim=-1)[0]
            got = e.embed(torch.from_numpy(clip)[None])[0]
            torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)
            assert abs(float(got.norm()) - 1) < 1e-5


def test_text_tower_is_laions_get_text_embedding(ckpts, tok):
    """RoBERTa pooler -> text_projection -> L2 norm, 77 tokens padded (laion's tokenizer call)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    e = LaionClapEmbedder(ckpts["plain"], tokenizer=str(tok))
    state = {
        k.removeprefix("module."): v
        for k, v in torch.load(ckpts["plain"], weights_only=True)["state_dict"].items()
    }
    text = {k.removeprefix("text_branch."): v for k, v in state.items() if "text_branch." in k}
    cfg = RobertaConfig(
        vocab_size=text["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=48, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
        max_position_embeddings=80, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    )  # fmt: skip
    roberta = RobertaModel(cfg).eval()
    roberta.load_state_dict(text, strict=False)
    toks = AutoTokenizer.from_pretrained(str(tok))(
        ["a dog barks", "rain on a tin roof"], padding="max_length", truncation=True,
        max_length=77, return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        pooled = roberta(**toks).pooler_output
        h = F.relu(
            F.linear(pooled, state["text_projection.0.weight"], state["text_projection.0.bias"])
        )
        expected = F.normalize(
            F.linear(h, state["text_projection.2.weight"], state["text_projection.2.bias"]), dim=-1
        )
    got = e.embed_text(["a dog barks", "rain on a tin roof"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_checkpoint_forms_and_refusals(tmp_path, tok, vocab, ckpts):
    audio = torch.randn(1, SR // 2, generator=torch.Generator().manual_seed(3)) * 0.2
    base = LaionClapEmbedder(ckpts["plain"], tokenizer=str(tok))
    assert base.checksum == hashlib.sha256(ckpts["plain"].read_bytes()).hexdigest()
    assert base.weights[0].file == "630k-audioset-best.pt" and base.weights[0].status == "differs"
    # without position_ids, and as a bare state dict without the module. prefix
    bare = tmp_path / "bare.pt"
    torch.save(laion_state(vocab, position_ids=False), bare)
    e = LaionClapEmbedder(bare, tokenizer=str(tok))
    torch.testing.assert_close(e.embed(audio), base.embed(audio))
    # the fusion file asked for as non-fusion (and the other way round): one line
    with pytest.raises(WeightsFileError, match="is a fusion LAION-CLAP model"):
        LaionClapEmbedder(ckpts["fusion"], fusion=False, tokenizer=str(tok))
    # another model's file: one line naming it
    other = tmp_path / "vggish-like.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, other)
    with pytest.raises(WeightsFileError) as info:
        LaionClapEmbedder(other, tokenizer=str(tok))
    assert "vggish-like.pth" in str(info.value) and "\n" not in str(info.value)
    # a truncated audio tower
    broken = laion_state(vocab)
    broken.pop("audio_branch.layers.1.blocks.0.mlp.fc2.weight")
    with pytest.raises(WeightsFileError, match="lacks"):
        LaionClapEmbedder(save_laion(broken, tmp_path / "broken.pt"), tokenizer=str(tok))


def _wavs(folder: Path, clips: dict[str, np.ndarray], rate: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, x in clips.items():
        sf.write(folder / f"{k}.wav", x, rate)
    return folder


def _captions(path: Path, names: list[str], caps: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "caption"])
        w.writerows([[f"{n}.wav", c] for n, c in zip(names, caps, strict=True)])
    return path


def test_clap_score_of_matching_captions_beats_shuffled(tmp_path, tok, vocab, monkeypatch):
    """Audio and text towers made to agree by construction: the last projection layer of each
    maps the four clips and their four captions to the same four unit vectors (least squares on
    the stand-in's hidden activations). The CLAP score through the runner must then be ~1 for
    the true pairing and ~0 for a shuffled one."""
    from soundctm.eval.embedders import resample_hq
    from soundctm.eval.runner import evaluate_folders

    rate = 16000
    t = np.arange(rate) / rate
    names = ["a", "b", "c", "d"]
    clips = {
        n: (0.3 * np.sin(2 * np.pi * f * t) * (1 + k * t)).astype(np.float32)
        for k, (n, f) in enumerate(zip(names, (220.0, 700.0, 1900.0, 5000.0), strict=True))
    }
    caps = ["a low hum", "a beep", "a high whistle", "a hiss"]
    state = laion_state(vocab, seed=5)
    path = save_laion(state, tmp_path / "w.pt")
    e = LaionClapEmbedder(path, tokenizer=str(tok))
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        e.audio.audio_projection.linear2.register_forward_pre_hook(
            lambda _m, a: seen.__setitem__("audio", a[0])
        ),
        e.text.model.text_projection.linear2.register_forward_pre_hook(
            lambda _m, a: seen.setdefault("text", []).append(a[0])  # type: ignore[func-returns-value]
        ),
    ]
    audio = torch.stack([resample_hq(torch.from_numpy(clips[n]), rate, SR) for n in names])
    e.embed(audio)
    e.embed_text(caps)
    for h in hooks:
        h.remove()
    target = torch.eye(len(names), JOINT, dtype=torch.float64)
    for key, hidden in (("audio", seen["audio"]), ("text", torch.cat(seen["text"]))):
        w = torch.linalg.lstsq(hidden.double(), target).solution.T  # [JOINT, JOINT]
        state[f"{key}_projection.2.weight"] = w.float()
        state[f"{key}_projection.2.bias"] = torch.zeros(JOINT)
    monkeypatch.setenv("SOUNDCTM_CLAP_WEIGHTS", str(save_laion(state, tmp_path / "agree.pt")))
    monkeypatch.setenv("SOUNDCTM_CLAP_TOKENIZER", str(tok))
    gen = _wavs(tmp_path / "gen", clips, rate)
    scores, hits = {}, {}
    for label, order in (("matching", caps), ("shuffled", caps[1:] + caps[:1])):
        res = evaluate_folders(
            gen, captions=_captions(tmp_path / f"{label}.csv", names, order), metrics=["clap"],
            embedder="clap", cache_dir=tmp_path / "cache",
        ).to_json()  # fmt: skip
        scores[label] = res["runs"][0]["metrics"]["clap"]["value"]
        hits[label] = res["cache"]["hits"]
        assert res["embedders"]["clap"]["weights"][0]["file"] == "630k-audioset-best.pt"
    assert scores["matching"] > 0.99 and abs(scores["shuffled"]) < 0.05, scores
    assert hits["shuffled"] >= len(names)  # the second run reads every audio embedding back


def test_frechet_and_mmd_on_clap_embeddings_grow_with_a_shift(ckpts, tok):
    """FD and MMD of a set of CLAP embeddings against itself are ~0 and grow as the audio moves
    away (more and more of a second tone mixed in)."""
    e = LaionClapEmbedder(ckpts["plain"], tokenizer=str(tok))
    g = torch.Generator().manual_seed(4)
    t = torch.arange(SR // 4) / SR
    tones = [0.3 * torch.sin(2 * torch.pi * (300 + 90 * i) * t) for i in range(4)]
    base = torch.stack([x + 0.02 * torch.randn(t.shape, generator=g) for x in tones])
    other = 0.3 * torch.sin(2 * torch.pi * 6000 * t)
    ref = e.embed(base).double().numpy()
    fds, mmds = [frechet_from_embeddings(ref, ref).value], [mmd_rbf(ref, ref)]
    for mix in (0.3, 1.0):
        emb = e.embed(base + mix * other).double().numpy()
        fds.append(frechet_from_embeddings(emb, ref).value)
        mmds.append(mmd_rbf(emb, ref))
    # ~0: 4 embeddings in 16 dimensions need the eps * I regularisation (2 * eps * dim)
    assert abs(fds[0]) < 1e-4 and mmds[0] == pytest.approx(0.0, abs=1e-9)
    assert fds[0] < fds[1] < fds[2] and mmds[0] < mmds[1] < mmds[2], (fds, mmds)


def test_mmd_maths():
    """CMMD's estimator: 0 for one set, symmetric, a closed form for two single points."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 1
    assert mmd_rbf(a, a) == pytest.approx(0.0, abs=1e-12)
    assert mmd_rbf(a, b) == pytest.approx(mmd_rbf(b, a))
    x, y = np.zeros((2, 2)), np.ones((2, 2))  # every x the same point, every y another
    k = np.exp(-2.0 / (2 * 10.0**2))
    assert mmd_rbf(x, y) == pytest.approx(1000 * (2 - 2 * k))


@pytest.mark.skipif(
    not os.environ.get("REAL_CLAP_WEIGHTS"),
    reason="set REAL_CLAP_WEIGHTS=/path/to/630k-audioset-best.pt (and REAL_CLAP_TOKENIZER, a "
    "roberta-base folder, if not in the Hugging Face cache) to check the real checkpoint",
)
def test_real_630k_audioset_best():
    """On the released file: the pinned hash, the file's own torchlibrosa mel filters equal our
    front end's, its STFT basis is a periodic-Hann DFT, and the embeddings are 512-d."""
    path = Path(os.environ["REAL_CLAP_WEIGHTS"])
    e = LaionClapEmbedder(path, tokenizer=os.environ.get("REAL_CLAP_TOKENIZER", "roberta-base"))
    assert e.weights[0].status == "verified" and e.dim == 512 and not e.fusion
    state = {
        k.removeprefix("module."): v
        for k, v in torch.load(path, weights_only=True)["state_dict"].items()
    }
    melw = state["audio_branch.logmel_extractor.melW"]  # [513, 64]
    torch.testing.assert_close(e.front.filterbank.T, melw.float(), atol=1e-6, rtol=1e-4)
    real = state["audio_branch.spectrogram_extractor.stft.conv_real.weight"][:, 0]  # [513, 1024]
    n = torch.arange(1024, dtype=torch.float64)
    k = torch.arange(513, dtype=torch.float64)[:, None]
    basis = torch.cos(2 * torch.pi * k * n / 1024) * e.front.window.double()
    torch.testing.assert_close(real.double(), basis, atol=1e-5, rtol=1e-4)
    y = e.embed(torch.randn(2, SR * 3) * 0.1)
    txt = e.embed_text(["a dog barks", "silence"])
    assert y.shape == txt.shape == (2, 512) and torch.isfinite(y).all()
