"""The built-in ``gaussian-dac`` autoencoder and the converter of the official GaussianDAC files.

The stand-ins are written here in the official format (docs/official-models.md §B): a
``weights.pth`` dict ``{"state_dict": ..., "metadata": {"kwargs": ...}}`` as audiotools saves it,
with old-style weight norm (``weight_g`` / ``weight_v``), Snake ``alpha`` and the released key
names, filled with random values, and a ``z_stats.pth`` ``{"z_mean", "z_std"}``. The reference
is an independent functional implementation written from the official ``sa_edm/dac`` code: it
reads the official keys directly (``g * v / ||v||`` computed here, ``F.conv1d`` /
``F.conv_transpose1d``), so decode and encode parity are real checks.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from soundctm.builtin.gaussian_dac import GaussianDACAutoencoder
from soundctm.builtin.official.gaussian_dac_weights import from_official_gaussian_dac
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.plugins.registry import get_registry

#: Tiny, in the official constructor's terms (audiotools writes every kwarg, defaults included).
KWARGS = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4],
    "latent_dim": 8,
    "decoder_dim": 32,
    "decoder_rates": [4, 2],
    "sample_rate": 44100,
    "double_z": True,
}
PARAMS = {k: v for k, v in KWARGS.items() if k != "double_z"}
HOP = 8
LATENT = 8


# ---------------------------------------------------------------------------- stand-ins
def official_layout(kw: dict) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str]]:
    """The weight-normed convolutions (key -> ``weight_v`` shape), the Snakes (key -> channels)
    and the transposed convolutions of the official GaussianDAC (``sa_edm/dac/model/dac.py``)."""
    convs: dict[str, tuple[int, ...]] = {}
    snakes: dict[str, int] = {}
    transposed: set[str] = set()

    def residual(key: str, dim: int) -> None:
        snakes[f"{key}.block.0"] = dim
        convs[f"{key}.block.1"] = (dim, dim, 7)
        snakes[f"{key}.block.2"] = dim
        convs[f"{key}.block.3"] = (dim, dim, 1)

    latent, d = kw["latent_dim"], kw["encoder_dim"]
    convs["encoder.block.0"] = (d, 1, 7)
    n = len(kw["encoder_rates"])
    for i, s in enumerate(kw["encoder_rates"], start=1):
        half, d = d, 2 * d
        for j in range(3):
            residual(f"encoder.block.{i}.block.{j}", half)
        snakes[f"encoder.block.{i}.block.3"] = half
        convs[f"encoder.block.{i}.block.4"] = (d, half, 2 * s)
    snakes[f"encoder.block.{n + 1}"] = d
    convs[f"encoder.block.{n + 2}"] = (2 * latent, d, 3)
    convs["pre_conv"] = (2 * latent, 2 * latent, 1)
    convs["post_conv"] = (latent, latent, 1)
    c = kw["decoder_dim"]
    convs["decoder.model.0"] = (c, latent, 7)
    m = len(kw["decoder_rates"])
    for i, s in enumerate(kw["decoder_rates"]):
        cin, cout = c >> i, c >> (i + 1)
        snakes[f"decoder.model.{i + 1}.block.0"] = cin
        key = f"decoder.model.{i + 1}.block.1"
        convs[key] = (cin, cout, 2 * s)  # ConvTranspose1d weight: (in, out, kernel)
        transposed.add(key)
        for j in range(3):
            residual(f"decoder.model.{i + 1}.block.{j + 2}", cout)
    snakes[f"decoder.model.{m + 1}"] = c >> m
    convs[f"decoder.model.{m + 2}"] = (1, c >> m, 7)
    return convs, snakes, transposed


def gain(key: str, kw: dict) -> float:
    """Weight-norm gains that keep the random network's signals moderate (tanh not saturated)."""
    if re.search(r"\.block\.\d+\.block\.[13]$", key):
        return 0.5  # the convolutions of a residual branch
    if key == f"decoder.model.{len(kw['decoder_rates']) + 2}":
        return 0.3  # the last conv, before tanh
    return 1.0


def official_state(kw: dict, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    convs, snakes, transposed = official_layout(kw)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in convs.items():
        v = torch.randn(shape, generator=g)
        state[f"{key}.weight_g"] = gain(key, kw) * (
            1 + 0.1 * torch.randn(shape[0], 1, 1, generator=g)
        )
        state[f"{key}.weight_v"] = v
        out = shape[1] if key in transposed else shape[0]
        state[f"{key}.bias"] = 0.05 * torch.randn(out, generator=g)
    for key, channels in snakes.items():
        state[f"{key}.alpha"] = 0.5 + torch.rand(1, channels, 1, generator=g)
    return state


def z_stats(latent: int = LATENT, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "z_mean": 0.3 * torch.randn(latent, generator=g),
        "z_std": 0.5 + torch.rand(latent, generator=g),
    }


# ---------------------------------------------------------------------------- reference
def wn(state: dict, key: str) -> torch.Tensor:
    g, v = state[f"{key}.weight_g"], state[f"{key}.weight_v"]
    return g * v / v.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()


def conv(state: dict, key: str, x: torch.Tensor, **options) -> torch.Tensor:
    return F.conv1d(x, wn(state, key), state[f"{key}.bias"], **options)


def snake(state: dict, key: str, x: torch.Tensor) -> torch.Tensor:
    a = state[f"{key}.alpha"]
    return x + torch.sin(a * x) ** 2 / (a + 1e-9)


def residual(state: dict, key: str, x: torch.Tensor, dilation: int) -> torch.Tensor:
    y = snake(state, f"{key}.block.0", x)
    y = conv(state, f"{key}.block.1", y, dilation=dilation, padding=3 * dilation)
    y = conv(state, f"{key}.block.3", snake(state, f"{key}.block.2", y))
    return x + y


def ref_moments(state: dict, kw: dict, audio: torch.Tensor) -> torch.Tensor:
    """``pre_conv(encoder(audio))`` for audio ``[B, n]`` (right-padded to a whole hop)."""
    hop = math.prod(kw["encoder_rates"])
    x = F.pad(audio, (0, -audio.shape[-1] % hop))[:, None]
    x = conv(state, "encoder.block.0", x, padding=3)
    for i, s in enumerate(kw["encoder_rates"], start=1):
        for j, d in enumerate((1, 3, 9)):
            x = residual(state, f"encoder.block.{i}.block.{j}", x, d)
        x = snake(state, f"encoder.block.{i}.block.3", x)
        x = conv(state, f"encoder.block.{i}.block.4", x, stride=s, padding=(s + 1) // 2)
    n = len(kw["encoder_rates"])
    x = conv(state, f"encoder.block.{n + 2}", snake(state, f"encoder.block.{n + 1}", x), padding=1)
    return conv(state, "pre_conv", x)


def ref_decode(state: dict, kw: dict, z: torch.Tensor) -> torch.Tensor:
    """``decoder(post_conv(z))`` -> ``[B, 1, n]`` (the official ``GaussianDAC.decode``)."""
    x = conv(state, "decoder.model.0", conv(state, "post_conv", z), padding=3)
    for i, s in enumerate(kw["decoder_rates"], start=1):
        x = snake(state, f"decoder.model.{i}.block.0", x)
        key = f"decoder.model.{i}.block.1"
        x = F.conv_transpose1d(
            x, wn(state, key), state[f"{key}.bias"], stride=s, padding=(s + 1) // 2
        )
        for j, d in enumerate((1, 3, 9)):
            x = residual(state, f"decoder.model.{i}.block.{j + 2}", x, d)
    m = len(kw["decoder_rates"])
    x = snake(state, f"decoder.model.{m + 1}", x)
    return torch.tanh(conv(state, f"decoder.model.{m + 2}", x, padding=3))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------- fixtures
def save_official(folder: Path, state: dict, kwargs: dict, stats: dict) -> tuple[Path, Path]:
    (folder / "gaussiandac").mkdir(parents=True, exist_ok=True)
    weights, zs = folder / "gaussiandac" / "weights.pth", folder / "z_stats.pth"
    metadata = {"kwargs": kwargs, "logs": {"mel/loss": [1.0, 0.5]}}
    torch.save({"state_dict": state, "metadata": metadata}, weights)
    torch.save(stats, zs)
    return weights, zs


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    state, stats = official_state(KWARGS), z_stats()
    weights, zs = save_official(tmp_path_factory.mktemp("official"), state, dict(KWARGS), stats)
    return weights, zs, state, stats


@pytest.fixture(scope="module")
def converted(official):
    params, state, info = from_official_gaussian_dac(official[0], official[1])
    ae = GaussianDACAutoencoder(**params).eval()
    ae.load_state_dict(state, strict=True)
    return params, state, info, ae


# ---------------------------------------------------------------------------- (a) decode
def test_converter_reads_kwargs_and_decode_matches(official, converted):
    weights, _, ref_state, stats = official
    params, state, info, ae = converted
    assert params == PARAMS
    assert info["kwargs"] == KWARGS and info["hop_length"] == HOP and info["latent_dim"] == LATENT
    assert info["weight_norm_folded"] == len(official_layout(KWARGS)[0])
    assert info["source"] == str(weights)
    assert not any(k.endswith(("weight_g", "weight_v")) for k in state)
    assert torch.equal(state["z_mean"], stats["z_mean"]) and torch.equal(
        state["z_std"], stats["z_std"]
    )

    x = 0.5 * torch.randn(2, LATENT, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ae.decode(x)
        z = 2 * stats["z_std"][None, :, None] * x + stats["z_mean"][None, :, None]
        want = ref_decode(ref_state, KWARGS, z)[:, 0]
    assert got.shape == want.shape == (2, HOP * 16) and got.dtype == torch.float32
    assert float(want.std()) > 0.01 and float(want.abs().max()) < 0.99  # not saturated
    assert rel(got, want) < 1e-5  # measured 8e-7 (max abs 4.9e-7 of a 0.61 peak)


# ---------------------------------------------------------------------------- (b) encode
def test_encode_mean_and_sample_match(official, converted):
    _, _, ref_state, stats = official
    ae = converted[3]
    n = 25 * HOP + 3  # not a whole hop: the official pads on the right
    t = torch.arange(n) / 44100
    g = torch.Generator().manual_seed(3)
    audio = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.3 * torch.randn(n, generator=g)])
    mean_z, std_z = stats["z_mean"][None, :, None], stats["z_std"][None, :, None]
    with torch.no_grad():
        mean, logvar = ref_moments(ref_state, KWARGS, audio).chunk(2, dim=1)
        want = (mean - mean_z) / std_z * 0.5
        got = ae.encode(audio)
        assert got.shape == want.shape == (2, LATENT, 26)
        assert rel(got, want) < 1e-5  # measured 3.3e-7
        a = ae.encode(audio, generator=torch.Generator().manual_seed(5))
        b = ae.encode(audio, generator=torch.Generator().manual_seed(5))
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
        sample = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise
        assert torch.equal(a, b) and not torch.equal(a, got)
        assert rel(a, (sample - mean_z) / std_z * 0.5) < 1e-5


# ---------------------------------------------------------------------------- (c) lengths
def test_latent_shapes_and_decoded_lengths(converted):
    # the official hop (1024) and latent width (64) at tiny widths
    torch.manual_seed(0)
    ae = GaussianDACAutoencoder(
        encoder_dim=1,
        encoder_rates=[4, 4, 8, 8],
        latent_dim=64,
        decoder_dim=16,
        decoder_rates=[8, 8, 4, 4],
    ).eval()
    assert ae.hop_length == 1024 and ae.sample_rate == 44100
    assert ae.latent_shape(10.031) == (64, 432)  # 442,367 samples, rounded up to 432 frames
    assert ae.latent_shape(0.5) == (64, 22)  # 22,050 samples
    assert ae.latent_shape(0.0) == (64, 1)
    assert ae.crop_to_clip and ae.checkpoint_weights
    with torch.no_grad():
        assert ae.decode(torch.zeros(1, 64, 22)).shape == (1, 22 * 1024)
        assert ae.encode(torch.zeros(1, 22050)).shape == (1, 64, 22)
    small = converted[3]
    with pytest.raises(InvalidArgumentError, match=r"\[B, 8, T\]"):
        small.decode(torch.zeros(1, 7, 5))
    with pytest.raises(InvalidArgumentError, match=r"audio \[B, n\]"):
        small.encode(torch.zeros(1, 1, 80))


# ---------------------------------------------------------------------------- (d) checkpoints
def test_round_trip_through_our_checkpoint_format(tmp_path, converted):
    params, _, _, ae = converted
    save_file(ae.state_dict(), tmp_path / "autoencoder.safetensors")
    again = get_registry().build("autoencoder", "gaussian-dac", **params).eval()
    again.load_state_dict(load_file(tmp_path / "autoencoder.safetensors"), strict=True)
    x = torch.randn(1, LATENT, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(again.decode(x), ae.decode(x))
    full = GaussianDACAutoencoder.expand_params({**PARAMS, "encoder_rates": (2, 4)})
    assert full == PARAMS
    assert (
        GaussianDACAutoencoder.expand_params(
            {k: v for k, v in PARAMS.items() if k != "sample_rate"}
        )
        == PARAMS
    )
    with pytest.raises(InvalidArgumentError, match=r"unknown gaussian-dac parameter.*double_z"):
        GaussianDACAutoencoder.expand_params({**PARAMS, "double_z": True})
    for bad, message in (
        ({"encoder_rates": [3, 4]}, "even strides"),
        ({"decoder_rates": [2, 2]}, "same product"),
        ({"decoder_dim": 2}, "leaves no channel"),
        ({"latent_dim": 0}, "latent_dim must be a whole number"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            GaussianDACAutoencoder(**{**PARAMS, **bad})


def test_new_style_weight_norm_keys_convert_the_same(tmp_path, official, converted):
    _, zs, ref_state, _ = official
    renamed = OrderedDict()
    for key, value in ref_state.items():
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        renamed[key.replace(".weight_v", ".parametrizations.weight.original1")] = value
    weights, _ = save_official(tmp_path, renamed, dict(KWARGS), z_stats())
    _, state, _ = from_official_gaussian_dac(weights, zs)
    assert state.keys() == converted[1].keys()
    assert all(torch.equal(state[k], converted[1][k]) for k in state)


# ---------------------------------------------------------------------------- (e) bad sources
class NeedsCode:
    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def bad_source(kind: str, tmp_path: Path, official) -> tuple[Path, Path]:
    good_weights, good_zs, ref_state, stats = official
    state, kwargs, stats = OrderedDict(ref_state), dict(KWARGS), dict(stats)
    if kind == "missing-weights":
        return tmp_path / "gaussiandac" / "weights.pth", good_zs
    if kind == "missing-z-stats":
        return good_weights, tmp_path / "z_stats.pth"
    if kind == "truncated":
        data = good_weights.read_bytes()
        (tmp_path / "weights.pth").write_bytes(data[: len(data) // 2])
        return tmp_path / "weights.pth", good_zs
    if kind == "needs-code":
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": state, "metadata": {"kwargs": kwargs, "x": NeedsCode()}}, path)
        return path, good_zs
    if kind == "no-state-dict":
        path = tmp_path / "weights.pth"
        torch.save({"metadata": {"kwargs": kwargs}}, path)
        return path, good_zs
    if kind == "no-kwargs":
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": state, "metadata": {}}, path)
        return path, good_zs
    if kind == "missing-conv":
        del state["decoder.model.0.weight_g"], state["decoder.model.0.weight_v"]
    elif kind == "missing-direction":
        del state["encoder.block.0.weight_v"]
    elif kind == "missing-alpha":
        del state["decoder.model.1.block.0.alpha"]
    elif kind == "kwargs-disagree":
        kwargs["decoder_dim"] = 16
    elif kind == "unknown-kwarg":
        kwargs["latent_noise"] = 0.1
    elif kind == "z-stats-no-std":
        del stats["z_std"]
    elif kind == "z-stats-wrong-size":
        stats = z_stats(latent=LATENT + 1)
    elif kind == "z-std-zero":
        stats["z_std"] = torch.zeros(LATENT)
    return save_official(tmp_path, state, kwargs, stats)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing-weights", r"no such file \(the official GaussianDAC weights"),
        ("missing-z-stats", r"no such file \(the official latent statistics z_stats.pth"),
        ("truncated", "cannot be read as a torch checkpoint"),
        ("needs-code", "holds pickled objects beyond tensors"),
        ("no-state-dict", "has no 'state_dict' dict"),
        ("no-kwargs", "no metadata.kwargs dict"),
        ("missing-conv", "the state dict lacks decoder.model.0.weight$"),
        ("missing-direction", "has encoder.block.0.weight_g but not encoder.block.0.weight_v"),
        ("missing-alpha", r"lacks decoder.model.1.block.0.alpha$"),
        ("kwargs-disagree", r"decoder.model.0.weight has shape \(32, 8, 7\)"),
        ("unknown-kwarg", "latent_noise that GaussianDAC does not take"),
        ("z-stats-no-std", "has no z_std tensor"),
        ("z-stats-wrong-size", r"z_mean has shape \(9,\), the GaussianDAC has 8"),
        ("z-std-zero", "z_std has values <= 0"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, official, kind, message):
    weights, zs = bad_source(kind, tmp_path, official)
    with pytest.raises(CheckpointError, match=message) as info:
        from_official_gaussian_dac(weights, zs)
    text = str(info.value)
    assert "\n" not in text
    assert str(zs if kind.startswith("z-") or kind == "missing-z-stats" else weights) in text


def test_trust_pickle_is_an_explicit_opt_in(tmp_path, official):
    weights, zs = bad_source("needs-code", tmp_path, official)
    params, _, _ = from_official_gaussian_dac(weights, zs, trust_pickle=True)
    assert params == PARAMS


# ---------------------------------------------------------------------------- export
def test_decoder_exports_to_onnx(tmp_path, converted):
    """``torch.onnx.export(dynamo=True)`` traces the decoder with ``torch.export`` (dynamic
    batch and frames) and converts the program; onnxruntime matches torch at three shapes
    (6 to 9 s on 2 CPU cores)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from soundctm.export.graphs import DecoderGraph

    graph = DecoderGraph(converted[3]).eval()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, LATENT, 6, generator=g)
    batch, frames = torch.export.Dim("batch", min=1), torch.export.Dim("frames", min=2, max=256)
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (x,),
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
    for shape in ((2, LATENT, 6), (1, LATENT, 11), (3, LATENT, 40)):
        x = torch.randn(shape, generator=g)
        with torch.no_grad():
            want = graph(x)
        got = torch.from_numpy(session.run(None, {"latents": x.numpy()})[0])
        assert got.shape == want.shape == (shape[0], HOP * shape[2])
        assert rel(got, want) < 1e-5  # measured 9e-7 to 1.1e-6 (max abs 1.1e-6)
    assert time.perf_counter() - start < 120
