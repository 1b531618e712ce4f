"""The ``unet2d`` backbone against diffusers' own UNet on the same weights (official maths of
docs/official-models.md section A: the s embedding, E(omega), the text mask)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel

from soundctm.builtin.unet import UNet2DBackbone, guidance_embedding, unet_config
from soundctm.engine.conditioning import Conditioning
from soundctm.engine.ctm import CTM
from soundctm.errors import InvalidArgumentError
from soundctm.training.ctm_losses import feature_distance

#: Four levels as the official (3 cross-attention down blocks + 1 plain), tiny widths.
TINY = {
    "block_out_channels": [8, 16, 16, 16],
    "attention_head_dim": [1, 2, 2, 2],
    "cross_attention_dim": 12,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def _cond(batch: int = 2) -> Conditioning:
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[0, 3:] = False
    return Conditioning(torch.randn(batch, 6, 12, generator=g), mask)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def student():
    b = UNet2DBackbone(TINY, student=True)
    _randomise(b)
    return b.eval()


def test_guidance_embedding_is_the_official_formula():
    w = torch.tensor([0.0, 3.5, 7.0])
    half = 640
    f = np.exp(-np.arange(half) * np.log(10000.0) / (half - 1))
    ref = np.concatenate(
        [np.sin(1000 * w.numpy()[:, None] * f), np.cos(1000 * w.numpy()[:, None] * f)], 1
    )
    got = guidance_embedding(w, 2 * half).numpy()
    assert got.shape == (3, 1280)
    assert np.abs(got - ref).max() < 2e-3  # float32 arguments up to 7000 rad


def test_student_equals_diffusers_with_the_omega_embedding_added(student):
    plain = UNet2DConditionModel(**unet_config(TINY, True)).eval()
    plain.load_state_dict({k.removeprefix("unet."): v for k, v in student.state_dict().items()})
    omega = torch.tensor([3.5, 5.0])
    extra = guidance_embedding(omega, plain.time_embedding.linear_2.out_features)
    hook = plain.time_embedding.register_forward_hook(lambda m, i, out: out + extra)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 16, 8, generator=g)
    t, s = torch.tensor([80.0, 0.5]).log() / 4, torch.tensor([2.0, 0.002]).log() / 4
    cond = _cond()
    with torch.no_grad():
        ref = plain(x, t, encoder_hidden_states=cond.tokens, class_labels=s,
                    encoder_attention_mask=cond.mask).sample  # fmt: skip
        got = student(x, t, s, omega, cond)
    hook.remove()
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    with torch.no_grad():  # omega and s really enter
        assert float((student(x, t, s, omega * 0, cond) - got).abs().max()) > 1e-3
        assert float((student(x, t, t, omega, cond) - got).abs().max()) > 1e-3


def test_teacher_equals_diffusers_and_respects_the_mask():
    teacher = UNet2DBackbone(TINY)
    _randomise(teacher, 3)
    plain = UNet2DConditionModel(**unet_config(TINY, False))
    plain.load_state_dict({k.removeprefix("unet."): v for k, v in teacher.state_dict().items()})
    x = torch.randn(2, 8, 8, 16)
    t = torch.tensor([1.0, 0.1]).log() / 4
    cond = _cond()
    with torch.no_grad():
        ref = plain(
            x, t, encoder_hidden_states=cond.tokens, encoder_attention_mask=cond.mask
        ).sample
        got = teacher(x, t, None, None, cond)
        junk = cond.tokens.clone()
        junk[0, 3:] = 100.0  # masked tokens must not matter
        masked = teacher(x, t, None, None, Conditioning(junk, cond.mask))
    assert float((got - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
    assert float((masked[0] - got[0]).abs().max()) <= 1e-5 * float(got.abs().max())


def test_ctm_jump_and_nine_feature_maps(student):
    ctm = CTM(student, sigma_data=0.25, kind="ctm")
    x = torch.randn(2, 8, 16, 8)
    cond = _cond()
    with torch.no_grad():
        assert torch.equal(ctm.jump(x, 2.0, 2.0, cond, 3.5), x)  # G(x, t, t) = x
        maps = student.features(x, torch.tensor([0.1, 0.2]), cond)
    assert len(maps) == 9  # 4 down blocks, the middle block, 4 up blocks
    assert [m.shape[-1] for m in maps] == [8, 16, 16, 16, 16, 16, 16, 16, 8]
    assert float(feature_distance(maps, maps).abs().max()) == 0.0
    assert student.last_layer is student.unet.conv_out.weight


def test_bad_configs_and_shapes_are_one_line():
    with pytest.raises(InvalidArgumentError, match="may not set 'class_embed_type'"):
        UNet2DBackbone({**TINY, "class_embed_type": "timestep"})
    with pytest.raises(InvalidArgumentError, match="invalid unet2d config"):
        UNet2DBackbone({**TINY, "block_out_channels": [8, 16]})  # 4 block types, 2 widths
    b = UNet2DBackbone(TINY)
    with pytest.raises(InvalidArgumentError, match="multiples of 8"):
        b(torch.randn(1, 8, 10, 16), torch.zeros(1), None, None, _cond(1))


def test_card_params_expand_to_the_full_config():
    full = UNet2DBackbone.expand_params({"config": TINY, "student": True})
    assert full["config"]["block_out_channels"] == [8, 16, 16, 16]
    assert full["config"]["cross_attention_dim"] == 12 and "class_embed_type" not in full["config"]
    assert full["student"] is True
