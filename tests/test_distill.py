"""SoundCTM distillation on tiny models: unit checks, end-to-end learning, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.config import DistillConfig, TeacherConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.engine.ctm import CTM, STUDENT
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError, DataError, InvalidArgumentError
from soundctm.plugins.registry import get_registry
from soundctm.training.distill import build_student, distill
from soundctm.training.teacher import train_teacher

PROMPTS = ["a low tone", "a high tone", "a high tone", "a low tone"]
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def toy_teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    spec = TeacherConfig(
        out=out,
        backbone=ComponentCard(name="toy-conv", params={"hidden": 32}),
        text_encoder=ComponentCard(name="toy-hash", params={"dim": 16}),
        autoencoder=ComponentCard(name="toy-frames", params={"sample_rate": 8000}),
        dataset=ComponentCard(name="toy-tones", params={"size": 64}),
        steps=80,
        batch_size=8,
        lr=3e-3,
        save_every=80,
        log_every=20,
        seconds=0.25,
        seed=1,
    )
    return train_teacher(spec)


def dspec(out: Path, teacher: Path, **overrides) -> DistillConfig:
    values = dict(
        out=out,
        teacher=teacher,
        dataset=ComponentCard(name="toy-tones", params={"size": 64}),
        steps=6,
        batch_size=8,
        lr=1e-3,
        save_every=6,
        log_every=3,
        w_min=1.0,
        w_max=3.0,
        omega=2.0,
        ema_decay=0.9,
        seed=2,
    )
    values.update(overrides)
    return DistillConfig(**values)


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_distillation_learns_to_jump(tmp_path, toy_teacher_dir):
    teacher = Pipeline.load(toy_teacher_dir)
    reference = teacher.generate(PROMPTS, seeds=SEEDS, steps=40, solver="heun", omega=2.0).audio
    torch.manual_seed(2)
    fresh, _ = build_student(teacher, get_registry())
    card = teacher.card.model_copy(deep=True)
    card.kind = STUDENT
    before_pipe = Pipeline(card, fresh, teacher.text_encoder, teacher.autoencoder)
    before = before_pipe.generate(PROMPTS, seeds=SEEDS, steps=1, omega=2.0).audio

    spec = dspec(
        tmp_path / "run",
        toy_teacher_dir,
        steps=120,
        save_every=120,
        log_every=20,
        preview_prompts=["a low tone"],
    )
    final = distill(spec)
    after = Pipeline.load(final).generate(PROMPTS, seeds=SEEDS, steps=1, omega=2.0).audio
    err_before = float(((before - reference) ** 2).mean())
    err_after = float(((after - reference) ** 2).mean())
    print(f"1-step vs teacher 40-step MSE: before {err_before:.5f}, after {err_after:.5f}")
    assert err_after < 0.7 * err_before, (err_before, err_after)

    logged = [m for m in metrics(spec.out) if "loss_ctm" in m]
    assert logged[-1]["loss_ctm"] < logged[0]["loss_ctm"], [m["loss_ctm"] for m in logged]
    for key in ("loss", "loss_dsm", "adaptive_weight", "k", "teacher_share", "samples_per_s"):
        assert key in logged[-1]
    assert 0 <= logged[-1]["adaptive_weight"] <= 1000
    card = json.loads((final / "model.json").read_text())
    assert card["kind"] == "ctm" and card["components"]["backbone"]["params"]["student"]
    assert card["provenance"]["teacher"] == str(toy_teacher_dir.resolve())
    assert card["defaults"] == {
        "solver": "gamma",
        "steps": 1,
        "gamma": 0.0,
        "nu": 1.0,
        "omega": 2.0,
    }
    # the SoundCTM promise, measured by `soundctm eval`: gamma = 0 keeps the 1-step content
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("caption\na low tone\na high tone\n")
    r = CliRunner().invoke(
        build_app(),
        [
            "eval",
            "--model",
            str(final),
            "--prompts",
            str(prompts),
            "--steps",
            "1,4",
            "--gamma",
            "0,1",
            "-o",
            str(tmp_path / "rep"),
            "--no-cache",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "rep" / "results.json").read_text())["content_preservation"]
    by_gamma = {row["gamma"]: row for row in rows["rows"]}
    print("content preservation 1 -> 4 steps:", {g: v for g, v in by_gamma.items()})
    assert set(by_gamma) == {0.0, 1.0}
    previews = sorted(p.name for p in (spec.out / "previews" / "step-0000120").glob("*.wav"))
    assert previews == ["00-a-low-tone-gamma1.wav", "00-a-low-tone-gamma4.wav"]


@pytest.mark.parametrize("distance", ["l2", "l1", "pseudo-huber"])
def test_other_distances_and_sigma_min_comparison(tmp_path, toy_teacher_dir, distance):
    spec = dspec(
        tmp_path / "run",
        toy_teacher_dir,
        steps=2,
        save_every=2,
        distance=distance,
        compare_at="sigma_min" if distance == "l2" else "s",
        k_distribution="uniform",
    )
    Pipeline.load(distill(spec))


def test_resume_is_exact(tmp_path, toy_teacher_dir):
    distill(dspec(tmp_path / "a", toy_teacher_dir))
    distill(dspec(tmp_path / "b", toy_teacher_dir, steps=3, save_every=3))
    distill(dspec(tmp_path / "b", toy_teacher_dir), resume=True)
    a = load_file(str(tmp_path / "a" / "state" / "step-0000006" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "state" / "step-0000006" / "state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fresh_dit_student_equals_its_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = Pipeline.build(
        kind="teacher",
        backbone=("dit", {"preset": "tiny", "text_dim": 16}),
        text_encoder=("toy-hash", {"dim": 16}),
        autoencoder=("toy-frames", {"channels": 8}),
        sigma_data=0.5,
        seconds=0.1,
    )
    with torch.no_grad():  # make the zero-initialised outputs non-trivial
        for p in teacher.ctm.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student_backbone, fresh = build_student(teacher, get_registry())
    assert fresh == ["student_gate"]
    student = CTM(student_backbone, 0.5, STUDENT)
    x = torch.randn(2, 8, 100) * 3
    cond = teacher.encode_text(["a beep", "rain"])
    t = torch.tensor([2.0, 0.3])
    d_teacher = teacher.ctm.denoise(x, t, cond)
    for omega in (1.0, 7.5):
        assert torch.equal(student.denoise(x, t, cond, omega), d_teacher)
        assert torch.allclose(student.jump(x, t, t, cond, omega), x)


def test_bad_inputs(tmp_path, toy_teacher_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        distill(dspec(tmp_path / "r1", tmp_path / "nope"))
    student_dir = distill(dspec(tmp_path / "r2", toy_teacher_dir, steps=1, save_every=1))
    with pytest.raises(CheckpointError, match="not a teacher"):
        distill(dspec(tmp_path / "r3", student_dir))
    other = ComponentCard(name="toy-frames", params={"sample_rate": 16000})
    with pytest.raises(InvalidArgumentError, match="must share its teacher's autoencoder"):
        distill(dspec(tmp_path / "r4", toy_teacher_dir, autoencoder=other))
    empty = ComponentCard(name="toy-tones", params={"size": 0})
    with pytest.raises(DataError, match="empty"):
        distill(dspec(tmp_path / "r5", toy_teacher_dir, dataset=empty))


def test_distill_cli(tmp_path, toy_teacher_dir):
    cfg = tmp_path / "d.toml"
    cfg.write_text(f"""
[distill]
teacher = "{toy_teacher_dir}"
out = "{tmp_path / "run"}"
steps = 2
batch_size = 4
save_every = 2
log_every = 1
keep_teacher = true
dataset = {{ name = "toy-tones", params = {{ size = 16 }} }}
""")
    r = CliRunner().invoke(build_app(), ["distill", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    final = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert (final / "teacher" / "model.json").is_file()
    r = CliRunner().invoke(
        build_app(),
        ["sample", "a low tone", "--model", str(final), "--seed", "1", "-o", str(tmp_path / "o")],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        build_app(), ["refine", str(tmp_path / "o" / "a-low-tone-1.wav"), "--steps", "4"]
    )
    assert r.exit_code == 0, r.output
    sample_teacher = ["sample", "a low tone", "--model", str(final), "--teacher", "--steps", "3"]
    r = CliRunner().invoke(build_app(), [*sample_teacher, "--seed", "1", "-o", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "t" / "a-low-tone-1.json").read_text())
    assert side["solver"] == "heun" and side["model"].endswith("teacher")
    r = CliRunner().invoke(build_app(), ["sample", "x", "-m", str(toy_teacher_dir), "--teacher"])
    assert r.exit_code == 2 and "keeps no teacher" in r.stderr
    r = CliRunner().invoke(
        build_app(),
        [
            "distill",
            "--config",
            str(cfg),
            "--teacher",
            str(tmp_path / "missing"),
            "-o",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 2 and r.stderr.startswith("error: teacher")
    r = CliRunner().invoke(build_app(), ["distill", "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "no teacher given" in r.stderr


def test_trajectory_cache_mode(tmp_path, toy_teacher_dir):
    spec = dspec(
        tmp_path / "run",
        toy_teacher_dir,
        steps=4,
        save_every=4,
        trajectory_cache=True,
        cache_size=6,
        cache_batch=4,
        grid_n=10,
    )
    Pipeline.load(distill(spec))
    from soundctm.training.trajectories import TrajectoryCache

    cache = TrajectoryCache(spec.out / "trajectory_cache")
    assert len(cache) == 6 and cache.data.shape == (6, 10, 8, 250)
    start = torch.from_numpy(cache.data[:, 0].copy())
    assert abs(float(start.std()) / 80.0 - 1.0) < 0.05  # x at sigma_max = 80 * N(0, 1)
    end = torch.from_numpy(cache.data[:, -1].copy())
    assert float(end.abs().max()) < 10  # the teacher brought it down to data scale
    stamp = (spec.out / "trajectory_cache" / "trajectories.npy").stat().st_mtime_ns
    distill(
        dspec(
            tmp_path / "run",
            toy_teacher_dir,
            steps=6,
            save_every=6,
            trajectory_cache=True,
            cache_size=6,
            cache_batch=4,
            grid_n=10,
        ),
        resume=True,
    )
    assert (spec.out / "trajectory_cache" / "trajectories.npy").stat().st_mtime_ns == stamp


def test_two_processes_with_gloo(tmp_path, toy_teacher_dir):
    import os
    import subprocess
    import sys

    cfg = tmp_path / "d.toml"
    cfg.write_text(f"""
[distill]
teacher = "{toy_teacher_dir}"
out = "{tmp_path / "run"}"
steps = 2
batch_size = 4
save_every = 2
log_every = 1
dataset = {{ name = "toy-tones", params = {{ size = 16 }} }}
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "soundctm",
        "distill",
        "--config",
        str(cfg),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 2 process(es)" in r.stderr
    Pipeline.load(tmp_path / "run" / "checkpoints" / "step-0000002")


def test_bf16_mixed_precision(tmp_path, toy_teacher_dir):
    spec = dspec(tmp_path / "run", toy_teacher_dir, steps=2, save_every=2, mixed_precision="bf16")
    pipe = Pipeline.load(distill(spec))
    assert all(p.dtype == torch.float32 for p in pipe.ctm.parameters())
    assert all(m["loss"] == m["loss"] for m in metrics(spec.out) if "loss" in m)
