"""Teacher-training throughput on this CPU (run with `pytest tests/benchmarks --benchmark-only`).

Each benchmark runs the real training loop (`train_teacher`) on SynthCaps with the mel codec and
MiniLM, and records the loop's own measurements of its last logging window (warm caches):
seconds per step, samples/s and the share of step time spent waiting for data.
"""

from __future__ import annotations

import json

import pytest

from soundctm.config import TeacherConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.training.teacher import train_teacher


@pytest.mark.parametrize(("preset", "batch", "seconds"), [("tiny", 32, 3.0), ("small", 32, 3.0)])
def test_teacher_step(benchmark, tmp_path, preset, batch, seconds):
    steps, window = 30, 10
    counter = {"run": 0}

    def run() -> list[dict]:
        counter["run"] += 1
        out = tmp_path / f"run{counter['run']}"
        spec = TeacherConfig(
            out=out,
            backbone=ComponentCard(
                name="dit",
                params={"preset": preset, "in_channels": 64, "max_frames": 1024, "text_dim": 384},
            ),
            text_encoder=ComponentCard(name="minilm"),
            autoencoder=ComponentCard(name="mel"),
            dataset=ComponentCard(name="synthcaps", params={"split": "train", "size": 5000}),
            steps=steps,
            batch_size=batch,
            seconds=seconds,
            save_every=steps,
            log_every=window,
            keep_checkpoints=1,
        )
        train_teacher(spec)
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    records = benchmark.pedantic(run, rounds=1, iterations=1)
    last = [r for r in records if "loss" in r][-1]
    benchmark.extra_info.update(
        {
            "preset": preset,
            "batch": batch,
            "seconds_per_clip": seconds,
            "samples_per_s": round(last["samples_per_s"], 2),
            "seconds_per_step": round(batch / last["samples_per_s"], 3),
            "data_wait_share": round(last["data_wait"], 3),
        }
    )
    print(f"\n{preset}: {benchmark.extra_info}")
    assert last["samples_per_s"] > 0
