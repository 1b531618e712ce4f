"""Fine-tuning: ``--init-from`` (weights from a model, checks, provenance, resume), ``--freeze``
and the parameter report, on the toy plugin's tiny components and a folder data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.config import DistillConfig, TeacherConfig
from soundctm.engine.checkpoint import ComponentCard, card_sha256
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.events import Message, ParameterReport
from soundctm.training import teacher as teacher_mod
from soundctm.training.distill import distill
from soundctm.training.teacher import train_teacher

TOY = dict(
    backbone=ComponentCard(name="toy-conv", params={"hidden": 32}),
    text_encoder=ComponentCard(name="toy-hash", params={"dim": 16}),
    autoencoder=ComponentCard(name="toy-frames", params={"sample_rate": 8000}),
)


def write_folder(root: Path, n: int, seed: int) -> Path:
    """``n`` 0.6 s chirps at 8 kHz, 'a rising whistle' or 'a falling buzz', with captions."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    t = np.arange(4800) / 8000
    for i in range(n):
        rising = i % 2 == 0
        f0, f1 = (300.0, 1500.0) if rising else (1200.0, 200.0)
        f0 *= 1 + 0.05 * rng.random()
        phase = 2 * math.pi * np.cumsum(f0 + (f1 - f0) * t / t[-1]) / 8000
        wave = np.sin(phase) if rising else np.sign(np.sin(phase)) * 0.5
        sf.write(root / f"clip{i:02d}.wav", (0.7 * wave).astype(np.float32), 8000)
        caption = "a rising whistle" if rising else "a falling buzz"
        (root / f"clip{i:02d}.txt").write_text(caption)
    return root


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A toy teacher pretrained on toy tones."""
    out = tmp_path_factory.mktemp("parent")
    spec = TeacherConfig(
        out=out,
        **TOY,
        dataset=ComponentCard(name="toy-tones", params={"size": 64}),
        steps=20,
        batch_size=8,
        lr=3e-3,
        save_every=20,
        log_every=20,
        seconds=0.25,
        seed=1,
    )
    return train_teacher(spec)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return write_folder(base / "train", 16, 0), write_folder(base / "valid", 8, 1)


def tune_spec(out: Path, init_from: Path | str | None, **overrides) -> TeacherConfig:
    values = dict(
        out=out,
        **TOY,
        init_from=None if init_from is None else str(init_from),
        steps=4,
        batch_size=8,
        lr=2e-3,
        warmup_steps=2,
        save_every=4,
        log_every=2,
        seconds=0.25,
        seed=3,
    )
    values.update(overrides)
    return TeacherConfig(**values)


def backbone_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "backbone.safetensors"))


def test_fine_tune_lowers_the_heldout_loss_on_a_folder_data_set(tmp_path, parent, folders):
    train, valid = folders
    spec = tune_spec(
        tmp_path / "tune",
        parent,
        dataset=ComponentCard(name="folder", params={"root": str(train)}),
        valid_dataset=ComponentCard(name="folder", params={"root": str(valid)}),
        steps=30,
        save_every=30,
        heldout_clips=8,
    )
    base = Pipeline.load(parent)
    valid_set = teacher_mod.build_dataset(base.registry, spec.valid_dataset, 8000, 0.25)
    before = teacher_mod.heldout_loss(
        lambda x, s, c: base.ctm(x, s, s, c, None),
        base.autoencoder.encode,
        base.encode_text,
        valid_set,
        sigma_data=0.5,
        n=8,
        seed=3,
    )
    events: list[object] = []
    final = train_teacher(spec, callback=events.append)
    after = [json.loads(x) for x in (spec.out / "metrics.jsonl").read_text().splitlines()]
    held = [m["heldout_loss"] for m in after if "heldout_loss" in m]
    assert held and held[-1] < 0.9 * before, (before, held)
    card = json.loads((final / "model.json").read_text())
    origin = card["provenance"]["init_from"]
    assert origin["path"] == str(parent.resolve())
    assert origin["card_sha256"] == card_sha256(parent)
    assert origin["components"] == ["backbone", "text_encoder", "autoencoder"]
    assert any(isinstance(e, Message) and "starting from the weights" in e.text for e in events)


def test_init_copies_the_weights_and_freeze_keeps_them(tmp_path, parent):
    events: list[object] = []
    spec = tune_spec(
        tmp_path / "f",
        parent,
        dataset=ComponentCard(name="toy-tones", params={"size": 16, "seed": 5}),
        freeze=["backbone.inp.*", "backbone.mid.weight"],
        ema_decay=0.0,  # the checkpoint is the last raw weights
    )
    final = train_teacher(spec, callback=events.append)
    old, new = backbone_state(parent), backbone_state(final)
    for key in ("inp.weight", "inp.bias", "mid.weight"):
        assert torch.equal(old[key], new[key]), key  # bit-identical: copied and frozen
    assert not torch.equal(old["mid.bias"], new["mid.bias"])  # trained from the parent's
    report = [e for e in events if isinstance(e, ParameterReport)]
    assert len(report) == 1
    frozen_bb = sum(old[k].numel() for k in ("inp.weight", "inp.bias", "mid.weight"))
    rows = {kind: (t, f) for kind, t, f in report[0].components}
    assert rows["backbone"] == (sum(v.numel() for v in old.values()) - frozen_bb, frozen_bb)
    assert rows["text_encoder"][0] == 0 and rows["autoencoder"][0] == 0  # never trained
    assert report[0].trainable == rows["backbone"][0]


def test_init_components_takes_only_some_and_the_rest_from_the_card(tmp_path, parent):
    values = tune_spec(
        tmp_path / "part",
        parent,
        backbone=ComponentCard(name="toy-conv", params={"hidden": 16}),
        dataset=ComponentCard(name="toy-tones", params={"size": 16}),
        init_components=["text_encoder", "autoencoder"],
        steps=1,
        save_every=1,
    ).model_dump()
    del values["text_encoder"]  # not named: the parent's is taken, not the default (minilm)
    spec = TeacherConfig(**values)
    final = train_teacher(spec)
    card = json.loads((final / "model.json").read_text())
    assert card["components"]["text_encoder"]["name"] == "toy-hash"
    assert card["components"]["backbone"]["params"]["hidden"] == 16
    assert card["provenance"]["init_from"]["components"] == ["text_encoder", "autoencoder"]


def test_mismatches_are_one_line_errors(tmp_path, parent):
    other = ComponentCard(name="toy-conv", params={"hidden": 16})
    data = ComponentCard(name="toy-tones", params={"size": 8})
    with pytest.raises(InvalidArgumentError, match=r"backbone 'toy-conv' has hidden = 32 there "):
        train_teacher(tune_spec(tmp_path / "a", parent, backbone=other, dataset=data))
    # a card that lies about its weights: the shape is named
    liar = tmp_path / "liar"
    liar.mkdir()
    for f in parent.iterdir():
        (liar / f.name).write_bytes(f.read_bytes())
    card = json.loads((liar / "model.json").read_text())
    card["components"]["backbone"]["params"]["hidden"] = 16
    (liar / "model.json").write_text(json.dumps(card))
    with pytest.raises(InvalidArgumentError, match=r"tensor 'inp.weight' has shape \[32, 8, 3\]"):
        train_teacher(tune_spec(tmp_path / "b", liar, backbone=other, dataset=data))
    with pytest.raises(InvalidArgumentError, match="matches no parameter"):
        train_teacher(tune_spec(tmp_path / "c", parent, dataset=data, freeze=["backbone.nope*"]))
    with pytest.raises(InvalidArgumentError, match="no trainable parameter"):
        train_teacher(tune_spec(tmp_path / "d", parent, dataset=data, freeze=["backbone.*"]))
    with pytest.raises(CheckpointError, match="does not exist"):
        train_teacher(tune_spec(tmp_path / "e", tmp_path / "nowhere", dataset=data))
    with pytest.raises(InvalidArgumentError, match="init_components needs init_from"):
        tune_spec(tmp_path / "f", None, init_components=["backbone"])
    with pytest.raises(InvalidArgumentError, match="'decoder' is not a component"):
        tune_spec(tmp_path / "g", parent, init_components=["decoder"])


@pytest.mark.parametrize(
    "extra",
    [{}, {"freeze": ["backbone.inp.*"]}, {"lora_rank": 2, "lora_targets": ["emb"]}],
    ids=["full", "freeze", "lora"],
)
def test_resume_wins_over_init_from(tmp_path, parent, extra):
    """A resumed run equals an uninterrupted one, also where the EMA shares its frozen
    weights with the model and the state saves only the EMA's own (freeze, LoRA)."""
    data = ComponentCard(name="toy-tones", params={"size": 16})
    out = tmp_path / "r"
    events: list[object] = []
    # --resume with nothing to resume yet and --init-from: a fresh start from the model
    train_teacher(
        tune_spec(out, parent, dataset=data, steps=2, save_every=2, **extra), resume=True,
        callback=events.append,
    )  # fmt: skip
    more = tune_spec(out, parent, dataset=data, steps=4, **extra)
    train_teacher(more, resume=True, callback=events.append)
    texts = [e.text for e in events if isinstance(e, Message)]
    assert any("starting from the weights" in t for t in texts)
    assert any("its weights win over --init-from" in t for t in texts)
    straight = tmp_path / "s"
    train_teacher(tune_spec(straight, parent, dataset=data, steps=4, **extra))
    a = load_file(str(out / "state" / "step-0000004" / "state.safetensors"))
    b = load_file(str(straight / "state" / "step-0000004" / "state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    frozen = [k for k in a if k.startswith("model.") and f"ema.{k[6:]}" not in a]
    assert bool(frozen) == bool(extra)  # only the frozen weights are left out of the EMA


def test_distill_init_from_a_student(tmp_path, parent):
    data = ComponentCard(name="toy-tones", params={"size": 16})
    common = dict(teacher=parent, dataset=data, batch_size=4, lr=1e-3, w_min=1.0, w_max=3.0)
    first = distill(DistillConfig(out=tmp_path / "s1", steps=1, save_every=1, **common))
    events: list[object] = []
    spec = DistillConfig(
        out=tmp_path / "s2",
        steps=2,
        save_every=2,
        ema_decay=0.0,
        init_from=str(first),
        freeze=["backbone.inp.*"],
        warmup_steps=1,
        **common,
    )
    final = distill(spec, callback=events.append)
    old, new = backbone_state(first), backbone_state(final)
    assert torch.equal(old["inp.weight"], new["inp.weight"])
    assert not torch.equal(old["emb_student.weight"], new["emb_student.weight"])
    teacher_inp = backbone_state(parent)["inp.weight"]
    assert not torch.equal(teacher_inp, new["inp.weight"])  # the student's, not the teacher's
    card = json.loads((final / "model.json").read_text())
    assert card["provenance"]["init_from"]["card_sha256"] == card_sha256(first)
    assert any(isinstance(e, ParameterReport) for e in events)
    lrs = [json.loads(x)["lr"] for x in (spec.out / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(1e-3)  # warm-up of 1 step: full rate from the first
    with pytest.raises(InvalidArgumentError, match="takes a student"):
        distill(DistillConfig(out=tmp_path / "s3", steps=1, init_from=str(parent), **common))


def test_cli_init_from_freeze_and_the_report(tmp_path, parent):
    data = tmp_path / "t.toml"
    data.write_text(f"""
[train]
out = "{tmp_path / "run"}"
steps = 1
batch_size = 2
seconds = 0.25
save_every = 1
backbone = {{ name = "toy-conv", params = {{ hidden = 32 }} }}
dataset = {{ name = "toy-tones", params = {{ size = 4 }} }}
""")
    r = CliRunner().invoke(
        build_app(),
        [
            "train", "--config", str(data), "--init-from", str(parent),
            "--init-components", "backbone,text_encoder,autoencoder",
            "--freeze", "backbone.inp.*", "--freeze", "backbone.mid.*",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "parameters: " in r.stderr and "trainable" in r.stderr and "frozen" in r.stderr
    r = CliRunner().invoke(
        build_app(),
        ["train", "-c", str(data), "-o", str(tmp_path / "x"), "--init-from", str(parent),
         "--freeze", "nothing.*"],
    )  # fmt: skip
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --freeze 'nothing.*' matches no")
