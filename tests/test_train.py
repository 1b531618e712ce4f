"""Teacher training on the toy plugin's components and data (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.config import TeacherConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import InvalidArgumentError
from soundctm.training import teacher as teacher_mod
from soundctm.training.teacher import TrainingDiverged, train_teacher


def toy_spec(out: Path, **overrides) -> TeacherConfig:
    values = dict(
        out=out,
        backbone=ComponentCard(name="toy-conv", params={"hidden": 32}),
        text_encoder=ComponentCard(name="toy-hash", params={"dim": 16}),
        autoencoder=ComponentCard(name="toy-frames", params={"sample_rate": 8000}),
        dataset=ComponentCard(name="toy-tones", params={"size": 64}),
        valid_dataset=ComponentCard(name="toy-tones", params={"size": 16, "seed": 99}),
        steps=20,
        batch_size=8,
        lr=3e-3,
        save_every=10,
        log_every=5,
        seconds=0.25,
        sigma_data=0.5,
        heldout_clips=16,
        seed=1,
    )
    values.update(overrides)
    return TeacherConfig(**values)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_heldout_loss_and_writes_sampleable_checkpoints(tmp_path):
    spec = toy_spec(
        tmp_path / "run", steps=60, save_every=30, preview_prompts=["a high tone"], preview_steps=2
    )
    final = train_teacher(spec)
    held = [m["heldout_loss"] for m in metrics(spec.out) if "heldout_loss" in m]
    assert len(held) == 2 and held[1] < held[0], held
    # The fresh network (before any step) is the reference: zero-initialised nothing here, so
    # measure it directly.
    torch.manual_seed(1)
    fresh = Pipeline.build(
        kind="teacher",
        backbone=spec.backbone,
        text_encoder=spec.text_encoder,
        autoencoder=spec.autoencoder,
        sigma_data=0.5,
        seconds=0.25,
    )
    valid = teacher_mod.build_dataset(fresh.registry, spec.valid_dataset, 8000, 0.25)
    before = teacher_mod.heldout_loss(
        lambda x, s, c: fresh.ctm(x, s, s, c, None),
        fresh.autoencoder.encode,
        fresh.encode_text,
        valid,
        sigma_data=0.5,
        n=16,
        seed=1,
    )
    assert held[-1] < 0.7 * before, (before, held)
    assert final == spec.out / "checkpoints" / "step-0000060"
    assert (spec.out / "latest").resolve() == final.resolve()
    card = json.loads((final / "model.json").read_text())
    assert card["kind"] == "teacher" and card["provenance"]["step"] == 60
    assert card["defaults"]["solver"] == "heun"
    assert sorted(p.name for p in (spec.out / "previews" / "step-0000060").iterdir()) == [
        "00-a-high-tone-heun2.json",
        "00-a-high-tone-heun2.wav",
    ]
    r = CliRunner().invoke(
        build_app(),
        ["sample", "a low tone", "--model", str(final), "--steps", "3", "-o", str(tmp_path / "o")],
    )
    assert r.exit_code == 0, r.output
    logged = [m for m in metrics(spec.out) if "loss" in m]
    assert [m["step"] for m in logged] == list(range(5, 61, 5))
    assert all(m["samples_per_s"] > 0 and 0 <= m["data_wait"] <= 1 for m in logged)


def test_resume_is_exact(tmp_path):
    straight = toy_spec(tmp_path / "a", valid_dataset=None)
    train_teacher(straight)
    split = toy_spec(tmp_path / "b", valid_dataset=None, steps=10)
    train_teacher(split)
    resumed = toy_spec(tmp_path / "b", valid_dataset=None, steps=20)
    train_teacher(resumed, resume=True)
    a = load_file(str(tmp_path / "a" / "state" / "step-0000020" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "state" / "step-0000020" / "state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lr_schedule_warms_up_holds_and_decays_to_zero():
    lr_at = teacher_mod.lr_at
    assert [lr_at(s, 1.0, 4) for s in (0, 1, 3, 50)] == [0.25, 0.5, 1.0, 1.0]
    rates = [lr_at(s, 1.0, 4, steps=20, decay=5) for s in range(20)]
    assert rates[4:15] == [1.0] * 11  # stable phase, independent of the total
    assert rates[15:] == [1.0, 0.8, 0.6, 0.4, 0.2]  # lr * (steps - step) / decay
    assert lr_at(2, 1.0, 4, steps=4, decay=4) == 0.5  # decay never raises a warm-up rate
    with pytest.raises(InvalidArgumentError, match="decay_steps"):
        toy_spec(Path("unused"), steps=10, decay_steps=11)


def test_resume_with_a_longer_decayed_schedule_is_exact(tmp_path):
    """The default teacher's recipe: constant lr, resumed later with more steps and a decay."""
    straight = toy_spec(tmp_path / "a", valid_dataset=None, decay_steps=6)
    train_teacher(straight)
    train_teacher(toy_spec(tmp_path / "b", valid_dataset=None, steps=10))
    train_teacher(toy_spec(tmp_path / "b", valid_dataset=None, decay_steps=6), resume=True)
    a = load_file(str(tmp_path / "a" / "state" / "step-0000020" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "state" / "step-0000020" / "state.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lrs = [m["lr"] for m in metrics(tmp_path / "a") if "lr" in m]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] < 3e-3 / 5


def test_resuming_an_earlier_state_rewinds_the_metrics_log(tmp_path):
    """A run that went past its resumed state (killed, or resumed from an older state) must not
    log those steps twice."""
    out = tmp_path / "run"
    train_teacher(toy_spec(out, valid_dataset=None))
    first = metrics(out)
    train_teacher(toy_spec(out, valid_dataset=None), resume=out / "state" / "step-0000010")
    again = metrics(out)
    steps = [m["step"] for m in again]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == len(first)
    assert [m["loss"] for m in again] == [m["loss"] for m in first]  # resume is exact


def test_existing_run_needs_resume_and_resume_checks_settings(tmp_path):
    spec = toy_spec(tmp_path / "run", valid_dataset=None, steps=10)
    train_teacher(spec)
    with pytest.raises(InvalidArgumentError, match="--resume"):
        train_teacher(spec)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        train_teacher(
            toy_spec(tmp_path / "run", valid_dataset=None, steps=20, batch_size=4), resume=True
        )
    with pytest.raises(InvalidArgumentError, match="nothing to resume"):
        train_teacher(toy_spec(tmp_path / "new", valid_dataset=None), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = teacher_mod.edm_denoising_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 12 else loss

    monkeypatch.setattr(teacher_mod, "edm_denoising_loss", poisoned)
    spec = toy_spec(tmp_path / "run", valid_dataset=None)
    with pytest.raises(TrainingDiverged, match=r"nan at step 13.*step-0000010"):
        train_teacher(spec)
    assert sorted(p.name for p in (spec.out / "checkpoints").iterdir()) == ["step-0000010"]
    Pipeline.load(spec.out / "checkpoints" / "step-0000010")


def test_gradient_accumulation_and_latent_cache(tmp_path):
    spec = toy_spec(
        tmp_path / "run", valid_dataset=None, steps=4, save_every=4, grad_accum=2, latent_cache=True
    )
    final = train_teacher(spec)
    assert (spec.out / "latent_cache" / "index.json").is_file()
    Pipeline.load(final)
    # same run from the audio instead of the cache: same data, same result
    plain = toy_spec(tmp_path / "plain", valid_dataset=None, steps=4, save_every=4, grad_accum=2)
    a = load_file(str(train_teacher(plain) / "backbone.safetensors"))
    b = load_file(str(final / "backbone.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_mixing_augmentation_runs(tmp_path):
    spec = toy_spec(tmp_path / "run", valid_dataset=None, steps=3, save_every=3, mix_prob=0.5)
    Pipeline.load(train_teacher(spec))


def write_config(path: Path, out: Path, steps: int = 4) -> Path:
    path.write_text(f"""
[train]
out = "{out}"
steps = {steps}
batch_size = 4
save_every = {steps}
log_every = 1
seconds = 0.25
backbone = {{ name = "toy-conv" }}
text_encoder = {{ name = "toy-hash" }}
autoencoder = {{ name = "toy-frames" }}
dataset = {{ name = "toy-tones", params = {{ size = 32 }} }}
""")
    return path


def test_train_cli(tmp_path):
    cfg = write_config(tmp_path / "t.toml", tmp_path / "run")
    r = CliRunner().invoke(build_app(), ["train", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "step 4/4" in r.stderr and "checkpoint" in r.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-0000004" / "model.json").is_file()
    r = CliRunner().invoke(build_app(), ["train", "--config", str(cfg), "--steps", "0"])
    assert r.exit_code == 2 and r.stderr.startswith("error: invalid --steps 0")
    r = CliRunner().invoke(build_app(), ["train", "--config", str(cfg)])
    assert r.exit_code == 2 and "--resume" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace('name = "toy-tones"', 'name = "nope"'))
    r = CliRunner().invoke(build_app(), ["train", "--config", str(bad), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no installed plugin provides the dataset 'nope'" in r.stderr


def test_two_processes_with_gloo(tmp_path):
    cfg = write_config(tmp_path / "t.toml", tmp_path / "run", steps=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "soundctm",
        "train",
        "--config",
        str(cfg),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 2 process(es)" in r.stderr
    Pipeline.load(tmp_path / "run" / "checkpoints" / "step-0000003")
    logged = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(logged) == 3  # only the main process writes metrics


def test_bf16_mixed_precision_on_cpu(tmp_path):
    spec = toy_spec(
        tmp_path / "run", valid_dataset=None, steps=3, save_every=3, mixed_precision="bf16"
    )
    final = train_teacher(spec)
    weights = load_file(str(final / "backbone.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 master weights
    assert all(m["loss"] == m["loss"] for m in metrics(spec.out) if "loss" in m)


def test_tensorboard_tracker(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = toy_spec(
        tmp_path / "run",
        valid_dataset=None,
        steps=4,
        save_every=4,
        log_every=2,
        tracker="tensorboard",
    )
    train_teacher(spec)
    files = sorted((spec.out / "soundctm-train").glob("events*"))
    assert files
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    assert {"loss", "samples_per_s"} <= set(acc.Tags()["scalars"])
