"""Sampling latency of the engine (1-step and multi-step) with a small DiT student."""

from __future__ import annotations

import pytest
import torch

from soundctm.engine.pipeline import Pipeline


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return Pipeline.build(
        kind="ctm",
        backbone=("dit", {"preset": "small", "student": True}),
        text_encoder=("minilm", {}),
        autoencoder=("mel", {}),
        sigma_data=0.5,
        seconds=3.0,
    )


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_generate_one_clip(benchmark, student, steps):
    student.generate(["warm up"], seeds=[0], steps=steps)
    out = benchmark(
        student.generate, ["a high-pitched beep repeating three times"], seeds=[1], steps=steps
    )
    benchmark.extra_info["real_time_factor"] = round(
        benchmark.stats.stats.mean / (out.audio.shape[1] / out.sample_rate), 4
    )
    assert out.audio.shape == (1, 48000)
