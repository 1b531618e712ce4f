"""Distillation cost on this CPU: where a step's time goes, and what the optimisations save.

The scale of the issue: a 6M-parameter DiT ("small" preset), batch 32, 101 tokens (1 s of mel
latents). Run: pytest tests/benchmarks/test_bench_distill.py --benchmark-only -s
"""

from __future__ import annotations

import json

import pytest
import torch

from soundctm.config import DistillConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.engine.guidance import GuidedModel
from soundctm.engine.pipeline import Pipeline
from soundctm.training.distill import distill

SECONDS = 1.0  # 100 mel frames + the time token = 101 tokens (SynthCaps clips last >= 1 s)
BATCH = 32


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind="teacher",
        backbone=("dit", {"preset": "small"}),
        text_encoder=("minilm", {}),
        autoencoder=("mel", {}),
        sigma_data=0.5,
        seconds=SECONDS,
    )
    with torch.no_grad():  # a non-trivial network (zero-initialised outputs otherwise)
        for p in pipe.ctm.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    pipe.save(path)
    return pipe, path


def _inputs(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *pipe.latent_shape(SECONDS), generator=g) * 5
    prompts = [f"a beep number {i}" for i in range(BATCH)]
    cond, uncond = pipe.encode_text(prompts), pipe.encode_text([""] * BATCH)
    return x, cond, uncond, torch.full((BATCH,), 3.0)


def test_guided_teacher_eval_naive(benchmark, teacher):
    """Before: autograd on, conditional and unconditional halves as two forwards."""
    pipe = teacher[0]
    x, cond, uncond, w = _inputs(pipe)

    def naive():
        d_c = pipe.ctm.denoise(x, 5.0, cond)
        d_u = pipe.ctm.denoise(x, 5.0, uncond)
        return d_u + w[:, None, None] * (d_c - d_u)

    benchmark.pedantic(naive, rounds=3, warmup_rounds=1)


def test_guided_teacher_eval_optimised(benchmark, teacher):
    """After: inference mode, one forward on the 2B batch."""
    pipe = teacher[0]
    x, cond, uncond, w = _inputs(pipe)
    model = GuidedModel(pipe.ctm, cond, uncond, w, None)

    def fast():
        with torch.inference_mode():
            return model.denoise(x, 5.0)

    benchmark.pedantic(fast, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("mode", ["online", "trajectory-cache"])
def test_distillation_step(benchmark, teacher, tmp_path, mode):
    _, path = teacher
    steps = 3
    spec = DistillConfig(
        out=tmp_path / mode,
        teacher=path,
        dataset=ComponentCard(name="synthcaps", params={"size": 2000}),
        steps=steps,
        batch_size=BATCH,
        save_every=steps,
        log_every=1,
        trajectory_cache=mode == "trajectory-cache",
        cache_size=64,
        cache_batch=32,
        keep_checkpoints=1,
    )
    benchmark.pedantic(lambda: distill(spec), rounds=1, iterations=1)
    logs = [json.loads(x) for x in (spec.out / "metrics.jsonl").read_text().splitlines()]
    last = logs[1:]  # skip the first (cold caches)
    step_s = sum(BATCH / r["samples_per_s"] for r in last) / len(last)
    info = {
        "mode": mode,
        "seconds_per_step": round(step_s, 2),
        "teacher_share": round(sum(r["teacher_share"] for r in last) / len(last), 3),
        "k": [r["k"] for r in logs],
    }
    benchmark.extra_info.update(info)
    print(f"\n{info}")
