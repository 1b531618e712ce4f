"""The built-in ``audioldm`` autoencoder and the converter of the official stage-1 checkpoint.

The stand-ins are tiny random diffusers/transformers models written here into a Lightning-style
dict in the official format (LDM/CompVis VAE names, HiFi-GAN with ``ups.`` and no mean/scale,
``scale_factor``, decoys), saved with ``torch.save``. Every reference value is computed here
independently: the VAE and vocoder are called directly, the mel front end is numpy.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from soundctm.builtin.audioldm import AudioLDMAutoencoder
from soundctm.builtin.official.audioldm_stage1 import from_official_stage1
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.plugins.registry import get_registry

SR = 16000
HOP = 160
SCALE = 0.7
VAE = {
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "latent_channels": 8,
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
VOCODER = {
    "model_in_dim": 64,
    "upsample_initial_channel": 32,
    "upsample_rates": [5, 4, 2, 2, 2],
    "upsample_kernel_sizes": [16, 16, 8, 4, 4],
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "leaky_relu_slope": 0.1,
}


# ---------------------------------------------------------------------------- stand-ins
def diffusers_to_ldm(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key in LDM/CompVis naming (the inverse of diffusers'
    converter, written independently)."""
    plain = {"conv_norm_out": "norm_out"}
    for new, old in plain.items():
        key = key.replace(f"coder.{new}.", f"coder.{old}.")
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key)
    if m:
        rest = m[2]
        for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v")):
            rest = re.sub(rf"^{new}\.", f"{old}.", rest)
        rest = rest.replace("to_out.0.", "proj_out.")
        return f"{m[1]}.mid.attn_1.{rest}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key)
    if m:
        level = levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)
    if m:
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return key


def ldm_vae_state(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        name = diffusers_to_ldm(key, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        out[name] = value.clone()
    return out


def make_reference() -> tuple[AutoencoderKL, SpeechT5HifiGan]:
    torch.manual_seed(0)
    levels = len(VAE["block_out_channels"])
    vae = AutoencoderKL(
        **VAE,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    ).eval()
    config = SpeechT5HifiGanConfig(**VOCODER, sampling_rate=SR, normalize_before=False)
    vocoder = SpeechT5HifiGan(config).eval()
    with torch.no_grad():  # away from the default init so that every weight matters
        for p in vocoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return vae, vocoder


def official_dict(vae: AutoencoderKL, vocoder: SpeechT5HifiGan) -> dict:
    state: dict[str, torch.Tensor] = {}
    for k, v in ldm_vae_state(vae).items():
        state[f"first_stage_model.{k}"] = v
    for k, v in vocoder.state_dict().items():
        if k in ("mean", "scale"):
            continue
        state[f"first_stage_model.vocoder.{k.replace('upsampler.', 'ups.')}"] = v.clone()
    state["scale_factor"] = torch.tensor(SCALE)
    state["model.diffusion_model.x"] = torch.zeros(3)
    state["cond_stage_model.y"] = torch.zeros(2)
    state["betas"] = torch.linspace(1e-4, 0.02, 10)
    return {"epoch": 3, "global_step": 1234, "state_dict": state}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    vae, vocoder = make_reference()
    path = tmp_path_factory.mktemp("official") / "audioldm-s-full.ckpt"
    torch.save(official_dict(vae, vocoder), path)
    return path, vae, vocoder


@pytest.fixture(scope="module")
def converted(stage1):
    path, _, _ = stage1
    params, state, info = from_official_stage1(path, norm_num_groups=8)
    ae = AudioLDMAutoencoder(**params).eval()
    ae.load_state_dict(state, strict=True)
    return params, state, info, ae


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------- (a) converter
def test_converter_reads_sizes_and_decode_matches(stage1, converted):
    _, ref_vae, ref_voc = stage1
    params, state, info, ae = converted
    assert params["vae"] == VAE and params["vocoder"] == VOCODER
    assert params["scale_factor"] == pytest.approx(SCALE) and params["hop_length"] == HOP
    assert info["scale_factor"] == pytest.approx(SCALE)
    assert info["skipped_groups"] == ["betas", "cond_stage_model", "model"]
    assert info["skipped_tensors"] == 3 and (info["epoch"], info["global_step"]) == (3, 1234)
    assert torch.equal(state["vocoder.mean"], torch.zeros(64))
    assert torch.equal(state["vocoder.scale"], torch.ones(64))
    assert all(k.startswith(("vae.", "vocoder.")) for k in state)

    z = torch.randn(2, 8, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ae.decode(z)
        mel = ref_vae.decode(z / SCALE).sample
        want = ref_voc(mel[:, 0])[:, : 4 * 8 * HOP]
    assert got.shape == (2, 8 * 640) == want.shape
    assert rel(got, want) < 1e-5


# ---------------------------------------------------------------------------- (b) encoder
def numpy_log_mel(audio: np.ndarray, frames: int) -> np.ndarray:
    """The official front end in float64 numpy, with librosa's Slaney mel filterbank
    re-derived here (librosa is not a dependency)."""
    x = audio - audio.mean()
    x = 0.5 * x / (np.abs(x).max() + 1e-8)
    length = frames * HOP
    x = np.concatenate([x, np.zeros(max(0, length - len(x)))])[:length]
    x = 0.5 * x / np.abs(x).max()
    n_fft, n_mels = 1024, 64
    xp = np.pad(x, n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spec = np.stack(
        [np.abs(np.fft.rfft(xp[i * HOP : i * HOP + n_fft] * window)) for i in range(frames + 1)]
    )

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(
            f >= 1000, 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4), 3 * f / 200
        )

    def mel_to_hz(m):
        return np.where(m >= 15, 1000 * np.exp((m - 15) * np.log(6.4) / 27), 200 * m / 3)

    hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * SR / n_fft
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        tri = np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid))
        fb[m] = np.maximum(tri, 0) * 2 / (hi - lo)
    mel = spec @ fb.T
    return np.log(np.maximum(mel, 1e-5))[:frames]


def signal_clip(seconds: float, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    tones = sum(
        a * torch.sin(2 * math.pi * f * t) for a, f in ((0.5, 220), (0.3, 1000), (0.2, 3100))
    )
    return 0.1 + tones + 0.05 * torch.randn(t.shape, generator=g, dtype=torch.float64)


def test_encode_matches_independent_front_end(stage1, converted):
    _, ref_vae, _ = stage1
    ae = converted[3]
    audio = torch.stack([signal_clip(0.5), 0.3 * signal_clip(0.5, seed=4)])
    frames = 52  # 4 * ceil(8000 / 640)
    want_mel = np.stack([numpy_log_mel(a.numpy(), frames) for a in audio])
    with torch.no_grad():
        got_mel = ae.log_mel(audio.float())
        assert got_mel.shape == (2, frames, 64)
        assert float((got_mel.double() - torch.from_numpy(want_mel)).abs().max()) < 1e-4
        latents = ae.encode(audio.float())
        ref = ref_vae.encode(torch.from_numpy(want_mel).float()[:, None]).latent_dist
        want = SCALE * ref.mean
        assert latents.shape == (2, 8, 13, 16) == want.shape
        assert rel(latents, want) < 1e-4
        # a posterior sample with an explicit generator: reproducible, mean + std * noise
        a = ae.encode(audio.float(), generator=torch.Generator().manual_seed(5))
        b = ae.encode(audio.float(), generator=torch.Generator().manual_seed(5))
        noise = torch.randn(want.shape, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and not torch.equal(a, latents)
        assert rel(a, SCALE * (ref.mean + ref.std * noise)) < 1e-4
        # the official training length: padded to 1024 frames
        assert ae.encode(audio[:1].float(), frames=1024).shape == (1, 8, 256, 16)


# ---------------------------------------------------------------------------- (c) lengths
def test_latent_shapes_and_decoded_lengths(converted):
    ae = converted[3]
    assert ae.latent_shape(10.24) == (8, 256, 16)
    assert ae.latent_shape(10.0) == (8, 250, 16)
    assert ae.latent_shape(1.0) == (8, 25, 16)
    assert ae.latent_shape(0.3) == (8, 8, 16)  # 4800 samples -> 30 frames -> 32 (rounded up)
    assert ae.samples_per_latent_frame == 640
    with torch.no_grad():
        assert ae.decode(torch.zeros(1, *ae.latent_shape(10.0))).shape == (1, 160_000)
        assert ae.decode(torch.zeros(1, *ae.latent_shape(0.3))).shape == (1, 5120)
        assert ae.encode(signal_clip(0.3)[None].float()).shape == (1, *ae.latent_shape(0.3))
    with pytest.raises(InvalidArgumentError, match=r"\[B, 8, T, 16\]"):
        ae.decode(torch.zeros(1, 8, 5, 15))
    with pytest.raises(InvalidArgumentError, match="multiple of 4"):
        ae.encode(torch.zeros(1, 800), frames=10)


# ---------------------------------------------------------------------------- (d) checkpoints
def test_round_trip_through_our_checkpoint_format(tmp_path, converted):
    params, _, _, ae = converted
    save_file(ae.state_dict(), tmp_path / "autoencoder.safetensors")
    registry = get_registry()
    again = registry.build("autoencoder", "audioldm", **params).eval()
    again.load_state_dict(load_file(tmp_path / "autoencoder.safetensors"), strict=True)
    z = torch.randn(1, 8, 6, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again.decode(z), ae.decode(z))
    assert AudioLDMAutoencoder.expand_params({"scale_factor": 1.0})["vae"][
        "block_out_channels"
    ] == [
        128,
        256,
        512,
    ]
    with pytest.raises(InvalidArgumentError, match="unknown audioldm vae parameter"):
        AudioLDMAutoencoder(scale_factor=1.0, vae={"channels": 3})


# ---------------------------------------------------------------------------- (e) bad sources
class NeedsCode:
    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def bad_source(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    ckpt = torch.load(good, weights_only=True)
    state = ckpt["state_dict"]
    if kind == "missing":
        return path
    if kind == "no-first-stage":
        state = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
        torch.save({"state_dict": state}, path)
    elif kind == "no-vocoder":
        state = {k: v for k, v in state.items() if ".vocoder." not in k}
        torch.save({"state_dict": state}, path)
    elif kind == "no-scale-factor":
        del state["scale_factor"]
        torch.save({"state_dict": state}, path)
    elif kind == "missing-vae-tensor":
        del state["first_stage_model.decoder.mid.block_1.conv1.weight"]
        torch.save({"state_dict": state}, path)
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], path)
    elif kind == "needs-code":
        torch.save({"state_dict": state, "callbacks": NeedsCode()}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("no-first-stage", r"no VAE weights \(first_stage_model\.\* keys\)"),
        ("no-vocoder", "no vocoder weights"),
        ("no-scale-factor", "no scale_factor"),
        ("missing-vae-tensor", "lacks vae.decoder.mid_block.resnets.0.conv1.weight"),
        ("truncated", "cannot be read as a torch checkpoint"),
        ("not-a-dict", "no 'state_dict' dict"),
        ("needs-code", "trust_pickle=True"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, stage1, kind, message):
    path = bad_source(kind, tmp_path, stage1[0])
    with pytest.raises(CheckpointError, match=message) as info:
        from_official_stage1(path, norm_num_groups=8)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_trust_pickle_is_an_explicit_opt_in(tmp_path, stage1):
    path = bad_source("needs-code", tmp_path, stage1[0])
    params, _, _ = from_official_stage1(path, norm_num_groups=8, trust_pickle=True)
    assert params["vae"] == VAE


# ---------------------------------------------------------------------------- export
@pytest.mark.slow  # about 30 s on 2 CPU cores (the dynamo export)
def test_decoder_exports_to_onnx(tmp_path, converted):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from soundctm.export.graphs import DecoderGraph

    ae = converted[3]
    graph = DecoderGraph(ae).eval()
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 8, 6, 16, generator=g)
    batch, frames = torch.export.Dim("batch", min=1), torch.export.Dim("frames", min=2, max=64)
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (z,),
            str(tmp_path / "decoder.onnx"),
            dynamo=True,
            opset_version=18,
            input_names=["latents"],
            output_names=["audio"],
            dynamic_shapes={"latents": {0: batch, 2: frames}},
            verbose=False,
            report=False,
        )
    session = ort.InferenceSession(str(tmp_path / "decoder.onnx"))
    for shape in ((2, 8, 6, 16), (1, 8, 11, 16)):
        z = torch.randn(shape, generator=g)
        with torch.no_grad():
            want = graph(z)
        got = torch.from_numpy(session.run(None, {"latents": z.numpy()})[0])
        assert got.shape == want.shape == (shape[0], 640 * shape[2])
        assert rel(got, want) < 1e-4  # measured about 5e-7 (max abs 6e-9 of 0.012)
    assert time.perf_counter() - start < 120
