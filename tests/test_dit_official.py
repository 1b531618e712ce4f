"""The official SoundCTM-DiT network (``dit-official``): names, maths, CTM wrapper, export.

The reference forward below is written from the written description of the released network
(section B of the project's notes on the official models) with plain tensor ops (einsum
attention, explicit rotary, explicit repeat_interleave), independently of the module.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from soundctm.builtin.dit_official import OFFICIAL_DIT_PRESETS, OfficialDiT
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM
from soundctm.errors import InvalidArgumentError

# head_dim 32: rotary covers the whole head (max(16, 32) = 32); 4 heads, context 64 = 2 kv heads
# each serving 2 query heads (interleaving matters).
FULL_ROTARY = {
    "io_channels": 8,
    "embed_dim": 128,
    "depth": 2,
    "num_heads": 4,
    "cond_token_dim": 64,
    "global_cond_dim": 16,
    "timestep_features": 32,
}
# head_dim 64: rotary covers the first 32 of 64 dims (a strict subset); context 64 = 1 kv head.
PARTIAL_ROTARY = {
    "io_channels": 8,
    "embed_dim": 128,
    "depth": 2,
    "num_heads": 2,
    "cond_token_dim": 64,
    "global_cond_dim": 0,
    "timestep_features": 32,
}
CONFIGS = {"full-rotary": FULL_ROTARY, "partial-rotary": PARTIAL_ROTARY}


def _randomise(model: torch.nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """Random weights everywhere (zero-initialised outputs too), written by the test."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, value in state.items():
        if name.endswith("inv_freq"):
            continue
        if name.endswith(".beta"):
            value.copy_(0.1 * torch.randn(value.shape, generator=g))
        elif name.endswith(".gamma"):
            value.copy_(1 + 0.1 * torch.randn(value.shape, generator=g))
        else:
            fan_in = value.shape[1] if value.ndim > 1 else 1
            value.copy_(torch.randn(value.shape, generator=g) / math.sqrt(fan_in))
    model.load_state_dict(state, strict=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _inputs(
    cfg: dict, batch: int = 2, frames: int = 6, tokens: int = 1, seed: int = 1
) -> tuple[Tensor, Tensor, Tensor, Tensor, Conditioning]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["io_channels"], frames, generator=g)
    t = torch.log(torch.tensor([2.0, 0.3])[:batch]) / 4
    s = torch.log(torch.tensor([0.5, 0.01])[:batch]) / 4
    omega = torch.tensor([3.5, 5.0])[:batch]
    text = torch.randn(batch, tokens, cfg["cond_token_dim"], generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    if tokens > 2:
        mask[1, 2:] = False
    return x, t, s, omega, Conditioning(text, mask)


# ---------------------------------------------------------------------------- reference


def _ln(x: Tensor, sd: dict[str, Tensor], name: str) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{name}.gamma"] + sd[f"{name}.beta"]


def _emb(c: Tensor, sd: dict[str, Tensor]) -> Tensor:
    w = sd["timestep_features.weight"][:, 0]  # [F/2]
    ang = 2 * math.pi * c[:, None] * w[None, :]
    feats = torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)
    h = feats @ sd["to_timestep_embed.0.weight"].T + sd["to_timestep_embed.0.bias"]
    h = h * torch.sigmoid(h)
    return h @ sd["to_timestep_embed.2.weight"].T + sd["to_timestep_embed.2.bias"]


def _omega_embedding(omega: Tensor, width: int) -> Tensor:
    half = width // 2
    f = torch.exp(-torch.arange(half, dtype=torch.float32) * math.log(1e4) / (half - 1))
    a = 1000 * omega[:, None] * f[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def _rotary(x: Tensor, rot: int) -> Tensor:
    """x [B, H, N, d]: pairs (i, i + rot/2) of the first rot dims turn by n * 1e4^(-2i/rot)."""
    n = x.shape[2]
    half = rot // 2
    i = torch.arange(half, dtype=torch.float32)
    theta = torch.arange(n, dtype=torch.float32)[:, None] * 10000.0 ** (-2 * i / rot)[None, :]
    c, s = torch.cos(theta), torch.sin(theta)
    a, b = x[..., :half], x[..., half:rot]
    return torch.cat([a * c - b * s, b * c + a * s, x[..., rot:]], dim=-1)


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    logits = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], -torch.finfo(logits.dtype).max)
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(logits, dim=-1), v)


def reference(
    sd: dict[str, Tensor],
    cfg: dict,
    x: Tensor,
    t: Tensor,
    s: Tensor | None,
    omega: Tensor | None,
    cond: Conditioning,
    student: bool,
) -> tuple[Tensor, list[Tensor]]:
    d, heads = cfg["embed_dim"], cfg["num_heads"]
    hd = d // heads
    rot = max(hd // 2, 32)
    x = x + torch.einsum("oc,bct->bot", sd["preprocess_conv.weight"][:, :, 0], x)
    h = x.transpose(1, 2) @ sd["transformer.project_in.weight"].T
    g = _emb(t, sd)
    if student:
        g = g + _emb(s, sd) + _omega_embedding(omega, d)
    h = torch.cat([g[:, None], h], dim=1)
    b, n, _ = h.shape
    ctx = cond.tokens @ sd["to_cond_embed.0.weight"].T
    ctx = (ctx * torch.sigmoid(ctx)) @ sd["to_cond_embed.2.weight"].T
    kv_heads = ctx.shape[-1] // hd
    feats = []
    for i in range(cfg["depth"]):
        p = f"transformer.layers.{i}"
        y = _ln(h, sd, f"{p}.pre_norm")
        qkv = y @ sd[f"{p}.self_attn.to_qkv.weight"].T
        q, k, v = (z.reshape(b, n, heads, hd).transpose(1, 2) for z in qkv.split(d, dim=-1))
        o = _attention(_rotary(q, rot), _rotary(k, rot), v)
        h = h + o.transpose(1, 2).reshape(b, n, d) @ sd[f"{p}.self_attn.to_out.weight"].T
        y = _ln(h, sd, f"{p}.cross_attend_norm")
        q = (y @ sd[f"{p}.cross_attn.to_q.weight"].T).reshape(b, n, heads, hd).transpose(1, 2)
        kv = ctx @ sd[f"{p}.cross_attn.to_kv.weight"].T
        kk, vv = kv.split(kv.shape[-1] // 2, dim=-1)
        L = ctx.shape[1]
        kk = kk.reshape(b, L, kv_heads, hd).transpose(1, 2)
        vv = vv.reshape(b, L, kv_heads, hd).transpose(1, 2)
        kk = torch.repeat_interleave(kk, heads // kv_heads, dim=1)
        vv = torch.repeat_interleave(vv, heads // kv_heads, dim=1)
        o = _attention(q, kk, vv, cond.mask)
        h = h + o.transpose(1, 2).reshape(b, n, d) @ sd[f"{p}.cross_attn.to_out.weight"].T
        y = _ln(h, sd, f"{p}.ff_norm")
        z = y @ sd[f"{p}.ff.ff.0.proj.weight"].T + sd[f"{p}.ff.ff.0.proj.bias"]
        val, gate = z.split(z.shape[-1] // 2, dim=-1)
        z = val * (gate * torch.sigmoid(gate))
        h = h + z @ sd[f"{p}.ff.ff.2.weight"].T + sd[f"{p}.ff.ff.2.bias"]
        feats.append(h[:, 1:])
    out = (h @ sd["transformer.project_out.weight"].T)[:, 1:].transpose(1, 2)
    out = out + torch.einsum("oc,bct->bot", sd["postprocess_conv.weight"][:, :, 0], out)
    return out, feats


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("student", [True, False])
def test_matches_independent_reference(name: str, student: bool) -> None:
    cfg = CONFIGS[name]
    model = OfficialDiT(**cfg, student=student).eval()
    sd = _randomise(model)
    x, t, s, omega, cond = _inputs(cfg, tokens=4)
    with torch.no_grad():
        got = model(x, t, s, omega, cond)
        feats = model.features(x, t, cond, s_noise=s, omega=omega)
        want, want_feats = reference(sd, cfg, x, t, s, omega, cond, student)
    assert got.shape == x.shape
    # Measured: about 3e-5 absolute on outputs of size ~7 (float32; the student's omega
    # sinusoid has arguments in the thousands).
    assert (got - want).abs().max().item() < 1e-5 * max(1.0, want.abs().max().item())
    assert len(feats) == cfg["depth"]
    for a, b in zip(feats, want_feats, strict=True):
        assert a.shape == (x.shape[0], x.shape[2], cfg["embed_dim"])
        assert (a - b).abs().max().item() < 1e-5 * max(1.0, b.abs().max().item())


def test_rotary_is_a_strict_subset_with_wide_heads() -> None:
    model = OfficialDiT(**PARTIAL_ROTARY)
    assert model.transformer.rotary_pos_emb.inv_freq.shape == (16,)  # 32 of 64 dims
    with pytest.raises(InvalidArgumentError, match="head_dim"):
        OfficialDiT(**{**PARTIAL_ROTARY, "num_heads": 8})  # head_dim 16 < 32


def _expected_keys(depth: int, student: bool) -> list[str]:
    keys = [
        "timestep_features.weight",
        "to_timestep_embed.0.weight",
        "to_timestep_embed.0.bias",
        "to_timestep_embed.2.weight",
        "to_timestep_embed.2.bias",
        "to_cond_embed.0.weight",
        "to_cond_embed.2.weight",
        "transformer.project_in.weight",
        "transformer.project_out.weight",
        "transformer.rotary_pos_emb.inv_freq",
        "preprocess_conv.weight",
        "postprocess_conv.weight",
    ]
    if not student:
        keys += ["to_global_embed.0.weight", "to_global_embed.2.weight"]
    for i in range(depth):
        p = f"transformer.layers.{i}."
        keys += [
            p + f"{n}.{w}"
            for n in ("pre_norm", "cross_attend_norm", "ff_norm")
            for w in ("gamma", "beta")
        ]
        keys += [
            p + "self_attn.to_qkv.weight",
            p + "self_attn.to_out.weight",
            p + "cross_attn.to_q.weight",
            p + "cross_attn.to_kv.weight",
            p + "cross_attn.to_out.weight",
            p + "ff.ff.0.proj.weight",
            p + "ff.ff.0.proj.bias",
            p + "ff.ff.2.weight",
            p + "ff.ff.2.bias",
        ]
    return keys


@pytest.mark.parametrize("student", [True, False])
def test_state_dict_names_are_the_released_ones(student: bool) -> None:
    model = OfficialDiT(**FULL_ROTARY, student=student)
    sd = model.state_dict()
    assert sorted(sd) == sorted(_expected_keys(FULL_ROTARY["depth"], student))
    # The released keys (with "dit." stripped) load strictly into a fresh model.
    released = {f"dit.{k}": v.clone() for k, v in sd.items()}
    other = OfficialDiT(**FULL_ROTARY, student=student)
    other.load_state_dict({k.removeprefix("dit."): v for k, v in released.items()}, strict=True)
    assert OfficialDiT.parameter_count({**FULL_ROTARY, "student": student}) == sum(
        v.numel() for v in sd.values()
    )


def test_official_shapes_and_counts_on_meta() -> None:
    for preset, cond in (("v1", 512), ("v2", 768)):
        params = OfficialDiT.expand_params({"preset": preset, "student": True})
        assert params == {**OFFICIAL_DIT_PRESETS[preset], "student": True}
        with torch.device("meta"):
            model = OfficialDiT(**params)
        sd = model.state_dict()
        assert sd["timestep_features.weight"].shape == (128, 1)
        assert sd["to_timestep_embed.0.weight"].shape == (1536, 256)
        assert sd["to_cond_embed.0.weight"].shape == (cond, cond)
        assert sd["transformer.layers.0.cross_attn.to_kv.weight"].shape == (2 * cond, cond)
        assert sd["transformer.layers.0.ff.ff.0.proj.weight"].shape == (2 * 4 * 1536, 1536)
        assert sd["transformer.rotary_pos_emb.inv_freq"].shape == (16,)
        assert sd["preprocess_conv.weight"].shape == (64, 64, 1)
        assert OfficialDiT.parameter_count(params) == sum(v.numel() for v in sd.values())
    with pytest.raises(InvalidArgumentError, match="preset"):
        OfficialDiT.expand_params({"preset": "v3"})
    with pytest.raises(TypeError):
        OfficialDiT.parameter_count({"width": 3})


def test_omega_and_s_paths_matter() -> None:
    model = OfficialDiT(**FULL_ROTARY, student=True).eval()
    _randomise(model)
    x, t, s, omega, cond = _inputs(FULL_ROTARY)
    with torch.no_grad():
        base = model(x, t, s, omega, cond)
        assert not torch.allclose(base, model(x, t, s, omega + 1.0, cond), atol=1e-5)
        assert not torch.allclose(base, model(x, t, s + 0.3, omega, cond), atol=1e-5)
        # s=None means s=t; omega=None leaves E(omega) out.
        assert torch.allclose(model(x, t, None, omega, cond), model(x, t, t, omega, cond))
        token = model.global_token(t, None, None)
        assert torch.allclose(token, 2 * model.time_embedding(t))
        # The teacher ignores s and omega.
        teacher = OfficialDiT(**FULL_ROTARY, student=False).eval()
        _randomise(teacher)
        a = teacher(x, t, s, omega, cond)
        assert torch.equal(a, teacher(x, t, None, None, cond))


def test_ctm_jump_to_the_same_time_is_identity() -> None:
    model = OfficialDiT(**FULL_ROTARY, student=True).eval()
    _randomise(model)
    ctm = CTM(model, sigma_data=0.5, kind="ctm")
    x, _, _, _, cond = _inputs(FULL_ROTARY)
    t = torch.tensor([2.0, 0.3])
    with torch.no_grad():
        assert torch.allclose(ctm.jump(x, t, t, cond, 5.0), x, atol=1e-6)
        jumped = ctm.jump(x, t, torch.tensor([0.1, 0.01]), cond, 5.0)
    assert jumped.shape == x.shape and torch.isfinite(jumped).all()
    assert model.last_layer is model.postprocess_conv.weight
    assert model.max_frames is None


def test_bad_inputs_raise() -> None:
    model = OfficialDiT(**FULL_ROTARY, student=True, max_frames=8)
    x, t, s, omega, cond = _inputs(FULL_ROTARY)
    with pytest.raises(InvalidArgumentError, match="latents"):
        model(x[:, :4], t, s, omega, cond)
    with pytest.raises(InvalidArgumentError, match="at most 8"):
        model(torch.zeros(2, 8, 9), t, s, omega, cond)
    with pytest.raises(InvalidArgumentError, match="cond_token_dim"):
        model(
            x, t, s, omega, Conditioning(torch.zeros(2, 1, 5), torch.ones(2, 1, dtype=torch.bool))
        )
    with pytest.raises(InvalidArgumentError, match="at most"):
        OfficialDiT.parameter_count({"depth": 10**6})


def test_text_mask_and_empty_text() -> None:
    """Padding tokens do not matter; a row with no real token stays finite (uniform attention,
    as the official masked softmax)."""
    model = OfficialDiT(**FULL_ROTARY, student=True).eval()
    _randomise(model)
    x, t, s, omega, cond = _inputs(FULL_ROTARY, tokens=4)
    changed = cond.tokens.clone()
    changed[1, 2:] += 10.0  # masked positions of row 1
    with torch.no_grad():
        a = model(x, t, s, omega, cond)
        b = model(x, t, s, omega, Conditioning(changed, cond.mask))
        assert torch.allclose(a, b, atol=1e-6)
        empty = Conditioning(cond.tokens, torch.zeros_like(cond.mask))
        assert torch.isfinite(model(x, t, s, omega, empty)).all()


def test_patch_size_two_runs() -> None:
    model = OfficialDiT(**{**FULL_ROTARY, "patch_size": 2}, student=True).eval()
    _randomise(model)
    x, t, s, omega, cond = _inputs(FULL_ROTARY, frames=6)
    with torch.no_grad():
        assert model(x, t, s, omega, cond).shape == x.shape
        assert model.features(x, t, cond)[0].shape == (2, 3, 128)
    with pytest.raises(InvalidArgumentError, match="patch_size"):
        model(x[:, :, :5], t, s, omega, cond)


def test_network_graph_traces_with_torch_export() -> None:
    from soundctm.export.graphs import NetworkGraph

    model = OfficialDiT(**FULL_ROTARY, student=True).eval()
    _randomise(model)
    graph = NetworkGraph(CTM(model, sigma_data=0.5, kind="ctm")).eval()
    x, _, _, omega, cond = _inputs(FULL_ROTARY, tokens=3)
    t, s = torch.tensor([2.0, 0.5]), torch.tensor([0.3, 0.1])
    args = (x, t, s, omega, cond.tokens, cond.mask)
    batch = torch.export.Dim("batch", min=1, max=64)
    frames = torch.export.Dim("frames", min=2, max=1024)
    shapes = {
        "x": {0: batch, 2: frames},
        "t": {0: batch},
        "s": {0: batch},
        "omega": {0: batch},
        "tokens": {0: batch},
        "mask": {0: batch},
    }
    exported = torch.export.export(graph, args, dynamic_shapes=shapes)
    with torch.no_grad():
        want = graph(*args)
        got = exported.module()(*args)
        assert torch.allclose(got, want, atol=1e-5)
        x2 = torch.randn(3, 8, 11)
        args2 = (
            x2,
            t[:1].repeat(3),
            s[:1].repeat(3),
            omega[:1].repeat(3),
            cond.tokens[:1].repeat(3, 1, 1),
            cond.mask[:1].repeat(3, 1),
        )
        assert torch.allclose(exported.module()(*args2), graph(*args2), atol=1e-5)


@pytest.mark.slow
def test_onnx_export_of_a_tiny_pipeline(tmp_path) -> None:
    """``soundctm export`` of a tiny Pipeline whose backbone is ``dit-official`` (a tiny T5 text
    encoder, 16-d, projected to the width: ``project_cond_tokens``)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from test_export import _tiny_t5

    from soundctm.engine.pipeline import Pipeline
    from soundctm.export.onnx import export_onnx
    from soundctm.export.runtime import OrtPipeline

    t5 = _tiny_t5(tmp_path / "t5")
    params = {**FULL_ROTARY, "cond_token_dim": 16, "project_cond_tokens": True, "student": True}
    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind="ctm",
        backbone=("dit-official", params),
        text_encoder=("t5", {"path": str(t5)}),
        autoencoder=("toy-frames", {"sample_rate": 8000, "channels": 8}),
        sigma_data=0.5,
        seconds=0.25,
        max_seconds=1.0,
        provenance={"made_by": "tests"},
    )
    _randomise(pipe.ctm.backbone)
    for name, value in pipe.ctm.backbone.state_dict().items():  # keep the output moderate
        if name.endswith("weight") and value.ndim > 1:
            value.mul_(0.5)
    out = export_onnx(pipe.save(tmp_path / "ckpt"), tmp_path / "exported")
    ort = OrtPipeline.load(out, providers=["cpu"])
    kw = {"seeds": [1, 2], "steps": 2, "gamma": 0.0, "omega": 5.0}
    ref = pipe.generate(["a dog barks", "rain"], **kw)
    got = ort.generate(["a dog barks", "rain"], **kw)
    peak = float(ref.audio.abs().max())
    assert float((got.audio - ref.audio).abs().max()) <= 1e-3 * max(1.0, peak)
