"""The real thing, small: a tiny DiT teacher on SynthCaps with the mel codec and MiniLM."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine.checkpoint import ComponentCard
from soundctm.engine.pipeline import Pipeline
from soundctm.training import teacher as teacher_mod

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_dit_on_synthcaps_learns(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "t.toml"
    text = (ROOT / "configs" / "teacher-tiny.toml").read_text()
    cfg.write_text(text.replace('"runs/teacher-tiny"', json.dumps(str(out))))
    args = [
        "train",
        "--config",
        str(cfg),
        "--steps",
        "40",
        "--save-every",
        "40",
        "--log-every",
        "10",
        "--batch-size",
        "8",
    ]
    # 1-second clips keep the test quick; everything else is the shipped recipe
    env = {"SOUNDCTM_TRAIN_SECONDS": "1.0", "SOUNDCTM_TRAIN_PREVIEW_STEPS": "2"}
    r = CliRunner().invoke(build_app(), args, env=env)
    assert r.exit_code == 0, r.output
    final = out / "checkpoints" / "step-0000040"
    trained = Pipeline.load(final)
    assert trained.card.components["backbone"].name == "dit"
    assert trained.card.components["backbone"].params["width"] == 32  # preset expanded

    spec = tomllib.loads(text)["train"]
    valid_card = ComponentCard(**spec["valid_dataset"])
    valid = teacher_mod.build_dataset(trained.registry, valid_card, 16000, 1.0)

    def loss(pipe: Pipeline) -> float:
        return teacher_mod.heldout_loss(
            lambda x, s, c: pipe.ctm(x, s, s, c, None),
            pipe.autoencoder.encode,
            pipe.encode_text,
            valid,
            sigma_data=0.5,
            n=32,
            seed=3,
        )

    import torch

    torch.manual_seed(0)
    fresh = Pipeline.build(
        kind="teacher",
        backbone=trained.card.components["backbone"],
        text_encoder=trained.card.components["text_encoder"],
        autoencoder=trained.card.components["autoencoder"],
        sigma_data=0.5,
        seconds=1.0,
    )
    before, after = loss(fresh), loss(trained)
    print(f"held-out EDM loss: fresh {before:.4f}, after 40 steps {after:.4f}")
    assert after < 0.85 * before, (before, after)
    r = CliRunner().invoke(
        build_app(),
        [
            "sample",
            "a loud bell rings twice",
            "--model",
            str(final),
            "--steps",
            "4",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "o").glob("*.wav"))) == 1
