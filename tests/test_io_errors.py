"""I/O failures (a full disk, a file-size limit, an I/O error) while writing audio, checkpoints,
training states and metrics are user errors: one line naming the reason and the path, exit 2,
and no partial file left behind."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine import audio_io
from soundctm.engine.plan import SampleParams
from soundctm.errors import OutputPathError
from soundctm.training import loop as loop_mod
from soundctm.training import state as state_mod

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
PARAMS = SampleParams("a tone", 1, 1, 0.0, 1.0, 2.0, 0.25, "gamma")


def everything(folder: Path) -> list[str]:
    """Every entry under ``folder``, hidden temporary files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def half_then(exc: BaseException):
    """A writer that leaves half a file at its path argument, then fails with ``exc``."""

    def writer(*args, **kwargs):
        path = next(a for a in args if isinstance(a, str) and "/" in a)
        Path(path).write_bytes(b"RIFF" + b"\0" * 100)
        raise exc

    return writer


def full_disk_os_write(fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_one(folder: Path) -> Path:
    return audio_io.save_sample(
        folder / "x.wav",
        torch.zeros(2000),
        PARAMS,
        sample_rate=8000,
        model_path=None,
        model_card_sha256=None,
    )


def test_full_disk_while_writing_audio_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sf, "write", half_then(ENOSPC))
    with pytest.raises(OutputPathError) as info:
        write_one(tmp_path)
    assert str(info.value).startswith(f"no space left on device: {tmp_path / 'x.wav'}")
    assert "\n" not in str(info.value)
    # still an OSError with its errno for library callers that catch those around a save
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert everything(tmp_path) == []


def test_libsndfile_error_on_a_full_disk_names_the_os_reason(tmp_path, monkeypatch):
    """libsndfile reports only "System error." (LibsndfileError is no OSError): the reason is
    found by the OS, here a full disk (every os.write fails with ENOSPC)."""
    monkeypatch.setattr(sf, "write", half_then(sf.LibsndfileError(2, "Error writing: ")))
    monkeypatch.setattr(os, "write", full_disk_os_write)
    with pytest.raises(OutputPathError, match=r"^no space left on device: .*x\.wav"):
        write_one(tmp_path)
    assert everything(tmp_path) == []


def test_libsndfile_error_without_an_os_reason_is_still_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sf, "write", half_then(sf.LibsndfileError(2, "Error writing: ")))
    with pytest.raises(OutputPathError, match=r"System error.*x\.wav|x\.wav.*System error"):
        write_one(tmp_path)
    assert everything(tmp_path) == []


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch, toy_student):
    from soundctm.engine import checkpoint as ckpt_mod

    message = "Error while serializing: I/O error: No space left on device (os error 28)"
    monkeypatch.setattr(ckpt_mod, "save_file", half_then(SafetensorError(message)))
    with pytest.raises(OutputPathError) as info:
        toy_student.save(tmp_path / "ckpt")
    assert str(info.value).startswith(f"no space left on device: {tmp_path / 'ckpt'}")
    assert everything(tmp_path) == []


def test_full_disk_while_saving_a_training_state(tmp_path, monkeypatch):
    monkeypatch.setattr(state_mod, "save_file", half_then(ENOSPC))
    with pytest.raises(OutputPathError, match=r"^no space left on device: .*step-0000001"):
        state_mod.save_state(
            tmp_path / "state" / "step-0000001",
            step=1,
            model={"w": torch.ones(3)},
            ema={"w": torch.ones(3)},
            optimizer={"state": {}, "param_groups": []},
            extra={},
        )
    assert everything(tmp_path) == ["state"]


def test_full_disk_while_writing_the_state_json(tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def failing_write_text(self, *args, **kwargs):
        if self.name == state_mod.STATE_JSON:
            real_write_text(self, '{"ver', encoding="utf-8")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OutputPathError) as info:
        state_mod.save_state(
            tmp_path / "step-0000002",
            step=2,
            model={"w": torch.ones(3)},
            ema={"w": torch.ones(3)},
            optimizer={"state": {}, "param_groups": []},
            extra={},
        )
    # the path shown is the final one, not the hidden temporary folder
    assert str(info.value).startswith(
        f"no space left on device: {tmp_path / 'step-0000002' / 'state.json'}"
    )
    assert everything(tmp_path) == []


def test_full_disk_while_appending_metrics_keeps_the_log_whole(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    loop_mod.append_jsonl(log, {"step": 1, "loss": 0.5})
    before = log.read_bytes()
    real_open = Path.open

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, text):
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def half_open(self, mode="r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return HalfWriter(fh) if self == log and "a" in mode else fh

    monkeypatch.setattr(Path, "open", half_open)
    with pytest.raises(OutputPathError, match=rf"^no space left on device: {log}"):
        loop_mod.append_jsonl(log, {"step": 2, "loss": 0.25})
    assert log.read_bytes() == before


def test_sample_cli_full_disk_is_exit_2_and_one_line(tmp_path, monkeypatch, student_dir):
    monkeypatch.setattr(sf, "write", half_then(sf.LibsndfileError(2, "Error writing: ")))
    monkeypatch.setattr(os, "write", full_disk_os_write)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        build_app(), ["sample", "a tone", "--model", str(student_dir), "-o", str(out)]
    )
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: no space left on device: ") and "\n" not in err, err
    assert "Traceback" not in r.output
    assert everything(out) == []


def test_train_cli_full_disk_while_saving_state_is_exit_2(tmp_path, monkeypatch):
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[train]
out = "{tmp_path / "run"}"
steps = 2
batch_size = 2
save_every = 2
log_every = 1
seconds = 0.25
backbone = {{ name = "toy-conv" }}
text_encoder = {{ name = "toy-hash" }}
autoencoder = {{ name = "toy-frames" }}
dataset = {{ name = "toy-tones", params = {{ size = 8 }} }}
""")
    monkeypatch.setattr(state_mod, "save_file", half_then(ENOSPC))
    r = CliRunner().invoke(build_app(), ["train", "--config", str(cfg)])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: no space left on device: ") and "state" in err, err
    assert not (tmp_path / "run" / "state").exists() or everything(tmp_path / "run" / "state") == []


def test_a_real_file_size_limit_while_sampling(tmp_path, student_dir):
    """No mock: the OS refuses to grow files past 1 KiB (RLIMIT_FSIZE, EFBIG), so libsndfile
    and everything else really fail; the CLI still says why in one line."""
    out = tmp_path / "out"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    cmd = [sys.executable, "-m", "soundctm", "sample", "a tone", "--model", str(student_dir)]
    r = subprocess.run(
        [*cmd, "-o", str(out), "--seed", "0"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: file too large: ") and "a-tone-0.wav" in err, r.stderr
    assert everything(out) == []
