"""Distillation with a UNet teacher (``unet2d`` + ``flan-t5`` + ``audioldm``, tiny and random) on
a CSV data set in the AudioCaps layout, with the shipped tiny recipe and the teacher-feature
distance over the UNet's 9 maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("diffusers")

from test_export import _tiny_t5
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "soundctm-unet-tiny.toml"
UNET = {
    "block_out_channels": [8, 16, 16, 16],
    "attention_head_dim": [1, 2, 2, 2],
    "cross_attention_dim": 16,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
STAGE1 = {
    "scale_factor": 0.7,
    "vae": {"block_out_channels": [32, 32, 64], "layers_per_block": 1, "norm_num_groups": 8},
    "vocoder": {"upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                "resblock_dilation_sizes": [[1, 3, 5]]},
    "latent_multiple": 8,
}  # fmt: skip


def tiny_unet_teacher(path: Path, t5_dir: Path) -> Path:
    import torch
    from transformers import T5Config

    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind="teacher",
        backbone=("unet2d", {"config": UNET}),
        text_encoder=("flan-t5", {"config": T5Config.from_pretrained(t5_dir).to_dict(),
                                  "tokenizer": str(t5_dir)}),
        autoencoder=("audioldm", STAGE1),
        sigma_data=0.25,
        seconds=1.0,
        max_seconds=10.24,
    )  # fmt: skip
    return pipe.save(path)


def write_audiocaps_csv(folder: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    rows = ["file_name,caption"]
    (folder / "audio").mkdir(parents=True)
    t = np.arange(16000) / 16000
    for i in range(n):
        clip = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.01 * rng.standard_normal(16000)
        sf.write(folder / "audio" / f"clip{i}.wav", clip.astype(np.float32), 16000)
        rows.append(f"audio/clip{i}.wav,a tone number {i}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "train.csv"


def test_distill_a_unet_teacher_with_the_tiny_recipe(tmp_path, monkeypatch):
    teacher = tiny_unet_teacher(tmp_path / "teacher", _tiny_t5(tmp_path / "t5"))
    monkeypatch.chdir(tmp_path)
    write_audiocaps_csv(tmp_path / "data")
    out = tmp_path / "student"
    r = CliRunner().invoke(
        build_app(),
        ["distill", "--config", str(RECIPE), "--teacher", str(teacher), "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) for row in steps)
    student = Pipeline.load(out / "latest")
    assert student.card.kind == "ctm" and student.card.components["backbone"].name == "unet2d"
    assert student.card.components["backbone"].params["student"] is True
    gen = student.generate(["a tone number 2"], seeds=[0], steps=1, seconds=1.0)
    assert gen.audio.shape == (1, 16000) and bool(np.isfinite(gen.audio.numpy()).all())
