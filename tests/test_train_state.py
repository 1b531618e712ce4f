"""Training states are verified like checkpoints; a killed run leaves nothing that breaks the
next start: damaged states are refused naming the file and the previous good state, a
half-written metrics line is dropped, leftover temporary folders are removed, and the
distillation's teacher copy is atomic."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from soundctm.config import DistillConfig, TeacherConfig
from soundctm.engine.checkpoint import ComponentCard
from soundctm.errors import CheckpointError, OutputPathError
from soundctm.training.distill import distill
from soundctm.training.state import STATE_JSON, STATE_TENSORS
from soundctm.training.teacher import train_teacher

SUMS_FILE = "SHA256SUMS"


def spec(out: Path, **overrides) -> TeacherConfig:
    values = dict(
        out=out,
        backbone=ComponentCard(name="toy-conv", params={"hidden": 16}),
        text_encoder=ComponentCard(name="toy-hash", params={"dim": 16}),
        autoencoder=ComponentCard(name="toy-frames", params={"sample_rate": 8000}),
        dataset=ComponentCard(name="toy-tones", params={"size": 16}),
        steps=4,
        batch_size=4,
        lr=3e-3,
        save_every=2,
        log_every=1,
        seconds=0.25,
        seed=3,
    )
    values.update(overrides)
    return TeacherConfig(**values)


def logged_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def step_dir(out: Path, step: int) -> Path:
    return out / "state" / f"step-{step:07d}"


@pytest.fixture
def run4(tmp_path) -> Path:
    """A finished 4-step run with states at steps 2 and 4."""
    out = tmp_path / "run"
    train_teacher(spec(out))
    return out


def test_state_lists_the_sha256_of_each_file(run4):
    state = step_dir(run4, 4)
    sums = {}
    for line in (state / SUMS_FILE).read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert sorted(sums) == [STATE_JSON, STATE_TENSORS]
    for name, digest in sums.items():
        assert hashlib.sha256((state / name).read_bytes()).hexdigest() == digest


def test_a_flipped_bit_in_the_weights_is_refused_naming_the_previous_good_state(run4):
    tensors = step_dir(run4, 4) / STATE_TENSORS
    flip_bit(tensors, tensors.stat().st_size - 3)  # in the tensor data: still parses
    load_file(str(tensors))
    with pytest.raises(CheckpointError) as info:
        train_teacher(spec(run4, steps=6), resume=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"{STATE_TENSORS} is corrupt or truncated" in message
    assert f"--resume-from {step_dir(run4, 2)}" in message
    # and the hint works: resuming from there reaches step 6
    train_teacher(spec(run4, steps=6), resume=step_dir(run4, 2))
    assert logged_steps(run4) == [1, 2, 3, 4, 5, 6]


def test_a_flipped_bit_in_the_state_json_is_refused(run4):
    meta = step_dir(run4, 4) / STATE_JSON
    text = meta.read_text()
    meta.write_text(text.replace('"step": 4', '"step": 5'))  # one bit: '4' -> '5'
    with pytest.raises(CheckpointError, match=rf"{STATE_JSON} is corrupt or truncated"):
        train_teacher(spec(run4, steps=6), resume=True)


def test_a_truncated_state_with_no_earlier_one_says_so(run4):
    shutil.rmtree(step_dir(run4, 2))
    tensors = step_dir(run4, 4) / STATE_TENSORS
    os.truncate(tensors, tensors.stat().st_size // 2)
    with pytest.raises(CheckpointError) as info:
        train_teacher(spec(run4, steps=6), resume=True)
    message = str(info.value)
    assert f"{STATE_TENSORS} is corrupt or truncated" in message
    assert "no earlier good state" in message and "--resume-from" not in message


def test_a_damaged_earlier_state_is_not_offered(run4):
    train_teacher(spec(run4, steps=6), resume=True)  # states 2, 4, 6
    flip_bit(step_dir(run4, 4) / STATE_TENSORS, 200)
    flip_bit(step_dir(run4, 6) / STATE_TENSORS, 200)
    with pytest.raises(CheckpointError, match=rf"--resume-from {step_dir(run4, 2)}"):
        train_teacher(spec(run4, steps=8), resume=True)


def test_a_half_written_last_metrics_line_is_dropped_on_resume(run4):
    with (run4 / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 5, "loss": 0.12')  # power lost mid-line
    train_teacher(spec(run4, steps=6), resume=True)
    assert logged_steps(run4) == [1, 2, 3, 4, 5, 6]


def test_a_kill_before_the_first_state_does_not_duplicate_metrics(tmp_path):
    out = tmp_path / "run"
    train_teacher(spec(out, steps=1, save_every=2))  # a checkpoint, but never a state
    shutil.rmtree(out / "state", ignore_errors=True)
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 2, "lo')
    train_teacher(spec(out))
    assert logged_steps(out) == [1, 2, 3, 4]


def test_leftover_temporary_folders_are_removed_at_the_next_start(run4):
    leftovers = [
        run4 / "state" / ".step-0000006.k2j4h5g6.tmp",
        run4 / "checkpoints" / ".step-0000006.a1b2c3d4.tmp",
        run4 / "checkpoints" / ".step-0000004.old-4242",  # its final folder exists
        run4 / "checkpoints" / "step-0000004" / ".teacher.zz9x8y7w.tmp",
        run4 / "previews" / ".step-0000006.qwertyui.tmp",
    ]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "half.safetensors").write_bytes(b"\0" * 10)
    files = [run4 / ".metrics.jsonl.abcdefgh.tmp", run4 / "metrics.jsonl.tmp"]
    for file in files:
        file.write_text("{}")
    # a folder renamed away to be replaced, killed before the new one took its name
    (run4 / "state" / "step-0000002").rename(run4 / "state" / ".step-0000002.old-77")
    keep = run4 / ".my-notes.txt"
    keep.write_text("mine")
    events = []
    train_teacher(spec(run4, steps=6), resume=True, callback=events.append)
    for path in [*leftovers, *files]:
        assert not path.exists(), path
    assert (run4 / "state" / "step-0000002" / STATE_TENSORS).is_file()  # restored
    assert not (run4 / "state" / ".step-0000002.old-77").exists()
    assert keep.read_text() == "mine"
    assert any("interrupted" in str(getattr(e, "text", "")) for e in events), events


@pytest.fixture
def teacher_ckpt(tmp_path):
    return train_teacher(spec(tmp_path / "teacher", steps=2, save_every=2))


def dspec(out: Path, teacher: Path, **overrides) -> DistillConfig:
    values = dict(
        out=out,
        teacher=teacher,
        dataset=ComponentCard(name="toy-tones", params={"size": 16}),
        steps=2,
        batch_size=4,
        save_every=2,
        log_every=1,
        distance="l2",
        keep_teacher=True,
        seed=2,
    )
    values.update(overrides)
    return DistillConfig(**values)


def test_the_kept_teacher_copy_is_atomic(tmp_path, teacher_ckpt, monkeypatch):
    real_copy = shutil.copyfile
    copied = []

    def disk_fills_up(src, dst, *args, **kwargs):
        if copied:
            Path(dst).write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        copied.append(src)
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", disk_fills_up)
    out = tmp_path / "student"
    with pytest.raises(OutputPathError, match=r"^no space left on device: .*teacher"):
        distill(dspec(out, teacher_ckpt))
    ckpt = out / "checkpoints" / "step-0000002"
    assert not (ckpt / "teacher").exists()
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []


def test_the_kept_teacher_copy_is_complete(tmp_path, teacher_ckpt):
    final = distill(dspec(tmp_path / "student", teacher_ckpt))
    names = sorted(p.name for p in (final / "teacher").iterdir())
    assert names == sorted(p.name for p in teacher_ckpt.iterdir())
    a = load_file(str(final / "teacher" / "backbone.safetensors"))
    b = load_file(str(teacher_ckpt / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
