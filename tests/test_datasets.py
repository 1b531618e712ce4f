"""The ``csv`` and ``folder`` data sets: manifests, captions, bad files, resampling, mixdown."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundctm.builtin.datasets import (
    ClipSkipped,
    CsvDataset,
    DataError,
    DataProblem,
    FolderDataset,
    ScanFinished,
    ScanProgress,
    ScanStarted,
)
from soundctm.errors import AudioFileError, SoundCTMError


def write_tone(
    path: Path,
    *,
    sr: int = 16000,
    seconds: float = 1.0,
    freq: float = 440.0,
    amp: float = 0.5,
    channels: int = 1,
    fmt: str | None = None,
) -> Path:
    t = np.arange(round(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    data = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sr, format=fmt)
    return path


def write_manifest(path: Path, rows: list[str], header: str = "file_name,caption") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def peak_freq(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x.double() * torch.hann_window(x.shape[-1], dtype=torch.float64))
    return float(torch.fft.rfftfreq(x.shape[-1], 1 / sr)[spec.abs().argmax()])


def test_csv_items_relative_paths_and_shape(tmp_path):
    write_tone(tmp_path / "audio" / "a.wav", seconds=2.0)
    write_tone(tmp_path / "audio" / "b.flac", seconds=0.7, freq=1000)
    other = write_tone(tmp_path / "elsewhere" / "c.ogg", seconds=1.0, freq=660)
    (tmp_path / "lists").mkdir()
    manifest = write_manifest(
        tmp_path / "lists" / "train.csv",
        [
            "../audio/a.wav,a dog barks",
            '../audio/b.flac,"a beep, then silence"',
            f"{other},  a   bell  ",
        ],
    )
    events = []
    ds = CsvDataset(manifest, sample_rate=16000, seconds=1.0, callback=events.append)
    assert len(ds) == 3
    assert ds.summary() == "3 clips, 0 skipped"
    item = ds[1]
    assert set(item) == {"audio", "caption", "id"}
    assert item["caption"] == "a beep, then silence"
    assert ds[2]["caption"] == "a bell"
    assert Path(item["id"]) == (tmp_path / "audio" / "b.flac").resolve()
    for i in range(3):
        audio = ds[i]["audio"]
        assert audio.shape == (16000,) and audio.dtype == torch.float32
        assert float(audio.abs().max()) == pytest.approx(0.95, rel=1e-4)
    # the 0.7 s clip is zero-padded at the end, the 2 s clip cut to its start
    assert float(ds[1]["audio"][11300:].abs().max()) == 0.0
    assert float(ds[1]["audio"][:11000].abs().max()) > 0.5
    assert isinstance(events[0], ScanStarted) and events[0].total == 3
    assert isinstance(events[-1], ScanFinished) and events[-1].clips == 3
    assert [e.done for e in events if isinstance(e, ScanProgress)] == [1, 2, 3]
    # extra columns (AudioCaps lists have more) are ignored
    extra = write_manifest(
        tmp_path / "audio" / "extra.csv", ["1,a.wav,2.5,a dog"], "id,file_name,start,caption"
    )
    assert CsvDataset(extra, seconds=1.0)[0]["caption"] == "a dog"


def test_resampling_from_44k1_and_stereo_mixdown(tmp_path):
    write_tone(tmp_path / "s.wav", sr=44100, seconds=1.5, freq=1000, channels=2)
    write_manifest(tmp_path / "m.csv", ["s.wav,stereo tone"])
    ds = CsvDataset(tmp_path / "m.csv", sample_rate=16000, seconds=1.0)
    audio = ds[0]["audio"]
    assert audio.shape == (16000,)
    assert peak_freq(audio, 16000) == pytest.approx(1000, abs=2)
    amplitude = float(audio[500:-500].pow(2).mean().sqrt()) * math.sqrt(2)
    assert amplitude == pytest.approx(0.95, rel=0.01)  # peak-normalised sine
    # a mono mix: channels (0.25, 0.5) * sine average to 0.375 * sine before normalisation,
    # so the mixdown is in phase (no cancellation) and equals either channel up to scale
    left = ds[0]["audio"]
    write_tone(tmp_path / "l.wav", sr=44100, seconds=1.5, freq=1000)
    write_manifest(tmp_path / "n.csv", ["l.wav,mono tone"])
    mono = CsvDataset(tmp_path / "n.csv", sample_rate=16000, seconds=1.0)[0]["audio"]
    assert torch.allclose(left, mono, atol=1e-4)


def test_stereo_mixdown_averages_channels(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 1200 * t)
    sf.write(str(tmp_path / "lr.wav"), np.stack([left, right], 1).astype(np.float32), sr)
    (tmp_path / "lr.txt").write_text("two tones\n")
    audio = FolderDataset(tmp_path, sample_rate=sr, seconds=1.0, peak=0.5)[0]["audio"]
    expected = torch.from_numpy((left + right) / 2).float()
    expected = expected * 0.5 / expected.abs().max()
    assert torch.allclose(audio, expected, atol=1e-3)


def test_missing_column_is_refused(tmp_path):
    write_tone(tmp_path / "a.wav")
    write_manifest(tmp_path / "m.csv", ["a.wav,a dog"], header="file_name,text")
    with pytest.raises(DataError, match=r"line 1: missing column 'caption'"):
        CsvDataset(tmp_path / "m.csv")


def test_missing_file_is_refused_with_line_number(tmp_path):
    write_tone(tmp_path / "a.wav")
    write_manifest(tmp_path / "m.csv", ["a.wav,a dog", "gone.wav,a cat", "gone2.wav,x"])
    with pytest.raises(DataError, match=r"line 3: file gone.wav not found.*\(and 1 more\)"):
        CsvDataset(tmp_path / "m.csv")


def test_empty_caption_is_refused_with_line_number(tmp_path):
    write_tone(tmp_path / "a.wav")
    write_tone(tmp_path / "b.wav")
    write_manifest(tmp_path / "m.csv", ["a.wav,a dog", 'b.wav,"  "'])
    with pytest.raises(DataError, match=r"line 3: empty caption for b.wav") as info:
        CsvDataset(tmp_path / "m.csv")
    assert isinstance(info.value, SoundCTMError)
    assert "\n" not in str(info.value)


def test_missing_or_empty_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CsvDataset(tmp_path / "nope.csv")
    write_manifest(tmp_path / "m.csv", [])
    with pytest.raises(DataError, match="lists no files"):
        CsvDataset(tmp_path / "m.csv")


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_tone(root / "good1.wav", seconds=1.0)
    write_tone(root / "sub" / "good2.flac", seconds=0.6, sr=22050)
    write_tone(root / "good3.mp3", seconds=1.0, fmt="MP3")
    write_tone(root / "silent1.wav", amp=0.0)
    write_tone(root / "silent2.wav", amp=1e-4)  # -80 dBFS
    write_tone(root / "short.wav", seconds=0.2)
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 8)
    (root / "empty.ogg").write_bytes(b"")
    sf.write(str(root / "noframes.wav"), np.zeros((0, 1), np.float32), 16000)
    for audio in root.rglob("*"):
        if audio.suffix in (".wav", ".flac", ".ogg", ".mp3"):
            audio.with_suffix(".txt").write_text(f"the sound of {audio.stem}\n")
    return root


def test_bad_files_are_skipped_and_counted(mixed_folder):
    events = []
    ds = FolderDataset(mixed_folder, seconds=1.0, callback=events.append)
    assert len(ds) == 3
    ids = sorted(Path(ds[i]["id"]).name for i in range(len(ds)))
    assert ids == ["good1.wav", "good2.flac", "good3.mp3"]
    reasons = {Path(p.path).name: p.reason for p in ds.problems}
    assert reasons == {
        "corrupt.wav": "corrupt",
        "empty.ogg": "empty",
        "noframes.wav": "empty",
        "short.wav": "too short",
        "silent1.wav": "silent",
        "silent2.wav": "silent",
    }
    assert all(isinstance(p, DataProblem) and p.detail for p in ds.problems)
    assert ds.summary() == "3 clips, 6 skipped (2 empty, 2 silent, 1 corrupt, 1 too short)"
    skipped = [e.problem for e in events if isinstance(e, ClipSkipped)]
    assert skipped == ds.problems
    assert events[-1].summary == ds.summary()
    assert ds[0]["caption"] == "the sound of good1"


def test_too_short_threshold_and_padding(mixed_folder):
    ds = FolderDataset(mixed_folder, seconds=1.0, min_seconds=0.1)
    assert "short.wav" in {Path(c.path).name for c in ds.clips}
    short = next(i for i, c in enumerate(ds.clips) if c.path.name == "short.wav")
    audio = ds[short]["audio"]
    assert float(audio[3300:].abs().max()) == 0.0  # 0.2 s of sound, then zeros
    assert float(audio[:3000].abs().max()) == pytest.approx(0.95, rel=1e-4)


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    write_tone(tmp_path / "ok.wav")
    write_tone(tmp_path / "locked.wav")
    for p in (tmp_path / "ok.txt", tmp_path / "locked.txt"):
        p.write_text("a tone")
    real_open = Path.open

    def refusing_open(self, *args, **kwargs):  # chmod 0 does not stop root, so simulate it
        if self.name == "locked.wav":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    ds = FolderDataset(tmp_path, seconds=1.0)
    assert [(Path(p.path).name, p.reason) for p in ds.problems] == [("locked.wav", "unreadable")]
    assert "Permission denied" in ds.problems[0].detail


def test_nothing_usable_is_an_error(tmp_path):
    write_tone(tmp_path / "quiet.wav", amp=0.0)
    (tmp_path / "quiet.txt").write_text("silence")
    with pytest.raises(DataError, match=r"no usable audio .*0 clips, 1 skipped \(1 silent\)"):
        FolderDataset(tmp_path)


def test_folder_caption_problems_are_refused(tmp_path):
    write_tone(tmp_path / "a.wav")
    write_tone(tmp_path / "b.wav")
    (tmp_path / "a.txt").write_text("a tone")
    with pytest.raises(DataError, match=r"b.wav has no caption file b.txt"):
        FolderDataset(tmp_path)
    (tmp_path / "b.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"caption file b.txt is empty"):
        FolderDataset(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        FolderDataset(tmp_path / "a.wav")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        FolderDataset(tmp_path / "empty")


def test_items_are_deterministic_and_batch(mixed_folder):
    ds = FolderDataset(mixed_folder, seconds=1.0)
    assert torch.equal(ds[1]["audio"], ds[1]["audio"])
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batch = next(iter(loader))
    assert batch["audio"].shape == (3, 16000)
    assert len(batch["caption"]) == 3


def test_file_vanishing_after_the_scan_is_reported(mixed_folder):
    ds = FolderDataset(mixed_folder, seconds=1.0)
    ds.clips[1].path.unlink()
    with pytest.raises(AudioFileError, match="became unreadable"):
        ds[1]
