"""Data sets name their bad files: with no usable file the error lists the first few with
their reasons and writes the full list to a file it names; a partly bad data set is reported
(count, first files, the list file) when training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundctm.builtin.datasets import CsvDataset, FolderDataset, ScanFinished
from soundctm.cli.app import build_app
from soundctm.config import TeacherConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.errors import DataError
from soundctm.events import Message
from soundctm.training.teacher import train_teacher


def tone(path: Path, *, seconds: float = 1.0, amp: float = 0.5, sr: int = 16000) -> Path:
    t = np.arange(round(sr * seconds)) / sr
    sf.write(str(path), (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    path.with_suffix(".txt").write_text(f"the sound of {path.stem}\n")
    return path


def bad_folder(root: Path) -> Path:
    """Five unusable files: a.wav corrupt, b.wav empty, c.wav silent, d.wav too short and
    e.wav corrupt."""
    root.mkdir(parents=True)
    (root / "a.wav").write_bytes(b"this is not audio at all" * 4)
    (root / "b.wav").write_bytes(b"")
    tone(root / "c.wav", amp=0.0)
    tone(root / "d.wav", seconds=0.1)
    (root / "e.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 8)
    for name in "abe":
        (root / f"{name}.txt").write_text(f"the sound of {name}\n")
    return root


def listed(path: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]
    return {Path(row[0]).name: row[1] for row in rows}


def test_no_usable_file_names_the_first_files_and_the_full_list(tmp_path):
    root = bad_folder(tmp_path / "data")
    with pytest.raises(DataError) as info:
        FolderDataset(root, seconds=1.0)
    message = str(info.value)
    assert "\n" not in message and ".problems" not in message
    assert "0 clips, 5 skipped" in message
    assert "a.wav (corrupt: " in message and "b.wav (empty: " in message
    assert "c.wav (silent: " in message and "and 2 more" in message
    full = Path(message.split("full list in ")[1].split(";")[0])
    assert listed(full) == {
        "a.wav": "corrupt",
        "b.wav": "empty",
        "c.wav": "silent",
        "d.wav": "too short",
        "e.wav": "corrupt",
    }


def test_the_list_goes_where_it_is_asked_to_and_a_partial_one_too(tmp_path):
    root = bad_folder(tmp_path / "data")
    target = tmp_path / "run" / "unusable.txt"
    with pytest.raises(DataError, match=rf"full list in {target}"):
        FolderDataset(root, seconds=1.0, problems_file=target)
    assert len(listed(target)) == 5
    tone(root / "f.wav")
    events = []
    ds = FolderDataset(root, seconds=1.0, problems_file=target, callback=events.append)
    assert len(ds) == 1 and ds.problems_file == target and len(listed(target)) == 5
    assert events[-1] == ScanFinished(str(root), 1, 5, ds.summary(), str(target))
    for name in "abcde":
        (root / f"{name}.wav").unlink()
    assert FolderDataset(root, seconds=1.0, problems_file=target).problems_file is None
    assert not target.exists()  # no stale list once every file is fine


def test_a_csv_data_set_with_no_usable_file_names_them_too(tmp_path):
    bad_folder(tmp_path / "data")
    manifest = tmp_path / "data" / "list.csv"
    manifest.write_text("file_name,caption\na.wav,x\nb.wav,y\n")
    with pytest.raises(DataError, match=r"a\.wav \(corrupt: .*b\.wav \(empty: .*full list in"):
        CsvDataset(manifest, seconds=1.0)


def spec(out: Path, root: Path) -> TeacherConfig:
    return TeacherConfig(
        out=out,
        backbone=ComponentCard(name="toy-conv", params={"hidden": 16}),
        text_encoder=ComponentCard(name="toy-hash", params={"dim": 16}),
        autoencoder=ComponentCard(name="toy-frames", params={"sample_rate": 8000}),
        dataset=ComponentCard(name="folder", params={"root": str(root)}),
        steps=1,
        batch_size=2,
        save_every=1,
        log_every=1,
        seconds=0.25,
    )


def test_training_on_a_partly_bad_data_set_reports_the_count_and_the_list(tmp_path):
    root = bad_folder(tmp_path / "data")
    tone(root / "f.wav")
    tone(root / "g.wav")
    events = []
    out = tmp_path / "run"
    train_teacher(spec(out, root), callback=events.append)
    lines = [e.text for e in events if isinstance(e, Message)]
    report = [line for line in lines if "skipped 5 of 7 files" in line]
    assert len(report) == 1, lines
    assert (
        "a.wav (corrupt" in report[0] and f"full list in {out / 'unusable-files.txt'}" in report[0]
    )
    assert len(listed(out / "unusable-files.txt")) == 5
    assert len([line for line in lines if "skipped" in line]) <= 2, lines  # no line per file


def test_train_cli_on_an_all_bad_data_set_is_one_line_naming_the_list(tmp_path):
    root = bad_folder(tmp_path / "data")
    out = tmp_path / "run"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[train]
out = "{out}"
steps = 1
batch_size = 2
seconds = 0.25
backbone = {{ name = "toy-conv" }}
text_encoder = {{ name = "toy-hash" }}
autoencoder = {{ name = "toy-frames" }}
dataset = {{ name = "folder", params = {{ root = "{root}" }} }}
""")
    r = CliRunner().invoke(build_app(), ["train", "--config", str(cfg)])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: no usable audio in ") and "a.wav (corrupt" in err, err
    assert f"full list in {out / 'unusable-files.txt'}" in err, err
    assert len(listed(out / "unusable-files.txt")) == 5
