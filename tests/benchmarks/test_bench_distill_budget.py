"""On-line distillation vs trajectory-cache mode on the same step budget (toy teacher).

Reports steps/s (cache build included and excluded) and the 1-step quality of each student:
the mean squared distance of its 1-step samples to the teacher's 40-step Heun samples from the
same noise, next to the freshly initialised student's. Run with --benchmark-only -s.
"""

from __future__ import annotations

import time

import pytest
import torch

from soundctm.config import DistillConfig, TeacherConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.engine.ctm import STUDENT
from soundctm.engine.pipeline import Pipeline
from soundctm.plugins.registry import get_registry
from soundctm.training.distill import build_student, distill
from soundctm.training.teacher import train_teacher

PROMPTS = ["a low tone", "a high tone"] * 8
SEEDS = list(range(100, 116))
STEPS = 150


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
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


def one_step_error(pipe: Pipeline, reference: torch.Tensor) -> float:
    out = pipe.generate(PROMPTS, seeds=SEEDS, steps=1, omega=2.0).audio
    return float(((out - reference) ** 2).mean())


@pytest.mark.parametrize("mode", ["online", "trajectory-cache"])
def test_same_budget(benchmark, tmp_path, teacher_dir, mode):
    teacher = Pipeline.load(teacher_dir)
    reference = teacher.generate(PROMPTS, seeds=SEEDS, steps=40, solver="heun", omega=2.0).audio
    torch.manual_seed(2)
    fresh, _ = build_student(teacher, get_registry())
    card = teacher.card.model_copy(deep=True)
    card.kind = STUDENT
    before = one_step_error(
        Pipeline(card, fresh, teacher.text_encoder, teacher.autoencoder), reference
    )
    spec = DistillConfig(
        out=tmp_path / mode,
        teacher=teacher_dir,
        dataset=ComponentCard(name="toy-tones", params={"size": 64}),
        steps=STEPS,
        batch_size=8,
        lr=1e-3,
        save_every=STEPS,
        log_every=STEPS,
        w_min=1.0,
        w_max=3.0,
        omega=2.0,
        ema_decay=0.9,
        seed=2,
        trajectory_cache=mode == "trajectory-cache",
        cache_size=128,
    )
    started = time.perf_counter()
    final = benchmark.pedantic(lambda: distill(spec), rounds=1, iterations=1)
    total = time.perf_counter() - started
    after = one_step_error(Pipeline.load(final), reference)
    info = {
        "mode": mode,
        "steps": STEPS,
        "wall_s": round(total, 2),
        "steps_per_s_incl_cache": round(STEPS / total, 2),
        "mse_1step_vs_teacher40_before": round(before, 5),
        "mse_1step_vs_teacher40_after": round(after, 5),
    }
    benchmark.extra_info.update(info)
    print(f"\n{info}")
