"""Output levels (soundctm.engine.levels, method.md §9) and the file formats written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from soundctm.engine.levels import (
    CEILING_DB,
    FLOOR_DB,
    loudness_lufs,
    normalize,
    peak_dbfs,
    peak_gain_db,
)
from soundctm.errors import InvalidArgumentError

RATE = 16000


def tone(
    amplitude: float, freq: float = 997.0, seconds: float = 1.0, rate: int = RATE
) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


@pytest.mark.parametrize(
    ("peak", "expected_gain"),
    [(2.0, CEILING_DB - 20 * math.log10(2.0)), (0.5, 0.0), (10 ** (-50 / 20), FLOOR_DB + 50.0)],
)
def test_peak_mode_scales_loud_down_quiet_up_and_leaves_the_rest(peak, expected_gain):
    x = tone(peak)
    peak_db = peak_dbfs(x)
    out, gain, warning = normalize(x, RATE, "peak")
    assert warning is None
    assert gain == pytest.approx(expected_gain, abs=1e-3)
    assert gain == pytest.approx(peak_gain_db(peak_db))
    assert peak_dbfs(out) == pytest.approx(min(max(peak_db, FLOOR_DB), CEILING_DB), abs=1e-3)
    assert float(out.abs().max()) < 1.0  # nothing would clip
    # the gain is a plain scale factor: undoing it gives the input back
    assert torch.allclose(out / 10 ** (gain / 20), x, atol=1e-6)


def test_silence_is_kept_with_one_warning():
    for quiet in (torch.zeros(RATE), tone(1e-6)):  # 0 and -120 dBFS
        out, gain, warning = normalize(quiet, RATE, "peak")
        assert gain == 0.0 and torch.equal(out, quiet)
        assert warning is not None and "silent" in warning
    out, gain, warning = normalize(torch.zeros(RATE), RATE, "loudness")
    assert gain == 0.0 and "silent" in warning


def test_none_is_the_identity():
    x = tone(3.0)
    out, gain, warning = normalize(x, RATE, "none")
    assert out is x and gain == 0.0 and warning is None


def test_loudness_follows_bs1770():
    # BS.1770's calibration (at 48 kHz): a full-scale 997 Hz sine in one channel reads -3.01 LUFS
    assert loudness_lufs(tone(1.0, rate=48000), 48000) == pytest.approx(-3.01, abs=0.05)
    x = tone(0.05)
    out, _, warning = normalize(x, RATE, "loudness", target_lufs=-23.0)
    assert warning is None
    assert loudness_lufs(out, RATE) == pytest.approx(-23.0, abs=0.05)
    # a target that would push the peak past the ceiling is held back, and says so
    out, _gain, warning = normalize(x, RATE, "loudness", target_lufs=-1.0)
    assert peak_dbfs(out) == pytest.approx(CEILING_DB, abs=1e-3)
    assert warning is not None and "would clip" in warning
    # below the -70 LUFS gate there is no integrated loudness: levelled by its peak instead
    out, _, warning = normalize(tone(10 ** (-75 / 20)), RATE, "loudness")
    assert peak_dbfs(out) == pytest.approx(FLOOR_DB, abs=1e-3) and "levelled by its peak" in warning
    # shorter than one 400 ms gating block: measured as one block of its own length
    short = tone(1.0, seconds=0.25, rate=48000)
    assert loudness_lufs(short, 48000) == pytest.approx(-3.01, abs=0.1)


def test_bad_mode_is_an_error():
    with pytest.raises(InvalidArgumentError, match="normalize must be one of peak, loudness"):
        normalize(tone(0.5), RATE, "loud")


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_every_format_writes_a_readable_file_with_its_sidecar(tmp_path, fmt):
    from soundctm.engine.audio_io import free_stem, read_sidecar, save_sample
    from soundctm.engine.plan import SampleParams

    params = SampleParams("a tone", 1, 1, 0.0, 1.0, 2.0, 0.5, "gamma")
    path = free_stem(tmp_path, "a-tone-1", fmt)
    assert path.suffix == f".{fmt}"
    events = []
    x = tone(3.0, freq=440.0, seconds=0.5)  # peaks at +9.5 dBFS: would clip unlevelled
    save_sample(
        path,
        x,
        params,
        sample_rate=RATE,
        model_path=None,
        model_card_sha256=None,
        normalize="peak",
        callback=events.append,
    )
    data, rate = sf.read(str(path), dtype="float32")
    assert rate == RATE and abs(len(data) - len(x)) <= 1152  # an mp3 frame of padding at most
    assert np.abs(data).max() < 0.99 and not events
    record = read_sidecar(path)
    assert record["normalize"] == "peak" and record["gain_db"] == pytest.approx(
        CEILING_DB - 20 * math.log10(3.0), abs=1e-4
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "a-tone-1.json"])
