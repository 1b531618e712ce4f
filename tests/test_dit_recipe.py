"""The SoundCTM-DiT recipe end to end with its tiny configs: a DiT teacher trained on the CLAP and
GaussianDAC of ``hf:koichisaito/soundctm_dit`` (a stand-in in the official format, written by
test_import_dit's helper and served by a stand-in download), distilled, sampled; and the GPU
configs parse with the official hyper-parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_gaussian_dac import LATENT
from test_import_dit import HIDDEN, write_official
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.config import DistillSettings, TrainSettings, load_settings
from soundctm.engine.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SECONDS = 0.01  # 441 samples: 56 latent frames at the stand-in's hop of 8


def write_manifest(folder: Path, n: int = 4) -> Path:
    """AudioCaps layout: ``file_name,caption`` with paths relative to the manifest, 44.1 kHz."""
    rng = np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True)
    t = np.arange(int(0.6 * 44100)) / 44100
    rows = ["file_name,caption"]
    for i in range(n):
        clip = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / "audio" / f"c{i}.wav", clip.astype(np.float32), 44100)
        rows.append(f"audio/c{i}.wav,a tone number {i}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "train.csv"


def shrunk(recipe: Path, out: Path, replacements: dict[str, str]) -> Path:
    """``recipe`` with the sizes of the real model replaced by the stand-in's (each once)."""
    text = recipe.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    out.write_text(text, encoding="utf-8")
    return out


@pytest.mark.slow  # about 40 s of CPU (three CLI runs: train, distill, sample)
def test_dit_teacher_from_the_official_components_then_distil_then_sample(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "hf" / ("c" * 40)
    snapshot.mkdir(parents=True)
    write_official(snapshot, "v2")
    fetched: list[str] = []

    def download(repo, revision=None, allow_patterns=None):
        fetched.append(repo)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setenv("SOUNDCTM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "data")
    teacher_cfg = shrunk(
        CONFIGS / "soundctm-dit-teacher-tiny.toml",
        tmp_path / "teacher.toml",
        {
            "io_channels = 64": f"io_channels = {LATENT}",
            "cond_token_dim = 768": f"cond_token_dim = {HIDDEN}",
            "seconds = 1.0": f"seconds = {SECONDS}",
        },
    )
    app = build_app()
    r = CliRunner().invoke(app, ["train", "--config", str(teacher_cfg)])
    assert r.exit_code == 0, r.output
    assert fetched == ["koichisaito/soundctm_dit"]
    teacher_dir = tmp_path / "runs" / "soundctm-dit-teacher-tiny" / "latest"
    card = json.loads((teacher_dir / "model.json").read_text())
    assert card["kind"] == "teacher" and card["sample_rate"] == 44100
    assert card["components"]["backbone"]["name"] == "dit-official"
    assert card["components"]["text_encoder"]["name"] == "clap"
    assert card["components"]["autoencoder"]["name"] == "gaussian-dac"
    origin = card["provenance"]["init_from"]
    assert origin["repo"] == "koichisaito/soundctm_dit" and origin["variant"] == "v2"
    assert origin["components"] == ["text_encoder", "autoencoder"]
    imported = next((tmp_path / "cache" / "hub" / "koichisaito--soundctm_dit").iterdir())
    for kind in ("text_encoder", "autoencoder"):  # the official model's weights, unchanged
        ours = load_file(str(teacher_dir / f"{kind}.safetensors"))
        theirs = load_file(str(imported / f"{kind}.safetensors"))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), kind

    r = CliRunner().invoke(app, ["distill", "--config", str(CONFIGS / "soundctm-dit-tiny.toml")])
    assert r.exit_code == 0, r.output
    student_dir = tmp_path / "runs" / "soundctm-dit-tiny" / "latest"
    rows = [json.loads(x) for x in (student_dir.parent / "metrics.jsonl").open()]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) and row["adaptive_weight"] > 0 for row in steps)
    student = Pipeline.load(student_dir)
    assert student.card.kind == "ctm" and student.card.defaults.omega == 5.0
    assert student.card.components["backbone"].params["student"] is True

    r = CliRunner().invoke(
        app, ["sample", "a tone number 2", "-m", str(student_dir), "--seed", "3", "-o", "out"]
    )
    assert r.exit_code == 0, r.output
    audio, rate = sf.read(next((tmp_path / "out").glob("*.wav")))
    assert rate == 44100 and audio.shape == (round(SECONDS * 44100),)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    shutil.rmtree(tmp_path / "cache")


@pytest.mark.parametrize(
    "name, command, expected",
    [
        (
            "soundctm-dit-audiocaps.toml",
            DistillSettings,
            {"steps": 30000, "batch_size": 21, "lr": 8e-5, "ema_decay": 0.999, "w_min": 1.0,
             "w_max": 10.0, "lambda_dsm": 0.2, "distance": "feature", "grid_n": 40,
             "omega": 5.0},
        ),
        (
            "soundctm-dit-teacher.toml",
            TrainSettings,
            {"sigma_data": 0.5, "seconds": 10.031, "init_from": "hf:koichisaito/soundctm_dit",
             "init_components": ["text_encoder", "autoencoder"]},
        ),
    ],
)  # fmt: skip
def test_the_gpu_recipes_hold_the_official_settings(name, command, expected):
    settings = load_settings(command, CONFIGS / name)
    for key, value in expected.items():
        assert getattr(settings, key) == value, key
    if command is TrainSettings:
        assert settings.backbone.name == "dit-official"
        assert settings.backbone.params == {"preset": "v2"}
        assert "text_encoder" not in settings.model_fields_set  # taken from the official model
