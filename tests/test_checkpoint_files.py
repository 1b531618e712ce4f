"""Checkpoint files stay inside their checkpoint, are always hashed, and cards are versioned
with a positive integer (issue 14, item 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.cli.models import default_model_path
from soundctm.engine.checkpoint import read_card, sha256_file
from soundctm.engine.pack import pack_checkpoint
from soundctm.engine.pipeline import Pipeline
from soundctm.errors import CheckpointError


def edit_card(folder: Path, **backbone: object) -> dict:
    """Set fields of the backbone component in ``folder/model.json`` (None deletes a key)."""
    card = json.loads((folder / "model.json").read_text())
    comp = card["components"]["backbone"]
    for key, value in backbone.items():
        if value is None:
            comp.pop(key, None)
        else:
            comp[key] = value
    (folder / "model.json").write_text(json.dumps(card))
    return card


def outside_copy(student_dir: Path, tmp_path: Path) -> Path:
    """A valid copy of the backbone weights outside the checkpoint (its hash still matches)."""
    target = tmp_path / "elsewhere" / "backbone.safetensors"
    target.parent.mkdir()
    shutil.copyfile(student_dir / "backbone.safetensors", target)
    return target


@pytest.mark.parametrize("how", ["absolute", "dotdot", "dotdot-inner", "symlink", "dir-symlink"])
def test_component_files_outside_the_checkpoint_are_refused(tmp_path, student_dir, how):
    outside = outside_copy(student_dir, tmp_path)
    if how == "absolute":
        name = str(outside)
    elif how == "dotdot":
        name = "../elsewhere/backbone.safetensors"
    elif how == "dotdot-inner":
        (student_dir / "sub").mkdir()
        name = "sub/../../elsewhere/backbone.safetensors"
    elif how == "symlink":
        (student_dir / "backbone.safetensors").unlink()
        (student_dir / "backbone.safetensors").symlink_to(outside)
        name = "backbone.safetensors"
    else:
        (student_dir / "weights").symlink_to(outside.parent, target_is_directory=True)
        name = "weights/backbone.safetensors"
    edit_card(student_dir, file=name, sha256=sha256_file(outside))
    with pytest.raises(CheckpointError) as info:
        Pipeline.load(student_dir)
    message = str(info.value)
    assert "components.backbone.file" in message and repr(name) in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match=r"components\.backbone\.file"):
        Pipeline.load(student_dir, verify=False)  # never a way around it


def test_component_file_outside_through_the_cli_is_one_line(tmp_path, student_dir):
    outside = outside_copy(student_dir, tmp_path)
    edit_card(student_dir, file=str(outside), sha256=sha256_file(outside))
    r = CliRunner().invoke(
        build_app(), ["sample", "a beep", "--model", str(student_dir), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "components.backbone.file" in err and str(outside) in err


def test_a_checkpoint_reached_through_a_symlink_still_loads(tmp_path, student_dir):
    alias = tmp_path / "alias"
    alias.symlink_to(student_dir, target_is_directory=True)
    Pipeline.load(alias)
    edit_card(student_dir, file="./backbone.safetensors")
    Pipeline.load(student_dir)


@pytest.mark.parametrize("sha", [None, "", "null"])
def test_a_file_without_sha256_is_refused_unless_asked(student_dir, sha):
    if sha == "null":
        card = json.loads((student_dir / "model.json").read_text())
        card["components"]["backbone"]["sha256"] = None
        (student_dir / "model.json").write_text(json.dumps(card))
    else:
        edit_card(student_dir, sha256=sha)  # None: the key is removed
    with pytest.raises(CheckpointError) as info:
        Pipeline.load(student_dir)
    message = str(info.value)
    assert "components.backbone.sha256" in message and "backbone.safetensors" in message
    assert "verify=False" in message
    Pipeline.load(student_dir, verify=False)  # the explicit opt-out


def test_a_malformed_sha256_is_refused(student_dir):
    edit_card(student_dir, sha256="not-a-digest")
    with pytest.raises(CheckpointError, match=r"components\.backbone\.sha256.*64 hex"):
        Pipeline.load(student_dir)


@pytest.mark.parametrize("version", [-7, 0, "1", 1.0, True, None])
def test_format_version_must_be_a_positive_integer(student_dir, version):
    card = json.loads((student_dir / "model.json").read_text())
    card["format_version"] = version
    (student_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"format_version .* must be a positive integer"):
        read_card(student_dir)


def _all_files_hashed(folder: Path) -> None:
    for card_path in folder.rglob("model.json"):
        card = json.loads(card_path.read_text())
        assert type(card["format_version"]) is int and card["format_version"] >= 1
        for comp in card["components"].values():
            if comp["file"] is not None:
                assert comp["sha256"] == sha256_file(card_path.parent / comp["file"])
        read_card(card_path.parent)  # and the strict reader accepts it


def test_saved_and_packed_checkpoints_and_the_default_model_carry_hashes(
    tmp_path, student_dir, teacher_dir
):
    shutil.copytree(teacher_dir, student_dir / "teacher")
    _all_files_hashed(student_dir)
    _all_files_hashed(pack_checkpoint(student_dir, tmp_path / "packed"))
    assert (tmp_path / "packed" / "teacher" / "model.json").is_file()
    _all_files_hashed(default_model_path())


def _export_dir(tmp_path: Path, **spec: object) -> Path:
    """A hand-made export folder (no graphs are run, only export.json is read)."""
    folder = tmp_path / "export"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"outside")
    full = {"format": "soundctm-onnx", "format_version": 1, "files": {}, **spec}
    (folder / "export.json").write_text(json.dumps(full))
    return folder


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"files": {"../secret.bin": "x" * 64}}, "files"),
        ({"files": {"/etc/hostname": "x" * 64}}, "files"),
        ({"graphs": {"network": {"file": "../secret.bin"}}}, "graphs.network.file"),
        ({"text": {"tokenizer": "/etc"}}, "text.tokenizer"),
    ],
)
def test_exported_model_files_stay_inside(tmp_path, spec, field):
    from soundctm.export.runtime import read_export

    folder = _export_dir(tmp_path, **spec)
    if "files" in spec:  # the hash would even match: it is the location that is refused
        name = next(iter(spec["files"]))
        spec["files"][name] = sha256_file(folder / name) if (folder / name).is_file() else "0"
        (folder / "export.json").write_text(
            json.dumps({"format": "soundctm-onnx", "format_version": 1, **spec})
        )
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        read_export(folder)


@pytest.mark.parametrize("version", [-7, 0, "1", 1.0, True])
def test_export_format_version_must_be_a_positive_integer(tmp_path, version):
    from soundctm.export.runtime import read_export

    folder = _export_dir(tmp_path, format_version=version)
    with pytest.raises(CheckpointError, match=r"format_version .* must be a positive integer"):
        read_export(folder)
