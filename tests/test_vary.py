"""Audio-to-audio variation, inpainting and negative prompts (method.md §8, §5) on toy models."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import build_toy
from test_cli import assert_one_line_error, files
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine import schedule
from soundctm.engine.audio import resample_soxr
from soundctm.engine.variation import (
    feather,
    keep_mask,
    latent_similarity,
    span_frames,
    strength_sigma,
)
from soundctm.errors import InvalidArgumentError

RATE = 8000  # the toy autoencoder's


def run(*args, input: str | None = None):
    return CliRunner().invoke(build_app(), [str(a) for a in args], input=input)


def chirp(seconds: float = 0.25, rate: int = RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (0.5 * torch.sin(2 * math.pi * (200 + 1600 * t) * t)).float()


def test_strength_is_a_position_on_the_karras_ramp():
    c = dict(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert strength_sigma(0.0, **c) == pytest.approx(0.002)
    assert strength_sigma(1.0, **c) == pytest.approx(80.0)
    grid = schedule.karras_sigmas(11, c["sigma_min"], c["sigma_max"], c["rho"])
    for i in range(11):  # strength i/10 is the level 10 - i of an 11-point grid
        assert strength_sigma(i / 10, **c) == pytest.approx(float(grid[10 - i]), rel=1e-9)
    levels = [strength_sigma(s / 20, **c) for s in range(21)]
    assert all(a < b for a, b in itertools.pairwise(levels))
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(InvalidArgumentError, match="strength must be between 0 and 1"):
            strength_sigma(bad, **c)


def test_mask_spans_to_frames():
    assert span_frames(0.1, 0.2, 1.0, 100) == (10, 20)
    assert span_frames(0.105, 0.2, 1.0, 100) == (10, 20)  # a touched frame is regenerated
    keep = keep_mask([(0.0, 0.25), (0.75, 1.0)], 1.0, (2, 8), axis=1, feather_seconds=0)
    assert keep.tolist() == [[0, 0, 1, 1, 1, 1, 0, 0]] * 2
    # feathered (V4): ramps inside the spans only, kept frames exactly 1, at least one frame of
    # every span fully regenerated
    keep = keep_mask([(0.0, 0.3), (0.4, 0.9)], 1.0, (1, 20), axis=1, feather_seconds=0.1)
    row = keep[0].tolist()
    assert row[6:8] == [1.0, 1.0] and row[18:] == [1.0, 1.0]
    assert row[:6] == pytest.approx([0, 0, 0, 0, 1 / 3, 2 / 3])  # clip start: one edge
    assert row[8:18] == pytest.approx([2 / 3, 1 / 3, 0, 0, 0, 0, 0, 0, 1 / 3, 2 / 3])
    # short spans keep a fully regenerated middle
    assert feather(torch.tensor([1.0, 0, 0, 1]), 3).tolist() == [1, 0, 0, 1]
    assert feather(torch.tensor([1.0, 0, 0, 0, 1]), 3).tolist() == [1, 0.5, 0, 0.5, 1]
    for spans, text in [([(0.5, 1.5)], "reaches past the end"), ([(0.6, 0.4)], "not a span")]:
        with pytest.raises(InvalidArgumentError, match=text):
            keep_mask(spans, 1.0, (2, 8), axis=1)


def similarities(pipe, audio, rate, strengths, seeds=(0, 1, 2, 3), **arguments):
    x0 = pipe.autoencoder.encode(resample_soxr(audio, rate, pipe.sample_rate)[None])
    out = []
    for s in strengths:
        prompts = ["a chirp"] * len(seeds)
        gen = pipe.vary(audio, rate, prompts, seeds=list(seeds), strength=s, **arguments)
        x = pipe.autoencoder.encode(gen.audio)
        out.append(float(latent_similarity(x, x0.expand_as(x)).mean()))
    return out


def test_similarity_to_the_input_falls_as_strength_rises():
    pipe = build_toy("ctm")
    strengths = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    sims = similarities(pipe, chirp(rate=16000), 16000, strengths)  # resampled 16 -> 8 kHz
    assert sims[0] > 0.999  # strength 0 gives the input back
    assert all(a > b for a, b in itertools.pairwise(sims)), sims
    assert sims[-1] < 0.1  # strength 1 has forgotten it


def test_variations_are_per_sample_and_steps_and_teacher_work():
    pipe = build_toy("ctm")
    audio = chirp()
    both = pipe.vary(audio, RATE, ["a", "b"], seeds=[5, 6], strength=0.5, steps=3, gamma=0.3)
    alone = pipe.vary(audio, RATE, ["b"], seeds=[6], strength=0.5, steps=3, gamma=0.3)
    assert torch.allclose(both.audio[1], alone.audio[0], atol=1e-5)
    assert both.params[1].steps == 3 and both.params[1].seconds == pytest.approx(0.25)
    teacher = build_toy("teacher")
    sims = similarities(teacher, audio, RATE, [0.1, 0.9], seeds=(0,), steps=4)
    assert sims[0] > sims[1]


def test_an_input_longer_than_the_clip_is_cut_with_a_warning():
    from soundctm.events import Message

    pipe = build_toy("ctm")
    events: list = []
    longest = pipe.card.max_seconds
    long_input = chirp(longest + 0.5)
    out = pipe.vary(long_input, RATE, ["a"], seeds=[1], strength=0.5, callback=events.append)
    warned = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert out.params[0].seconds == pytest.approx(longest)
    assert len(warned) == 1 and f"at most {longest:g} s" in warned[0]
    events.clear()
    pipe.vary(chirp(0.25), RATE, ["a"], seeds=[1], strength=0.5, callback=events.append)
    assert not [e for e in events if isinstance(e, Message)]  # a short input: nothing to say


@pytest.mark.parametrize("kind", ["ctm", "teacher"])
def test_inpainting_keeps_the_rest_and_changes_the_span(kind):
    pipe = build_toy(kind)
    audio = chirp()
    x0 = pipe.autoencoder.encode(audio[None])
    steps = 2 if kind == "ctm" else 4
    gen = pipe.vary(
        audio, RATE, ["x", "y"], seeds=[0, 1], strength=1.0, mask=[(0.1, 0.15)], steps=steps
    )
    x = pipe.autoencoder.encode(gen.audio)
    first, last = span_frames(0.1, 0.15, 0.25, x0.shape[-1])
    kept = torch.ones(x0.shape[-1], dtype=torch.bool)
    kept[first:last] = False
    codec = (pipe.autoencoder.encode(pipe.autoencoder.decode(x0)) - x0).abs().max()
    assert (x - x0)[..., kept].abs().max() <= float(codec) + 1e-5  # the kept frames are x_0
    assert (x - x0)[..., ~kept].abs().mean() > 0.1  # the masked span is new
    assert not torch.allclose(gen.audio[0], gen.audio[1])  # and differs by seed


def test_vary_refuses_bad_input():
    pipe = build_toy("ctm")
    with pytest.raises(InvalidArgumentError, match="reaches past the end"):
        pipe.vary(chirp(), RATE, ["x"], seeds=[0], strength=1.0, mask=[(0.2, 0.4)])
    with pytest.raises(InvalidArgumentError, match="strength must be between 0 and 1"):
        pipe.vary(chirp(), RATE, ["x"], seeds=[0], strength=1.2)
    with pytest.raises(InvalidArgumentError, match="finite"):
        pipe.vary(torch.full((100,), math.nan), RATE, ["x"], seeds=[0], strength=0.5)

    class DecoderOnly:  # what an ONNX export offers: no encoder graph
        sample_rate = RATE

        def __init__(self, inner):
            self.inner = inner

        def latent_shape(self, seconds):
            return self.inner.latent_shape(seconds)

        def decode(self, latents):
            return self.inner.decode(latents)

    pipe.sampler.autoencoder = DecoderOnly(pipe.autoencoder)
    with pytest.raises(InvalidArgumentError, match="no encoder graph"):
        pipe.vary(chirp(), RATE, ["x"], seeds=[0], strength=0.5)


def test_negative_prompt_replaces_the_unconditional_branch():
    student = build_toy("ctm")
    plain = student.generate(["a bell"], seeds=[3], nu=1.0).audio
    # nu = 1 runs no unconditional branch: a negative prompt changes nothing
    same = student.generate(["a bell"], seeds=[3], nu=1.0, negative_prompt="rain").audio
    assert torch.equal(plain, same)
    # nu = 0 is the unconditional branch alone: the negative prompt's own sound
    uncond = student.generate(["a bell"], seeds=[3], nu=0.0, negative_prompt="rain").audio
    rain = student.generate(["rain"], seeds=[3], nu=1.0).audio
    assert torch.allclose(uncond, rain, atol=1e-6)
    empty = student.generate(["a bell"], seeds=[3], nu=2.0).audio
    steered = student.generate(["a bell"], seeds=[3], nu=2.0, negative_prompt="rain")
    assert not torch.allclose(empty, steered.audio) and steered.params[0].negative_prompt == "rain"
    # refine keeps the sample's negative prompt
    refined = student.refine(steered.params[0], steps=1)
    assert torch.allclose(refined.audio, steered.audio, atol=1e-6)
    # a teacher's CFG: omega != 1 uses it, omega = 1 does not
    teacher = build_toy("teacher")
    a = teacher.generate(["a bell"], seeds=[3], omega=3.0, steps=3).audio
    b = teacher.generate(["a bell"], seeds=[3], omega=3.0, steps=3, negative_prompt="rain").audio
    assert not torch.allclose(a, b)
    c = teacher.generate(["a bell"], seeds=[3], omega=1.0, steps=3).audio
    d = teacher.generate(["a bell"], seeds=[3], omega=1.0, steps=3, negative_prompt="rain").audio
    assert torch.equal(c, d)


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture
def input_wav(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(str(path), chirp(seconds=0.5, rate=16000).numpy(), 16000, subtype="PCM_16")
    return path


def test_vary_cli_writes_variations_with_sidecars_and_refines_them(
    tmp_path, student_dir, input_wav
):
    import hashlib

    from soundctm.engine.levels import normalize
    from soundctm.engine.pipeline import Pipeline

    out = tmp_path / "v"
    r = run("vary", input_wav, "a chirp", "--model", student_dir, "--strength", "0.4", "--seed",
            "7", "-n", "2", "--mask", "0.1:0.2", "--format", "flac", "-o", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert files(out) == [f"in.vary-a-chirp-{s}.{x}" for s in (7, 8) for x in ("flac", "json")]
    side = json.loads((out / "in.vary-a-chirp-7.json").read_text())
    assert side["vary_input"] == str(input_wav.resolve())
    assert side["vary_input_sha256"] == hashlib.sha256(input_wav.read_bytes()).hexdigest()
    assert side["strength"] == 0.4 and side["mask"] == [[0.1, 0.2]] and side["seed"] == 7
    assert side["seconds"] == pytest.approx(0.5) and side["normalize"] == "peak"
    audio, rate = sf.read(str(out / "in.vary-a-chirp-7.flac"), dtype="float32")
    source, _ = sf.read(str(input_wav), dtype="float32")
    lib = Pipeline.load(student_dir).vary(
        torch.from_numpy(source), 16000, ["a chirp"], seeds=[7], strength=0.4, mask=[(0.1, 0.2)]
    )
    expected = normalize(lib.audio[0], RATE, "peak").audio.numpy()
    assert rate == RATE and np.abs(audio - expected).max() <= 1 / 32767 + 1e-6
    r = run("refine", out / "in.vary-a-chirp-7.flac", "--steps", "2")
    assert r.exit_code == 0, r.output
    side = json.loads((out / "in.vary-a-chirp-7.refined-2.json").read_text())
    assert side["strength"] == 0.4 and side["steps"] == 2 and side["mask"] == [[0.1, 0.2]]
    input_wav.write_bytes(input_wav.read_bytes()[:-2] + b"\x01\x02")  # the input changed
    assert_one_line_error(run("refine", out / "in.vary-a-chirp-7.flac"), "has changed since")


def test_vary_cli_bad_inputs_write_nothing(tmp_path, student_dir, input_wav):
    out = tmp_path / "v"
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    cases = [
        ((text, "x"), "cannot read audio file"),
        ((tmp_path / "missing.wav", "x"), "does not exist"),
        ((input_wav, "x", "--mask", "0.4:0.9"), "reaches past the end of the 0.5 s clip"),
        ((input_wav, "x", "--mask", "abc"), "--mask takes START:END"),
        ((input_wav, "x", "--strength", "1.5"), "--strength"),
        ((input_wav, "x", "--strength", "-0.1"), "--strength"),
        ((input_wav, "x", "--normalize", "loud"), "--normalize"),
        ((input_wav, "x", "--format", "aiff"), "--format"),
    ]
    for args, fragment in cases:
        r = run("vary", *args, "--model", student_dir, "-o", out)
        assert_one_line_error(r, fragment)
        assert not out.exists()


def test_sample_options_stdin_formats_and_silence_warning(tmp_path):
    import torch as _torch

    from soundctm.engine.pipeline import Pipeline

    _torch.manual_seed(0)
    quiet = Pipeline.build(  # decodes latents divided by 1e7: silence
        kind="ctm",
        backbone=("toy-conv", {"student": True}),
        text_encoder=("toy-hash", {"dim": 16}),
        autoencoder=("toy-frames", {"sample_rate": RATE, "channels": 8, "scale": 1e7}),
        sigma_data=0.5,
        seconds=0.25,
    ).save(tmp_path / "quiet")
    out = tmp_path / "o"
    r = run("sample", "-f", "-", "--model", quiet, "--seed", "1", "-o", out, "--format", "ogg",
            input="a hum\n# skipped\n\na buzz\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert files(out) == ["a-buzz-2.json", "a-buzz-2.ogg", "a-hum-1.json", "a-hum-1.ogg"]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2 and "'a hum' (seed 1)" in warnings[0] and "silent" in warnings[0]
    r = run("sample", "-f", "-", "--model", quiet, "-o", out, input="# nothing\n")
    assert_one_line_error(r, "standard input has no prompts")


@pytest.mark.slow
def test_default_model_variations_drift_with_strength():
    """The shipped model (mel autoencoder): similarity to a SynthCaps clip falls with strength."""
    from soundctm.cli.models import default_model_path
    from soundctm.engine.pipeline import Pipeline
    from soundctm.eval.prompts import synthcaps_prompts

    pipe = Pipeline.load(default_model_path())
    ps = synthcaps_prompts(1, pipe.sample_rate, 3.0, seed=1)
    audio = torch.from_numpy(ps.references[ps.keys[0]])
    sims = similarities(pipe, audio, pipe.sample_rate, [0.1, 0.5, 0.9], seeds=(0,))
    assert sims[0] > sims[1] > sims[2], sims
