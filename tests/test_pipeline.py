from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from soundctm.engine import checkpoint
from soundctm.engine.ctm import CTM
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError, InvalidArgumentError

PROMPTS = [f"a beep number {i}" for i in range(8)]
SEEDS = [100 + 7 * i for i in range(8)]


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_sample_is_the_same_alone_or_in_a_batch_of_8(toy_student, gamma):
    batch = toy_student.generate(
        PROMPTS, seeds=SEEDS, steps=3, gamma=gamma, nu=2.0, batch_size=8
    ).audio
    for i in (0, 5):
        alone = toy_student.generate(
            [PROMPTS[i]], seeds=[SEEDS[i]], steps=3, gamma=gamma, nu=2.0
        ).audio[0]
        assert torch.allclose(alone, batch[i], atol=1e-6), float((alone - batch[i]).abs().max())
    # and independent of how the batch is split
    split = toy_student.generate(
        PROMPTS, seeds=SEEDS, steps=3, gamma=gamma, nu=2.0, batch_size=3
    ).audio
    assert torch.allclose(split, batch, atol=1e-6)


def test_seeds_change_the_sound_and_repeat_exactly(toy_student):
    a = toy_student.generate(["wind"], seeds=[1]).audio
    b = toy_student.generate(["wind"], seeds=[1]).audio
    c = toy_student.generate(["wind"], seeds=[2]).audio
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_save_load_round_trip_is_bit_exact(tmp_path, toy_student):
    before = toy_student.generate(PROMPTS[:3], seeds=SEEDS[:3], steps=2, gamma=0.3).audio
    path = toy_student.save(tmp_path / "ckpt")
    loaded = Pipeline.load(path)
    for (k, v), (k2, v2) in zip(
        toy_student.ctm.backbone.state_dict().items(),
        loaded.ctm.backbone.state_dict().items(),
        strict=True,
    ):
        assert k == k2 and torch.equal(v, v2)
    after = loaded.generate(PROMPTS[:3], seeds=SEEDS[:3], steps=2, gamma=0.3).audio
    assert torch.equal(before, after)
    assert loaded.card == Pipeline.load(path).card


def test_checkpoint_describes_itself(student_dir):
    card = json.loads((student_dir / "model.json").read_text())
    assert card["format"] == "soundctm-checkpoint" and card["format_version"] == 1
    assert card["kind"] == "ctm" and card["sigma_data"] == 0.5
    assert card["sample_rate"] == 8000 and card["seconds"] == 0.25
    assert card["components"]["backbone"]["name"] == "toy-conv"
    assert card["components"]["backbone"]["params"] == {"student": True}
    assert card["provenance"]["made_by"] == "tests"
    assert "soundctm_version" in card["provenance"]
    file = student_dir / card["components"]["backbone"]["file"]
    with safe_open(str(file), framework="pt") as fh:
        meta = json.loads(fh.metadata()[checkpoint.METADATA_KEY])
    assert meta["components"]["backbone"]["name"] == "toy-conv"
    assert meta["kind"] == "ctm"
    # the toy text encoder keeps no weights in the checkpoint
    assert card["components"]["text_encoder"]["file"] is None
    assert sorted(p.name for p in student_dir.iterdir()) == ["backbone.safetensors", "model.json"]


def test_save_is_atomic(tmp_path, toy_student, monkeypatch):
    path = toy_student.save(tmp_path / "ckpt")
    old = (path / "backbone.safetensors").read_bytes()
    with torch.no_grad():
        for p in toy_student.ctm.parameters():
            p.add_(1.0)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        toy_student.save(path)
    # the old checkpoint is intact and no temporary folder is left behind
    assert (path / "backbone.safetensors").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    Pipeline.load(path)


def test_ctm_wrapper_identities(toy_student):
    ctm = toy_student.ctm
    x = torch.randn(2, 8, 50)
    cond = toy_student.encode_text(["a", "b"])
    t = torch.tensor([3.0, 0.5])
    assert torch.allclose(ctm.jump(x, t, t, cond, 5.0), x)
    assert torch.allclose(ctm.denoise(x, t, cond, 5.0), ctm.g(x, t, t, cond, 5.0))
    s = torch.tensor([1.0, 0.1])
    g = ctm.g(x, t, s, cond, 5.0)
    r = (s / t)[:, None, None]
    assert torch.allclose(ctm.jump(x, t, s, cond, 5.0), r * x + (1 - r) * g, atol=1e-6)


def test_teacher_cannot_jump_but_samples_with_ode_solvers(toy_teacher):
    with pytest.raises(TypeError):
        toy_teacher.ctm.jump(torch.zeros(1, 8, 4), 1.0, 0.5, toy_teacher.encode_text(["x"]))
    for solver in ("heun", "euler", "dpmpp-2m"):
        out = toy_teacher.generate(["a bell"], seeds=[3], steps=4, solver=solver, omega=3.0)
        assert out.audio.shape == (1, 2000) and torch.isfinite(out.audio).all()
    with pytest.raises(InvalidArgumentError, match="needs a CTM student"):
        toy_teacher.generate(["a bell"], seeds=[3], solver="gamma")
    with pytest.raises(InvalidArgumentError, match="nu applies"):
        toy_teacher.generate(["a bell"], seeds=[3], nu=2.0)


def test_teacher_defaults_and_cfg_one_forward(toy_teacher):
    assert toy_teacher.resolve().solver == "heun"
    assert toy_teacher.resolve().steps == 40
    calls = []
    backbone = toy_teacher.ctm.backbone
    handle = backbone.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        toy_teacher.generate(["a", "b"], seeds=[1, 2], steps=2, omega=3.0)
    finally:
        handle.remove()
    assert calls == [4, 4, 4]  # 2 Heun steps = 3 evaluations, each one forward on 2B


def test_refine_reuses_the_noise(toy_student):
    first = toy_student.generate(["a dog barks"], seeds=[42], steps=1)
    refined = toy_student.refine(first.params[0], steps=1)
    assert torch.equal(first.audio, refined.audio)  # same steps: the very same sample
    more = toy_student.refine(first.params[0], steps=4)
    assert more.params[0].steps == 4 and more.params[0].seed == 42


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": 5.0}, "seconds"),
        ({"nu": -1.0}, "nu"),
        ({"omega": float("nan")}, "omega"),
        ({"solver": "nope"}, "no installed plugin provides the solver"),
        ({"solver": "heun", "gamma": 0.5}, "gamma solver only"),
    ],
)
def test_bad_sampling_parameters(toy_student, kwargs, match):
    with pytest.raises((InvalidArgumentError, KeyError), match=match):
        toy_student.generate(["x"], seeds=[0], **kwargs)


def test_bad_prompts_and_seeds(toy_student):
    with pytest.raises(InvalidArgumentError, match="no prompts"):
        toy_student.generate([], seeds=[])
    with pytest.raises(InvalidArgumentError, match="empty"):
        toy_student.generate(["ok", "  "], seeds=[0, 1])
    with pytest.raises(InvalidArgumentError, match="seeds"):
        toy_student.generate(["ok"], seeds=[0, 1])
    with pytest.raises(InvalidArgumentError, match="seed"):
        toy_student.generate(["ok"], seeds=[-1])


def test_corrupt_checkpoints_are_refused(student_dir):
    weights = student_dir / "backbone.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Pipeline.load(student_dir)
    # even without the hash check, a truncated safetensors file is caught
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Pipeline.load(student_dir, verify=False)
    weights.write_bytes(data)
    Pipeline.load(student_dir)


def test_checkpoint_weights_must_fit(student_dir):
    card = json.loads((student_dir / "model.json").read_text())
    card["components"]["backbone"]["params"]["hidden"] = 16
    (student_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not fit"):
        Pipeline.load(student_dir)


def test_card_validation(student_dir):
    card = json.loads((student_dir / "model.json").read_text())
    card["format_version"] = 99
    (student_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="upgrade soundctm"):
        Pipeline.load(student_dir)
    card["format_version"] = 1
    del card["components"]["autoencoder"]
    (student_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="missing"):
        Pipeline.load(student_dir)
    (student_dir / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Pipeline.load(student_dir)


def test_ctm_kind_is_checked():
    with pytest.raises(ValueError):
        CTM(torch.nn.Identity(), 0.5, "student?")
