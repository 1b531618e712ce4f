from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundctm import __version__
from soundctm.cli.app import build_app
from soundctm.engine.levels import normalize


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(build_app(), [str(a) for a in args], env=env)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line_error(result, *fragments: str, code: int = 2):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in err, err


def test_sample_writes_wav_and_sidecar(tmp_path, student_dir):
    out = tmp_path / "out"
    r = run(
        "sample",
        "a high beep",
        "rain on a roof",
        "--model",
        student_dir,
        "--steps",
        "2",
        "--gamma",
        "0.5",
        "--nu",
        "1.5",
        "--omega",
        "3",
        "--seed",
        "10",
        "-n",
        "2",
        "--out",
        out,
        "--batch-size",
        "3",
    )
    assert r.exit_code == 0, r.output
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 4 and len(list(out.glob("*.json"))) == 4
    side = json.loads((out / "a-high-beep-10.json").read_text())
    assert side["prompt"] == "a high beep" and side["seed"] == 10 and side["steps"] == 2
    assert (side["gamma"], side["nu"], side["omega"]) == (0.5, 1.5, 3.0)
    assert side["seconds"] == 0.25 and side["solver"] == "gamma"
    assert side["soundctm_version"] == __version__ and len(side["model_card_sha256"]) == 64
    assert Path(side["model"]) == student_dir.resolve()
    seeds = sorted(json.loads(p.read_text())["seed"] for p in out.glob("*.json"))
    assert seeds == [10, 11, 12, 13]
    audio, rate = sf.read(str(out / "a-high-beep-10.wav"))
    assert rate == 8000 and audio.shape == (2000,)
    # running again never overwrites
    r2 = run("sample", "a high beep", "--model", student_dir, "--seed", "10", "--out", out)
    assert r2.exit_code == 0 and (out / "a-high-beep-10-1.wav").exists()


def test_sample_matches_the_library_and_refine_keeps_the_seed(tmp_path, student_dir):
    from soundctm.engine.pipeline import Pipeline

    out = tmp_path / "o"
    assert run("sample", "wind", "--model", student_dir, "--seed", "3", "-o", out).exit_code == 0
    wav = out / "wind-3.wav"
    audio, _ = sf.read(str(wav), dtype="float32")
    lib = Pipeline.load(student_dir).generate(["wind"], seeds=[3]).audio[0]
    leveled = normalize(lib, 8000, "peak")  # the default level, recorded in the sidecar
    assert json.loads(wav.with_suffix(".json").read_text())["gain_db"] == round(leveled[1], 6)
    assert abs(audio - leveled.audio.numpy().clip(-1, 1)).max() <= 1 / 32767 + 1e-6  # 16-bit
    r = run("refine", wav, "--steps", "4")
    assert r.exit_code == 0, r.output
    refined = out / "wind-3.refined-4.wav"
    side = json.loads(refined.with_suffix(".json").read_text())
    assert side["steps"] == 4 and side["seed"] == 3 and side["refined_from"] == str(wav.resolve())
    assert side["normalize"] == "peak"  # refine re-applies the recorded mode
    expected = Pipeline.load(student_dir).generate(["wind"], seeds=[3], steps=4).audio[0]
    expected = normalize(expected, 8000, "peak").audio
    got, _ = sf.read(str(refined), dtype="float32")
    assert abs(got - expected.numpy().clip(-1, 1)).max() <= 1 / 32767 + 1e-6
    assert files(out) == [
        "wind-3.json",
        "wind-3.refined-4.json",
        "wind-3.refined-4.wav",
        "wind-3.wav",
    ]


def test_prompts_file(tmp_path, student_dir):
    pf = tmp_path / "prompts.txt"
    pf.write_text("# my prompts\na bell\n\na drum\n")
    r = run(
        "sample", "--prompts-file", pf, "--model", student_dir, "--seed", "0", "-o", tmp_path / "o"
    )
    assert r.exit_code == 0, r.output
    assert files(tmp_path / "o") == [
        "a-bell-0.json",
        "a-bell-0.wav",
        "a-drum-1.json",
        "a-drum-1.wav",
    ]


def test_settings_precedence_flag_env_toml(tmp_path, student_dir):
    cfg = tmp_path / "soundctm.toml"
    cfg.write_text(f'[sample]\nsteps = 3\nseed = 5\nmodel = "{student_dir}"\n')
    out = tmp_path / "o"

    def steps_used(*extra, env=None):
        r = run("sample", "x", "--config", cfg, "-o", out, *extra, env=env)
        assert r.exit_code == 0, r.output
        newest = max(out.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        data = json.loads(newest.read_text())
        newest.unlink()
        newest.with_suffix(".wav").unlink()
        return data["steps"], data["seed"]

    assert steps_used() == (3, 5)
    assert steps_used(env={"SOUNDCTM_SAMPLE_STEPS": "2"}) == (2, 5)
    assert steps_used("--steps", "4", env={"SOUNDCTM_SAMPLE_STEPS": "2"}) == (4, 5)
    bad = tmp_path / "bad.toml"
    bad.write_text("[sample]\nstepz = 3\n")
    assert_one_line_error(run("sample", "x", "--config", bad), "unknown setting 'stepz'")


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"soundctm {__version__}"
    for args in (["-h"], ["--help"], ["sample", "-h"], ["refine", "--help"]):
        r = run(*args)
        assert r.exit_code == 0 and "Usage" in r.stdout


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from soundctm.cli.app import build_app\n"
        "for args in (['--help'], ['sample', '--help'], ['plugins']):\n"
        "    r = CliRunner().invoke(build_app(), args)\n"
        "    assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_and_module_entry_points():
    out = subprocess.run(
        [sys.executable, "-m", "soundctm", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"soundctm {__version__}"
    exe = Path(sys.executable).with_name("soundctm")
    if exe.exists():
        r = subprocess.run([str(exe), "sample"], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: no prompts")


# ---------------------------------------------------------------- bad input: one line, exit 2
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sample", ""], "prompt 1 is empty"),
        (["sample", "ok", "  "], "prompt 2 is empty"),
        (["sample"], "no prompts given"),
        (["sample", "x", "--steps", "0"], "invalid --steps 0"),
        (["sample", "x", "--gamma", "1.5"], "invalid --gamma 1.5"),
        (["sample", "x", "--gamma", "-0.5"], "invalid --gamma"),
        (["sample", "x", "--seconds", "0"], "invalid --seconds 0"),
        (["sample", "x", "--seconds", "-1"], "invalid --seconds"),
        (["sample", "x", "--seconds", "60"], "seconds must be in (0, 1]"),
        (["sample", "x", "--num-samples", "0"], "invalid --num-samples 0"),
        (["sample", "x", "--batch-size", "0"], "invalid --batch-size 0"),
        (["sample", "x", "--solver", "heun", "--gamma", "0.3"], "gamma solver only"),
        (["sample", "x", "--solver", "hune"], "did you mean 'heun'"),
        (["sample", "x", "--prompts-file", "/no/such/file.txt"], "does not exist"),
    ],
)
def test_bad_sample_arguments(tmp_path, student_dir, args, fragment):
    out = tmp_path / "out"
    r = run(*args, "--model", student_dir, "--out", out)
    assert_one_line_error(r, fragment)
    assert files(out) == []


def test_missing_model(tmp_path, monkeypatch):
    r = run("sample", "x", "--model", tmp_path / "nope", "-o", tmp_path / "o")
    assert_one_line_error(r, "does not exist", "--model")
    (tmp_path / "empty").mkdir()
    r = run("sample", "x", "--model", tmp_path / "empty", "-o", tmp_path / "o")
    assert_one_line_error(r, "has no model.json")
    monkeypatch.setattr("soundctm.cli.models.default_model_path", lambda: None)  # none shipped
    r = run("sample", "x", "-o", tmp_path / "o")
    assert_one_line_error(r, "no model given")
    assert files(tmp_path / "o") == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupt_safetensors(tmp_path, student_dir, damage):
    weights = student_dir / "backbone.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00garbage" * 10)
    else:
        weights.unlink()
    r = run("sample", "x", "--model", student_dir, "-o", tmp_path / "o")
    assert_one_line_error(r, "backbone.safetensors")
    assert files(tmp_path / "o") == []


def test_card_naming_a_component_no_plugin_provides(tmp_path, student_dir):
    card = json.loads((student_dir / "model.json").read_text())
    card["components"]["autoencoder"]["name"] = "audioldm-vae"
    (student_dir / "model.json").write_text(json.dumps(card))
    r = run("sample", "x", "--model", student_dir, "-o", tmp_path / "o")
    assert_one_line_error(r, "no installed plugin provides the autoencoder 'audioldm-vae'")


def test_unwritable_output(tmp_path, student_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = run("sample", "x", "--model", student_dir, "-o", blocker / "out")
    assert_one_line_error(r, "cannot write to output folder")
    assert blocker.read_text() == "not a folder"


def test_debug_shows_the_traceback(tmp_path):
    r = run("--debug", "sample", "x", "--model", tmp_path / "nope")
    assert r.exit_code != 0 and r.exception is not None
    assert type(r.exception).__name__ == "CheckpointError"


def test_refine_without_sidecar_or_model(tmp_path, student_dir):
    lone = tmp_path / "lone.wav"
    sf.write(str(lone), [0.0] * 100, 8000)
    assert_one_line_error(run("refine", lone, "--steps", "4"), "has no sidecar")
    assert_one_line_error(run("refine", tmp_path / "missing.wav"), "does not exist")

    out = tmp_path / "o"
    assert run("sample", "x", "--model", student_dir, "--seed", "1", "-o", out).exit_code == 0
    wav = out / "x-1.wav"
    assert_one_line_error(run("refine", wav, "--steps", "0"), "invalid --steps 0")
    assert_one_line_error(run("refine", wav, "--gamma", "2"), "invalid --gamma 2")
    # the model changed since: refuse unless --model is given explicitly
    card = json.loads((student_dir / "model.json").read_text())
    card["provenance"]["note"] = "edited"
    (student_dir / "model.json").write_text(json.dumps(card))
    assert_one_line_error(run("refine", wav, "--steps", "2"), "has changed since")
    assert run("refine", wav, "--steps", "2", "--model", student_dir).exit_code == 0
    # the model is gone
    moved = student_dir.rename(tmp_path / "elsewhere")
    before = files(out)
    assert_one_line_error(run("refine", wav, "--steps", "4"), "is gone", "--model")
    assert files(out) == before
    assert run("refine", wav, "--steps", "3", "--model", moved).exit_code == 0
    bad_side = out / "x-1.json"
    bad_side.write_text("{broken")
    assert_one_line_error(run("refine", wav), "not valid JSON")


def test_teacher_checkpoint_samples_with_heun(tmp_path, teacher_dir):
    r = run(
        "sample",
        "a bell",
        "--model",
        teacher_dir,
        "--steps",
        "3",
        "--omega",
        "2",
        "--seed",
        "0",
        "-o",
        tmp_path / "o",
    )
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "o" / "a-bell-0.json").read_text())
    assert side["solver"] == "heun" and side["omega"] == 2.0
    r = run("sample", "a bell", "--model", teacher_dir, "--nu", "2", "-o", tmp_path / "o")
    assert_one_line_error(r, "nu applies to CTM students")
