"""Packing checkpoints for distribution (half-precision weights, bundled teacher)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine.checkpoint import read_card
from soundctm.engine.pack import (
    cast_floating,
    pack_checkpoint,
    portable_provenance,
    weights_bytes,
)
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError


def run(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_cast_floating_keeps_integers():
    state = {"w": torch.ones(2), "n": torch.arange(3)}
    out = cast_floating(state, torch.float16)
    assert out["w"].dtype == torch.float16 and out["n"].dtype == torch.int64


def test_pack_halves_weights_and_loads_close(tmp_path, student_dir, teacher_dir):
    shutil.copytree(teacher_dir, student_dir / "teacher")
    packed = pack_checkpoint(student_dir, tmp_path / "packed")
    assert (packed / "teacher" / "model.json").is_file()
    card = read_card(packed)
    assert card.provenance["packed"]["dtype"] == "float16"
    assert card.provenance["teacher"] == "teacher"
    with safe_open(str(packed / card.components["backbone"].file), framework="pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}  # noqa: SIM118
    assert dtypes == {torch.float16}
    assert weights_bytes(packed) < 0.6 * weights_bytes(student_dir)

    full, half = Pipeline.load(student_dir), Pipeline.load(packed)  # verifies the new hashes
    assert next(half.ctm.parameters()).dtype == torch.float32
    a = full.generate(["a beep"], seeds=[3]).audio
    b = half.generate(["a beep"], seeds=[3]).audio
    assert torch.allclose(a, b, atol=1e-2) and not torch.equal(a, b)
    Pipeline.load(packed / "teacher")


def test_pack_refuses_overflow_and_nested_output(tmp_path, student_dir):
    with pytest.raises(Exception, match="outside"):
        pack_checkpoint(student_dir, student_dir / "inner")
    card = json.loads((student_dir / "model.json").read_text())
    from safetensors.torch import save_file

    from soundctm.engine.checkpoint import sha256_file

    path = student_dir / card["components"]["backbone"]["file"]
    with safe_open(str(path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        meta = fh.metadata()
    first = next(iter(state))
    state[first] = state[first] * 0 + 1e6
    save_file(state, str(path), metadata=meta)
    card["components"]["backbone"]["sha256"] = sha256_file(path)
    (student_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="float16 range"):
        pack_checkpoint(student_dir, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_pack_cli(tmp_path, student_dir):
    r = run("pack", student_dir, "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert "MB" in r.stdout and (tmp_path / "p" / "model.json").is_file()
    bad = run("pack", tmp_path / "nothing", "--out", tmp_path / "q")
    assert bad.exit_code == 2 and "no model.json" in bad.stderr
    assert not (tmp_path / "q").exists()


def test_pack_sets_the_default_guidance(tmp_path, student_dir, teacher_dir):
    shutil.copytree(teacher_dir, student_dir / "teacher")
    r = run("pack", student_dir, "--out", tmp_path / "p", "--omega", "4.5")
    assert r.exit_code == 0, r.output
    for card in (read_card(tmp_path / "p"), read_card(tmp_path / "p" / "teacher")):
        assert card.defaults.omega == 4.5 and card.provenance["packed"]["omega"] == 4.5
    pipe = Pipeline.load(tmp_path / "p")
    assert pipe.generate(["a beep"], seeds=[1]).params[0].omega == 4.5
    bad = run("pack", student_dir, "--out", tmp_path / "q", "--omega", "-1")
    assert bad.exit_code == 2 and "omega" in bad.stderr and not (tmp_path / "q").exists()


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_portable_provenance_cuts_absolute_paths_only():
    prov = {
        "init_from": {"model": "C:\\runs\\teacher", "path": "/home/me/runs/teacher", "n": 3},
        "kept": ["hf:Sony/soundctm", "runs/teacher", "a beep / a buzz", "2026-12-07T19:58:33"],
        "share": "\\\\host\\share\\model",
    }
    assert portable_provenance(prov) == {
        "init_from": {"model": "teacher", "path": "teacher", "n": 3},
        "kept": ["hf:Sony/soundctm", "runs/teacher", "a beep / a buzz", "2026-12-07T19:58:33"],
        "share": "model",
    }


def test_pack_ships_no_absolute_path(tmp_path, student_dir, teacher_dir):
    """A card initialised from a local folder records its absolute path; the packed copy keeps
    the parent's card hash but not the build machine's folder (student and bundled teacher)."""
    parent = {
        "model": "runs/parent",
        "path": str(tmp_path / "runs" / "parent"),
        "card_sha256": "ab",
    }
    shutil.copytree(teacher_dir, student_dir / "teacher")
    for card_file in (student_dir / "model.json", student_dir / "teacher" / "model.json"):
        card = json.loads(card_file.read_text())
        card["provenance"]["init_from"] = dict(parent)
        card["provenance"]["nested"] = {"init_from": dict(parent)}
        card_file.write_text(json.dumps(card))
    packed = pack_checkpoint(student_dir, tmp_path / "packed")
    for folder in (packed, packed / "teacher"):
        prov = read_card(folder).provenance
        assert prov["init_from"] == {"model": "runs/parent", "path": "parent", "card_sha256": "ab"}
        assert prov["nested"]["init_from"]["path"] == "parent"
        assert not [s for s in _strings(prov) if s.startswith(str(tmp_path))]
    Pipeline.load(packed)
