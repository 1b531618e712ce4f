"""Sizes in a card are bounded before anything is allocated (issue 14, item 3).

An absurd card ("width 1048576, depth 1000") must fail at once with one line saying how many
parameters it implies and how many the weights file holds, never try to allocate terabytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from soundctm import hookimpl
from soundctm.builtin.dit import DiT, dit_config
from soundctm.builtin.mel import MelAutoencoder
from soundctm.cli.app import build_app
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError, InvalidArgumentError
from soundctm.plugins import registry as reg

ABSURD = {"width": 1048576, "depth": 1000, "heads": 4}


@pytest.fixture
def dit_dir(tmp_path: Path) -> Path:
    """A tiny DiT student (with the toy text encoder and autoencoder), saved."""
    torch.manual_seed(0)
    pipe = Pipeline.build(
        kind="ctm",
        backbone=("dit", {"preset": "tiny", "student": True}),
        text_encoder=("toy-hash", {"dim": 16}),
        autoencoder=("toy-frames", {"sample_rate": 8000, "channels": 8}),
        sigma_data=0.5,
        seconds=0.25,
    )
    return pipe.save(tmp_path / "dit")


def set_params(folder: Path, kind: str = "backbone", **params: object) -> None:
    card = json.loads((folder / "model.json").read_text())
    card["components"][kind]["params"].update(params)
    (folder / "model.json").write_text(json.dumps(card))


def test_an_absurd_dit_card_fails_at_once(dit_dir):
    set_params(dit_dir, **ABSURD)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        Pipeline.load(dit_dir)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "the card implies" in message and "backbone.safetensors holds" in message
    card = json.loads((dit_dir / "model.json").read_text())
    implied = DiT.parameter_count(card["components"]["backbone"]["params"])
    assert f"{implied:,}" in message and "\n" not in message
    assert elapsed < 2.0, elapsed


def test_an_absurd_card_exits_2_through_the_cli(tmp_path, dit_dir):
    set_params(dit_dir, **ABSURD)
    start = time.perf_counter()
    r = CliRunner().invoke(
        build_app(), ["sample", "a beep", "--model", str(dit_dir), "-o", str(tmp_path / "o")]
    )
    assert time.perf_counter() - start < 5.0
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "the card implies" in err and "parameters" in err


def test_an_absurd_card_of_any_plugin_is_counted_on_the_meta_device(student_dir):
    # the toy backbone declares no parameter count: it is built on the meta device and counted
    set_params(student_dir, hidden=1048576)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"the card implies [\d,]+ parameters"):
        Pipeline.load(student_dir)
    assert time.perf_counter() - start < 2.0


def test_a_weights_file_must_exist_for_a_backbone_with_parameters(dit_dir):
    card = json.loads((dit_dir / "model.json").read_text())
    card["components"]["backbone"]["file"] = None
    card["components"]["backbone"]["sha256"] = None
    (dit_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="names no weights file"):
        Pipeline.load(dit_dir)


@pytest.mark.parametrize(
    "params",
    [
        dit_config("tiny"),
        dit_config("tiny", student=True),
        dit_config("small-p2", student=True),
        {"in_channels": 3, "width": 48, "depth": 3, "heads": 6, "text_dim": 7, "max_frames": 9},
        {"width": 40, "depth": 1, "heads": 2, "mlp_ratio": 2.5, "time_features": 6},
        {"width": 16, "heads": 4, "rotary_fraction": 0.25, "patch_size": 3, "student": True},
    ],
)
def test_dit_parameter_count_is_exact(params):
    model = DiT(**params)
    assert DiT.parameter_count(params) == sum(v.numel() for v in model.state_dict().values())


@pytest.mark.parametrize(
    "params",
    [
        {"depth": 10**9},
        {"width": 2**40, "heads": 1},
        {"max_frames": 2**40},
        {"text_dim": 2**40},
        {"in_channels": 2**40},
        {"time_features": 2**40},
        {"mlp_ratio": 1e12},
        {"patch_size": 2**40},
    ],
)
def test_dit_refuses_absurd_sizes_before_building(params):
    start = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="at most"):
        DiT(**params)
    with pytest.raises(InvalidArgumentError, match="at most"):
        DiT.parameter_count(params)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "params",
    [
        {"n_fft": 2**40, "hop_length": 512},
        {"n_mels": 2**30},
        {"sample_rate": 2**40},
        {"griffin_lim_iters": 10**12},
    ],
)
def test_mel_refuses_absurd_sizes_before_building(params):
    start = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="at most"):
        MelAutoencoder(**params)
    assert time.perf_counter() - start < 0.5


class NotMetaSafe:
    """A backbone whose factory cannot run on the meta device (it reads a tensor value)."""

    @hookimpl
    def register_backbones(self, register):
        def build(**params):
            from soundctm_toy.components import ToyBackbone

            if torch.zeros(1).sum().item() != 0:  # .item() fails on the meta device
                raise AssertionError
            return ToyBackbone(**params)

        register("not-meta-safe", build)


def test_a_factory_that_cannot_run_on_meta_still_loads(tmp_path):
    reg.register_plugin(NotMetaSafe(), name="not-meta-safe")
    pipe = Pipeline.build(
        kind="ctm",
        backbone=("not-meta-safe", {"student": True}),
        text_encoder=("toy-hash", {"dim": 16}),
        autoencoder=("toy-frames", {"sample_rate": 8000, "channels": 8}),
        sigma_data=0.5,
        seconds=0.25,
    )
    loaded = Pipeline.load(pipe.save(tmp_path / "m"))
    assert torch.equal(
        loaded.generate(["x"], seeds=[1]).audio, pipe.generate(["x"], seeds=[1]).audio
    )
