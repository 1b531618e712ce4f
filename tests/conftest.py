"""Shared fixtures: the toy outside plugin (installed through an entry point) and tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TOY_SITE = Path(__file__).parent / "fixtures" / "toy_site"

# Make the toy plugin "installed": its dist-info declares an entry point in the group
# `soundctm`, which soundctm discovers exactly as it discovers a pip-installed plugin.
sys.path.insert(0, str(TOY_SITE))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(TOY_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
)
os.environ.pop("SOUNDCTM_DISABLE_PLUGIN_AUTOLOAD", None)
#: The opt-in switches of tests/parity (the official code's checkout and Python), kept before the
#: environment is cleared of every SOUNDCTM_ variable.
OFFICIAL_PARITY_ENV = {k: v for k, v in os.environ.items() if k.startswith("SOUNDCTM_OFFICIAL_")}
for _key in [k for k in os.environ if k.startswith("SOUNDCTM_")]:
    os.environ.pop(_key)


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch, tmp_path_factory):
    """Each test starts from the plugins that are installed, with no run-time additions, an
    empty weights cache and downloads forbidden (tests never download)."""
    from soundctm.plugins.registry import reset_registry

    for key in [k for k in os.environ if k.startswith("SOUNDCTM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SOUNDCTM_OFFLINE", "1")
    monkeypatch.setenv("SOUNDCTM_CACHE", str(tmp_path_factory.mktemp("soundctm-cache")))
    reset_registry()
    yield
    reset_registry()


def build_toy(
    kind: str = "ctm",
    seconds: float = 0.25,
    max_seconds: float = 1.0,
    seed: int = 0,
    text_encoder: str = "toy-hash",
):
    """A tiny pipeline made of the toy plugin's components, randomly initialised (seeded)."""
    import torch

    from soundctm.engine.pipeline import Pipeline

    torch.manual_seed(seed)
    return Pipeline.build(
        kind=kind,
        backbone=("toy-conv", {"student": kind == "ctm"}),
        text_encoder=(text_encoder, {"dim": 16}),
        autoencoder=("toy-frames", {"sample_rate": 8000, "channels": 8}),
        sigma_data=0.5,
        seconds=seconds,
        max_seconds=max_seconds,
        provenance={"made_by": "tests"},
    )


@pytest.fixture
def toy_student():
    return build_toy("ctm")


@pytest.fixture
def toy_teacher():
    return build_toy("teacher")


@pytest.fixture
def student_dir(tmp_path, toy_student):
    return toy_student.save(tmp_path / "student")


@pytest.fixture
def teacher_dir(tmp_path, toy_teacher):
    return toy_teacher.save(tmp_path / "teacher")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """A tiny random T5 encoder and its tokenizer (tests/tiny_export.py)."""
    from tiny_export import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_t5_dir):
    """(checkpoint dir, exported dir, export events) of the tiny student, exported once per
    session (about 30 s): tests/test_export.py and tests/test_js.py share it."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from tiny_export import build_tiny

    from soundctm.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("export")
    ckpt = build_tiny(tiny_t5_dir).save(root / "student")
    events: list = []
    out = export_onnx(ckpt, root / "exported", callback=events.append)
    return ckpt, out, events
