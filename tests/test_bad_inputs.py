"""The bad-input matrix: each case runs the real ``soundctm`` command in a subprocess and must
fail as a user error: exit code 2, at most 3 lines on stderr, no traceback, nothing written.

The subprocesses run concurrently in one module fixture (most exit before torch is imported),
so the matrix costs a few seconds of wall time; each case is still its own test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import build_toy

SOUNDCTM = Path(sys.executable).parent / "soundctm"


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    out: bool = True  # the case passes -o OUT; OUT must stay empty


def _cases() -> list[Case]:
    s = ("sample", "a low tone", "--model", "{M}")
    return [
        Case("no-prompts", ("sample", "--model", "{M}")),
        Case("empty-prompt", ("sample", "", "--model", "{M}")),
        Case("steps-0", (*s, "--steps", "0")),
        Case("steps-negative", (*s, "--steps", "-1")),
        Case("steps-too-many", (*s, "--steps", "5000")),
        Case("steps-text", (*s, "--steps", "abc")),
        Case("steps-fraction", (*s, "--steps", "1.5")),
        Case("gamma-2", (*s, "--gamma", "2")),
        Case("gamma-nan", (*s, "--gamma", "nan")),
        Case("gamma-negative", (*s, "--gamma", "-0.1")),
        Case("nu-negative", (*s, "--nu", "-1")),
        Case("nu-inf", (*s, "--nu", "inf")),
        Case("omega-inf", (*s, "--omega", "inf")),
        Case("omega-nan", (*s, "--omega", "nan")),
        Case("seconds-0", (*s, "--seconds", "0")),
        Case("seconds-negative", (*s, "--seconds", "-1")),
        Case("seconds-inf", (*s, "--seconds", "inf")),
        Case("seconds-beyond-max", (*s, "--seconds", "100")),
        Case("seed-negative", (*s, "--seed", "-1")),
        Case("seed-too-big", (*s, "--seed", str(2**64))),
        Case("num-samples-0", (*s, "-n", "0")),
        Case("batch-size-0", (*s, "--batch-size", "0")),
        Case("unknown-solver", (*s, "--solver", "nope")),
        Case("gamma-with-ode-solver", (*s, "--solver", "heun", "--gamma", "0.5")),
        Case("device-unknown", (*s, "--device", "gpu7")),
        Case("device-unavailable", (*s, "--device", "cuda:9")),
        Case("model-missing", ("sample", "x", "--model", "{T}/nowhere")),
        Case("model-is-a-file", ("sample", "x", "--model", "{T}/prompts-empty.txt")),
        Case("model-no-card", ("sample", "x", "--model", "{T}/empty-dir")),
        Case("model-card-not-json", ("sample", "x", "--model", "{T}/bad-card")),
        Case("model-no-teacher", (*s, "--teacher")),
        Case("prompts-file-missing", ("sample", "--model", "{M}", "-f", "{T}/nope.txt")),
        Case("prompts-file-empty", ("sample", "--model", "{M}", "-f", "{T}/prompts-empty.txt")),
        Case("config-missing", (*s, "--config", "{T}/nope.toml")),
        Case("config-unknown-key", (*s, "--config", "{T}/unknown-key.toml")),
        Case("config-not-toml", (*s, "--config", "{T}/not-toml.toml")),
        Case("unknown-option", (*s, "--bogus")),
        Case("unknown-command", ("sampel", "x"), out=False),
        Case("refine-missing-file", ("refine", "{T}/nope.wav")),
        Case("refine-no-sidecar", ("refine", "{T}/lonely.wav")),
        Case("refine-sidecar-not-json", ("refine", "{T}/broken.wav")),
        Case("refine-steps-0", ("refine", "{T}/take.wav", "--steps", "0")),
        Case("refine-gamma-inf", ("refine", "{T}/take.wav", "--gamma", "inf")),
        Case("eval-folder-nothing", ("eval", "folder")),
        Case("eval-folder-missing", ("eval", "folder", "{T}/nowhere")),
        Case("eval-model-steps-0", ("eval", "model", "--model", "{M}", "--steps", "0")),
        Case("eval-model-gamma-5", ("eval", "model", "--model", "{M}", "--gamma", "5")),
        Case("eval-compare-without-b", ("eval", "compare", "--model", "{M}")),
        Case("pack-missing", ("pack", "{T}/nowhere")),
        Case("pack-bad-dtype", ("pack", "{M}", "--dtype", "int8")),
        Case("export-bad-format", ("export", "--model", "{M}", "--format", "zip")),
        Case("export-bad-opset", ("export", "--model", "{M}", "--opset", "5")),
        Case("train-steps-0", ("train", "--steps", "0")),
        Case("train-lr-inf", ("train", "--lr", "inf")),
        Case("train-config-unknown-key", ("train", "--config", "{T}/unknown-train.toml")),
        Case("distill-no-teacher", ("distill",)),
        Case("distill-teacher-missing", ("distill", "--teacher", "{T}/nowhere")),
        Case("plugins-unknown-kind", ("plugins", "--kind", "nope"), out=False),
    ]


CASES = _cases()


def _fill(tmp: Path) -> dict[str, str]:
    """The files the cases point at: a toy student, a take with its sidecar, broken files."""
    from soundctm.engine.audio_io import save_sample

    pipe = build_toy("ctm")
    model = pipe.save(tmp / "student")
    gen = pipe.generate(["a low tone"], seeds=[3])
    save_sample(
        tmp / "take.wav",
        gen.audio[0],
        gen.params[0],
        sample_rate=gen.sample_rate,
        model_path=model,
        model_card_sha256=None,
    )
    shutil.copy(tmp / "take.wav", tmp / "lonely.wav")
    shutil.copy(tmp / "take.wav", tmp / "broken.wav")
    (tmp / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp / "prompts-empty.txt").write_text("# only a comment\n\n", encoding="utf-8")
    (tmp / "empty-dir").mkdir()
    (tmp / "bad-card").mkdir()
    (tmp / "bad-card" / "model.json").write_text("{", encoding="utf-8")
    (tmp / "unknown-key.toml").write_text("[sample]\nstepz = 3\n", encoding="utf-8")
    (tmp / "unknown-train.toml").write_text("[train]\nlearning_rate = 1\n", encoding="utf-8")
    (tmp / "not-toml.toml").write_text("[sample\nsteps = \n", encoding="utf-8")
    return {"M": str(model), "T": str(tmp)}


def _run(case: Case, names: dict[str, str], root: Path) -> tuple[int, str, str, list[str]]:
    out = root / "out" / case.name
    argv = [a.format(**names) for a in case.argv]
    if case.out:
        argv += ["-o", str(out)]
    env = {**os.environ, "COLUMNS": "200", "SOUNDCTM_CONFIG": ""}
    r = subprocess.run(
        [str(SOUNDCTM), *argv], capture_output=True, text=True, env=env, timeout=120, cwd=root
    )
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    return r.returncode, r.stdout, r.stderr, left


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    return root, _fill(root)


@pytest.fixture(scope="module")
def results(files):
    root, names = files
    snapshot = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(CASES, pool.map(lambda c: _run(c, names, root), CASES), strict=True))
    changed = [p for p, t in snapshot.items() if not p.exists() or p.stat().st_mtime_ns != t]
    return done, changed


def test_matrix_is_large_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(results, case):
    code, stdout, stderr, left = results[0][case]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert 1 <= len(lines) <= 3, stderr
    assert lines[0].startswith("error: "), stderr
    assert left == [], left


def test_no_input_file_was_touched(results):
    assert results[1] == []


def test_debug_shows_the_traceback(tmp_path):
    r = subprocess.run(
        [str(SOUNDCTM), "--debug", "sample", "x", "--steps", "0", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "SOUNDCTM_CONFIG": ""},
        timeout=60,
    )
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_messages_say_what_was_wrong(results):
    by_name = {c.name: results[0][c][2] for c in CASES}
    assert "must be at most 1000" in by_name["steps-too-many"]
    assert "finite number" in by_name["omega-inf"] and "finite number" in by_name["gamma-nan"]
    assert "(0, 1]" in by_name["seconds-beyond-max"]
    assert "--help" in by_name["unknown-option"]
    assert json.dumps("sampel")[1:-1] in by_name["unknown-command"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--steps", "5000"],
        ["--omega", "inf"],
        ["--nu", "inf"],
        ["--gamma", "nan"],
        ["--seconds", "nan"],
        ["--seconds", "100"],
    ],
    ids=lambda f: " ".join(f),
)
def test_ranges_are_checked_before_the_model_loads(files, monkeypatch, flags):
    from typer.testing import CliRunner

    import soundctm.cli.models
    from soundctm.cli.app import build_app

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    # every command loads through soundctm.cli.models.load_model (imported at call time)
    monkeypatch.setattr(soundctm.cli.models, "load_model", never)
    root, names = files
    out = root / "out-early"
    argv = ["sample", "a low tone", "--model", names["M"], "-o", str(out), *flags]
    r = CliRunner().invoke(build_app(), argv)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "was loaded" not in r.output
    assert not out.exists()


def test_library_names_the_parameter_not_the_flag(toy_student):
    from soundctm.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"^steps must be at most 1000, got 1001"):
        toy_student.resolve(steps=1001)
    with pytest.raises(InvalidArgumentError, match=r"^omega must be a finite number"):
        toy_student.resolve(omega=float("inf"))
