"""The SoundCTM-DiT backbone (soundctm.builtin.dit) on its tiny preset."""

import json
import math

import pytest
import torch

from soundctm.builtin.dit import (
    DIT_PRESETS,
    DiT,
    apply_rotary,
    dit_config,
    patchify,
    rotary_angles,
    sinusoidal_embedding,
    swiglu_hidden,
    unpatchify,
)
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM
from soundctm.engine.schedule import c_noise
from soundctm.engine.weights import init_student_from_teacher
from soundctm.errors import CheckpointError, InvalidArgumentError

TINY = dit_config("tiny")
C, D = TINY["in_channels"], TINY["text_dim"]


def perturb(model, scale=0.1, seed=0):
    """Add seeded noise to every parameter, so zero-initialised layers become non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def build(student=False, seed=0, perturbed=True, **kw):
    torch.manual_seed(seed)
    model = DiT(**dit_config("tiny", student=student, **kw))
    return perturb(model, seed=seed + 1) if perturbed else model


def text(batch, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    tokens = torch.randn(batch, length, D, generator=g)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return Conditioning(tokens, mask)


def inputs(batch=3, frames=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, frames, generator=g)
    t = c_noise(torch.rand(batch, generator=g) * 5 + 0.01)
    return x, t


def test_output_shape_for_teacher_and_student_and_lengths():
    teacher, student = build(), build(student=True)
    for frames in (1, 7, TINY["max_frames"]):
        x, t = inputs(2, frames)
        cond = text(2, [3, 1])
        assert teacher(x, t, None, None, cond).shape == (2, C, frames)
        out = student(x, t, t - 0.3, torch.tensor([2.0, 7.0]), cond)
        assert out.shape == (2, C, frames) and torch.isfinite(out).all()


@pytest.mark.parametrize("frames", [1, 6, 7, 12])
def test_patchify_groups_consecutive_frames_and_unpatchify_inverts_it(frames):
    x = torch.arange(2 * 3 * frames, dtype=torch.float32).view(2, 3, frames)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, math.ceil(frames / 2), 6)
    # token j holds frames 2j and 2j + 1, channel-fastest; a missing last frame is zero
    assert torch.equal(tokens[:, 0, :3], x[:, :, 0])
    if frames > 1:
        assert torch.equal(tokens[:, 0, 3:], x[:, :, 1])
    else:
        assert torch.equal(tokens[:, 0, 3:], torch.zeros(2, 3))
    assert torch.equal(unpatchify(tokens, 2, frames), x)
    assert torch.equal(patchify(x, 1), x.transpose(1, 2))
    assert torch.equal(unpatchify(patchify(x, 1), 1, frames), x)


def test_patched_dit_has_fewer_tokens_and_keeps_every_frame():
    teacher, student = build(patch_size=2), build(student=True, patch_size=2)
    assert teacher.config["patch_size"] == 2 and "patch_size" not in build().config
    for frames in (1, 7, 12):
        x, t = inputs(2, frames)
        cond = text(2, [3, 1])
        assert len(teacher.features(x, t, cond)) == TINY["depth"]
        assert teacher.features(x, t, cond)[0].shape == (2, math.ceil(frames / 2), TINY["width"])
        assert teacher(x, t, None, None, cond).shape == (2, C, frames)
        out = student(x, t, t - 0.3, torch.tensor([2.0, 7.0]), cond)
        assert out.shape == (2, C, frames) and torch.isfinite(out).all()
    # the two frames of one token get different outputs (the projection is per frame)
    x, t = inputs(1, 8)
    out = teacher(x, t, None, None, text(1, [2]))
    assert not torch.allclose(out[..., 0], out[..., 1])
    # the card rebuilds the same network
    again = DiT(**json.loads(json.dumps(teacher.config)))
    again.load_state_dict(teacher.state_dict())
    assert torch.equal(again(x, t, None, None, text(1, [2])), out)
    with pytest.raises(InvalidArgumentError, match="patch_size"):
        DiT(**dit_config("tiny", patch_size=0))


def test_longer_than_max_frames_raises_clear_error():
    model = build()
    x, t = inputs(1, TINY["max_frames"] + 1)
    with pytest.raises(ValueError, match="at most 256"):
        model(x, t, None, None, text(1, [2]))


def test_wrong_channels_or_text_dim_raise():
    model = build()
    x, t = inputs(2, 5)
    with pytest.raises(InvalidArgumentError, match="in_channels"):
        model(x[:, :-1], t, None, None, text(2, [1, 2]))
    bad = Conditioning(torch.randn(2, 2, D + 1), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="text_dim"):
        model(x, t, None, None, bad)


def test_fresh_network_outputs_exactly_zero():
    for student in (False, True):
        model = build(student=student, perturbed=False)
        x, t = inputs()
        out = model(x, t, t, torch.full((3,), 4.0), text(3, [2, 4, 1]))
        assert torch.equal(out, torch.zeros_like(out))


def test_fresh_blocks_are_identity():
    model = build(perturbed=False)
    x, t = inputs()
    feats = model.features(x, t, text(3, [2, 4, 1]))
    expected = model.proj_in(x.transpose(1, 2))
    for f in feats:
        assert torch.equal(f, expected)


def test_padding_text_beyond_mask_does_not_change_output():
    model = build(student=True)
    x, t = inputs(2)
    cond = text(2, [3, 2])
    garbage = torch.randn(2, 4, D) * 10
    padded = Conditioning(
        torch.cat([cond.tokens, garbage], dim=1),
        torch.cat([cond.mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1),
    )
    s, w = t - 0.5, torch.tensor([1.5, 9.0])
    a, b = model(x, t, s, w, cond), model(x, t, s, w, padded)
    assert torch.allclose(a, b, atol=1e-6)
    # the padded tokens would matter if they were not masked
    unmasked = Conditioning(padded.tokens, torch.ones_like(padded.mask))
    assert not torch.allclose(a, model(x, t, s, w, unmasked), atol=1e-4)


def naive_attention(q, k, v, attn_mask=None, dropout_p=0.0):
    """Textbook softmax attention: a fully masked row gives NaN (as older torch SDPA did)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_all_false_mask_row_gives_finite_text_independent_output(attention, monkeypatch):
    if attention == "naive":
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", naive_attention)
    model = build()
    x, t = inputs(2)
    empty = Conditioning(torch.randn(2, 3, D), torch.zeros(2, 3, dtype=torch.bool))
    other = Conditioning(torch.randn(2, 5, D), torch.zeros(2, 5, dtype=torch.bool))
    a = model(x, t, None, None, empty)
    assert torch.isfinite(a).all()
    assert torch.allclose(a, model(x, t, None, None, other), atol=1e-6)
    # a mixed batch: the empty row does not disturb the row with text
    mixed = Conditioning(
        torch.randn(2, 3, D), torch.tensor([[True, True, False], [False, False, False]])
    )
    b = model(x, t, None, None, mixed)
    assert torch.isfinite(b).all()
    assert torch.allclose(b[1], a[1], atol=1e-6)


def test_batch_independence():
    model = build(student=True)
    x, t = inputs(4, 10)
    s, w = t - 0.2, torch.tensor([1.0, 3.0, 5.0, 10.0])
    lengths = [1, 4, 2, 3]
    cond = text(4, lengths)
    batch = model(x, t, s, w, cond)
    for i in range(4):
        n = lengths[i]
        alone = Conditioning(cond.tokens[i : i + 1, :n], cond.mask[i : i + 1, :n])
        row = model(x[i : i + 1], t[i : i + 1], s[i : i + 1], w[i : i + 1], alone)
        assert torch.allclose(row[0], batch[i], atol=1e-6)


def test_features_are_per_block_hidden_states():
    model = build()
    x, t = inputs(2, 9)
    cond = text(2, [2, 3])
    feats = model.features(x, t, cond)
    assert len(feats) == TINY["depth"]
    assert all(f.shape == (2, 9, TINY["width"]) for f in feats)
    assert not torch.allclose(feats[0], feats[1])
    out = model(x, t, None, None, cond)
    last = model.proj_out(model.norm_out(feats[-1])).transpose(1, 2)
    assert torch.allclose(out, last, atol=1e-6)


def test_output_depends_on_noise_level_and_text():
    model = build()
    x, t = inputs(2)
    cond = text(2, [2, 3])
    out = model(x, t, None, None, cond)
    assert not torch.allclose(out, model(x, t + 0.5, None, None, cond), atol=1e-4)
    assert not torch.allclose(out, model(x, t, None, None, text(2, [2, 3], seed=5)), atol=1e-4)


@pytest.mark.parametrize("student", [False, True])
def test_gradients_reach_every_parameter(student):
    model = build(student=student)
    x, t = inputs(2, 6)
    s = t - 0.4 if student else None
    w = torch.tensor([2.0, 6.0]) if student else None
    model(x, t, s, w, text(2, [2, 1])).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_rotary_depends_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    dim, rot = 16, 8
    q, k = (
        torch.randn(dim, generator=g, dtype=torch.float64),
        torch.randn(dim, generator=g, dtype=torch.float64),
    )

    def score(m, n):
        cos, sin = rotary_angles(torch.tensor([m, n]), rot)
        cos, sin = cos.double(), sin.double()
        rq = apply_rotary(q[None], cos[:1], sin[:1])[0]
        rk = apply_rotary(k[None], cos[1:], sin[1:])[0]
        return float(rq @ rk)

    for m, n, shift in [(3, 7, 5), (0, 12, 100), (40, 2, 17)]:
        assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-5, abs_tol=1e-5)
    assert not math.isclose(score(3, 7), score(3, 8), rel_tol=1e-3)
    # rotation preserves norms and leaves the non-rotary dims alone
    cos, sin = rotary_angles(torch.arange(5), rot)
    x = torch.randn(2, 5, dim, generator=g)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., rot:], x[..., rot:])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[:, 0], x[:, 0])  # position 0 is not rotated


def test_sinusoidal_embedding_and_swiglu_size():
    v = torch.tensor([0.0, 1000.0, 5000.0])
    e = sinusoidal_embedding(v, 32)
    assert e.shape == (3, 32)
    assert torch.equal(e[0, :16], torch.ones(16)) and torch.equal(e[0, 16:], torch.zeros(16))
    assert torch.allclose(e[:, :16] ** 2 + e[:, 16:] ** 2, torch.ones(3, 16))
    assert sinusoidal_embedding(v, 33).shape == (3, 33)
    assert swiglu_hidden(1536, 6.0) == 6144
    assert swiglu_hidden(4096, 4.0, multiple=256) == 11008  # LLaMA-7B


def test_student_from_teacher_equals_teacher_then_learns_s_and_omega():
    teacher = build(student=False, seed=3)
    torch.manual_seed(99)
    student = DiT(**dit_config("tiny", student=True))
    fresh = init_student_from_teacher(student, teacher.state_dict())
    assert fresh == ["student_gate"]
    x, t = inputs(3, 11)
    cond = text(3, [2, 4, 1])
    expected = teacher(x, t, None, None, cond)
    assert expected.abs().max() > 1e-3  # the perturbed teacher is not trivial
    for w in (None, torch.tensor([1.0, 4.0, 10.0]), torch.tensor([7.5, 2.0, 3.0])):
        assert torch.equal(student(x, t, t, w, cond), expected)
        assert torch.equal(student(x, t, None, w, cond), expected)
    # the engine's view: g(x, t, t) of the student is the teacher's D(x, t)
    sig = torch.tensor([0.05, 1.0, 30.0])
    xs = torch.randn(3, C, 11)
    d = CTM(teacher, 0.5, "teacher").denoise(xs, sig, cond)
    assert torch.equal(CTM(student, 0.5, "ctm").denoise(xs, sig, cond, omega=3.0), d)

    with torch.no_grad():
        student.student_gate.normal_(0, 1.0)
    w = torch.tensor([2.0, 4.0, 6.0])
    base = student(x, t, t, w, cond)
    assert not torch.allclose(base, expected, atol=1e-4)
    assert not torch.allclose(base, student(x, t, t - 1.0, w, cond), atol=1e-4)
    assert not torch.allclose(base, student(x, t, t, w + 1.0, cond), atol=1e-4)


def test_init_student_skips_mismatched_shapes_and_rejects_foreign_teacher():
    teacher = build(width=32, seed=1)
    student = DiT(**dit_config("tiny", student=True, in_channels=4))
    fresh = init_student_from_teacher(student, teacher.state_dict())
    assert set(fresh) == {"student_gate", "proj_in.weight", "proj_out.weight", "proj_out.bias"}
    assert torch.equal(student.blocks[0].mlp.inp.weight, teacher.blocks[0].mlp.inp.weight)
    with pytest.raises(CheckpointError):
        init_student_from_teacher(student, {"other.weight": torch.zeros(3)})


def test_config_is_json_and_rebuilds_the_same_network():
    model = build(student=True)
    card = json.loads(json.dumps(model.config))
    again = DiT(**card)
    again.load_state_dict(model.state_dict(), strict=True)
    x, t = inputs(2)
    cond = text(2, [1, 3])
    w = torch.tensor([3.0, 5.0])
    assert torch.equal(again(x, t, t - 1, w, cond), model(x, t, t - 1, w, cond))
    # the Fourier frequencies do not depend on the global random state
    torch.manual_seed(12345)
    assert torch.equal(DiT(**card).time_frequencies, model.time_frequencies)


def test_presets_and_parameter_counts():
    counts = {}
    for name in DIT_PRESETS:
        with torch.device("meta"):
            model = DiT(**dit_config(name))
            student = DiT(**dit_config(name, student=True))
        counts[name] = sum(p.numel() for p in model.parameters())
        assert sum(p.numel() for p in student.parameters()) == counts[name] + model.width
    print("DiT parameter counts:", counts)
    assert counts["tiny"] < 100_000
    assert 5_000_000 < counts["small"] < 8_000_000
    # patching only widens the two frame projections: (64 * 2) * 256 more weights each way
    assert counts["small-p2"] - counts["small"] == 2 * 64 * 256 + 64
    assert 0.9e9 < counts["official-1b"] < 1.3e9
    official = dit_config("official-1b")
    assert (official["depth"], official["width"], official["heads"]) == (24, 1536, 24)
    assert official["in_channels"] == 64 and official["rotary_fraction"] == 0.5
    with pytest.raises(InvalidArgumentError, match="tiny"):
        dit_config("huge")
    with pytest.raises(InvalidArgumentError, match="widht"):
        dit_config("tiny", widht=3)
