"""`soundctm eval`: the runner's three modes, metric plugins, reports and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from conftest import build_toy
from typer.testing import CliRunner

from soundctm import hookimpl
from soundctm.builtin import METRICS

PNG = b"\x89PNG\r\n\x1a\n"
EMBEDDERS = {
    "mel-stats": "soundctm.eval.embedders:MelStatsEmbedder",
    "vggish": "soundctm.eval.vggish:VGGishEmbedder",
    "toy-clf": "test_eval:ToyClassifier",
}


class ToyClassifier:
    """A deterministic stand-in for PaSST / CLAP: band energies as logits, hashed text."""

    name = "toy-clf"
    sample_rate = 8000
    dim = 8
    checksum = "toy"

    def embed(self, audio):
        import torch

        spec = torch.fft.rfft(audio, dim=-1).abs() ** 2
        bands = torch.stack([b.sum(-1) for b in spec.chunk(self.dim, dim=-1)], dim=-1)
        return torch.log(bands + 1e-6)

    def logits(self, audio):
        return self.embed(audio)

    def embed_text(self, texts):
        import torch

        return torch.stack(
            [torch.tensor([float(len(w)) for w in (t.split() + [""] * 8)[:8]]) for t in texts]
        )


class EvalPlugin:
    """Registers what soundctm's built-in plugin does not (yet) register."""

    def __init__(self, metrics, embedders):
        self.metrics, self.embedders = metrics, embedders

    @hookimpl
    def register_metrics(self, register):
        for name in self.metrics:
            register(name, METRICS[name][0], description=METRICS[name][1])

    @hookimpl
    def register_embedders(self, register):
        for name in self.embedders:
            register(name, EMBEDDERS[name])


@pytest.fixture(autouse=True)
def eval_plugins(_fresh_registry):
    from soundctm.plugins.registry import get_registry, register_plugin

    reg = get_registry()
    have_m, have_e = set(reg.names("metric")), set(reg.names("embedder"))
    register_plugin(
        EvalPlugin(
            [m for m in METRICS if m not in have_m], [e for e in EMBEDDERS if e not in have_e]
        ),
        "eval-tests",
    )
    entry = get_registry().get("metric", "synthcaps-attributes")
    if entry.target != METRICS["synthcaps-attributes"][0]:  # until the built-in points here
        entry.target, entry._loaded = METRICS["synthcaps-attributes"][0], None


def app() -> typer.Typer:
    from soundctm.cli.eval import eval_app

    a = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    a.add_typer(eval_app, name="eval")

    @a.command(name="noop")
    def _noop() -> None:  # a second command keeps "eval" a sub-command, as in the real app
        pass

    return a


def run(*args):
    return CliRunner().invoke(app(), ["eval", *[str(a) for a in args]])


def assert_one_line_error(result, *fragments, code=2):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err


def write_wavs(folder: Path, names, rate=8000, seconds=0.5, seed=0, freq=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    for i, name in enumerate(names):
        f = freq or 300.0 * (1 + i)
        x = 0.5 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(str(folder / f"{name}.wav"), x.astype(np.float32), rate)
    return folder


def check_report(out: Path, results: dict) -> None:
    for name in ("results.json", "report.md", "spectrograms.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["n"] == results["n"]
    md = (out / "report.md").read_text()
    assert f"N = {results['n']}" in md
    for name, info in results["embedders"].items():
        assert f"`{name}`" in md and f"`{info['checksum']}`" in md
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000


# ------------------------------------------------------------------ mode b: a model
def test_model_mode_synthcaps_reports_and_content_preservation(tmp_path):
    student = build_toy("ctm", seconds=0.5, max_seconds=2.0).save(tmp_path / "student")
    out, cache = tmp_path / "report", tmp_path / "cache"
    r = run("--model", student, "-n", 4, "--steps", "1,2,4", "-o", out, "--cache-dir", cache)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    check_report(out, res)
    assert (out / "metrics_vs_steps.png").is_file()
    assert res["mode"] == "model" and res["n"] == 4
    assert [(x["steps"], x["gamma"]) for x in res["runs"]] == [(1, 0.0), (2, 0.0), (4, 0.0)]
    for run_ in res["runs"]:
        assert set(run_["metrics"]) == {"fd", "synthcaps-attributes"}
        assert run_["metrics"]["fd"]["value"] > 0
        acc = run_["metrics"]["synthcaps-attributes"]
        assert 0 <= acc["overall"] <= 1 and 0 < acc["chance_overall"] < 1
    assert set(res["skipped"]) == {"kl", "is", "clap"}  # mel-stats has no logits / text tower
    rows = {(x["steps"], x["gamma"]): x["value"] for x in res["content_preservation"]["rows"]}
    assert set(rows) == {(2, 0.0), (2, 1.0), (4, 0.0), (4, 1.0)}
    assert all(-1 <= v <= 1 for v in rows.values())
    md = (out / "report.md").read_text()
    assert "gamma = 0" in md and "gamma = 1" in md and "chance" in md and "not VGGish" in md
    assert len(list((out / "audio").rglob("*.wav"))) == 4 * 5  # 1, 2, 4 at gamma 0; 2, 4 at 1
    # each setting's folder names every file's prompt and seed in a manifest
    import csv

    manifests = sorted((out / "audio").rglob("manifest.csv"))
    assert len(manifests) == 5
    with manifests[0].open() as f:
        rows = list(csv.DictReader(f))
    names = sorted(p.name for p in manifests[0].parent.glob("*.wav"))
    assert sorted(r["file_name"] for r in rows) == names
    assert all(r["caption"] and r["seed"].isdigit() for r in rows)
    assert len({r["seed"] for r in rows}) == 4
    # a re-run reads every embedding from the cache and gives the same numbers
    from soundctm.eval.runner import evaluate_model

    again = evaluate_model(student, n=4, steps=[1, 2, 4], cache_dir=cache).to_json()
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] > 0
    assert again["runs"][1]["metrics"]["fd"]["value"] == pytest.approx(
        res["runs"][1]["metrics"]["fd"]["value"], rel=1e-5
    )


def test_reports_name_models_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A report committed beside the code must not carry the absolute path of the machine."""
    from soundctm.eval.results import portable_path as _portable_path

    (tmp_path / "runs" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _portable_path(Path("runs/m")) == "runs/m"
    assert _portable_path(tmp_path / "runs" / "m") == "runs/m"
    outside = tmp_path.parent.resolve()
    assert _portable_path(outside) == str(outside)


def test_compare_mode_teacher_against_student(tmp_path):
    student = build_toy("ctm").save(tmp_path / "s")
    teacher = build_toy("teacher", seed=1).save(tmp_path / "t")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a low tone\na high tone\nrain\n")
    out = tmp_path / "cmp"
    r = run(
        "--model", teacher, "--steps", 3, "--compare", student, "--prompts", prompts,
        "--metrics", "fd", "-o", out, "--no-cache",
    )  # fmt: skip
    assert_one_line_error(r, "metric 'fd' needs reference audio")
    r = run(
        "--model", teacher, "--steps", 3, "--compare", student, "--prompts", prompts,
        "-o", out, "--no-cache", "--metrics", "is", "--classifier", "toy-clf",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    check_report(out, res)
    assert [x["model"] for x in res["runs"]] == ["A", "B"]
    assert [x["steps"] for x in res["runs"]] == [3, 1]
    assert res["models"]["A"]["kind"] == "teacher" and res["models"]["B"]["kind"] == "ctm"
    assert res["b_vs_a"]["n"] == 3 and -1 <= res["b_vs_a"]["value"] <= 1
    for x in res["runs"]:
        assert 1.0 <= x["metrics"]["is"]["value"] <= 8.0  # IS lies in [1, classes]


# ------------------------------------------------------------------ mode a: folders
def test_real_synthcaps_clips_score_their_own_captions(tmp_path):
    from soundctm.builtin.synthcaps import write_folder

    folder = tmp_path / "real"
    write_folder(folder, "test", 24, sample_rate=16000, seconds=3.0, seed=0)
    out = tmp_path / "rep"
    r = run(folder, "--metrics", "synthcaps-attributes", "-o", out, "--no-cache")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    acc = res["runs"][0]["metrics"]["synthcaps-attributes"]
    assert res["n"] == 24 and acc["overall"] >= 0.95, acc
    assert acc["chance_overall"] < 0.6 and set(acc["chance"]) == set(acc["per_attribute"])
    assert "SynthCaps attribute accuracy" in (out / "report.md").read_text()


def test_folders_against_references_with_captions(tmp_path):
    names = [f"clip{i}" for i in range(6)]
    gen = write_wavs(tmp_path / "gen", names, seed=0)
    same = write_wavs(tmp_path / "same", names, seed=0)
    other = write_wavs(tmp_path / "other", names, seed=1, freq=2500.0)
    caps = tmp_path / "caps.csv"
    with open(caps, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "caption"])
        w.writerows([[f"{n}.wav", f"tone number {i}"] for i, n in enumerate(names)])
    from soundctm.eval.runner import evaluate_folders

    kw = {"captions": caps, "use_cache": False}
    a = evaluate_folders(gen, reference=same, out=tmp_path / "a", **kw).to_json()
    b = evaluate_folders(gen, reference=other, out=tmp_path / "b", **kw).to_json()
    check_report(tmp_path / "a", a)
    assert a["metrics"] == ["fd"]
    assert a["runs"][0]["metrics"]["fd"]["value"] < 1e-3 < b["runs"][0]["metrics"]["fd"]["value"]
    clf = evaluate_folders(
        gen, reference=same, metrics=["kl", "is", "clap", "content-preservation"],
        classifier="toy-clf", embedder="toy-clf", **kw,
    ).to_json()  # fmt: skip
    m = clf["runs"][0]["metrics"]
    assert m["kl"]["value"] == pytest.approx(0.0, abs=1e-5)  # identical pairs
    assert m["content-preservation"]["value"] == pytest.approx(1.0)
    assert -1 <= m["clap"]["value"] <= 1 and m["clap"]["n"] == 6
    diff = evaluate_folders(
        gen, reference=other, metrics=["kl", "content-preservation"], classifier="toy-clf", **kw
    ).to_json()
    d = diff["runs"][0]["metrics"]
    assert d["kl"]["value"] > 0.1 and d["content-preservation"]["value"] < 0.9


def test_fad_infinity_and_presets_listing(tmp_path):
    from soundctm.eval.presets import PRESETS
    from soundctm.eval.runner import evaluate_folders

    names = [f"c{i}" for i in range(10)]
    gen = write_wavs(tmp_path / "g", names, seed=0)
    ref = write_wavs(tmp_path / "r", names, seed=3, freq=900.0)
    res = evaluate_folders(
        gen, reference=ref, metrics=["fd"], fad_inf=True, use_cache=False
    ).to_json()
    fd = res["runs"][0]["metrics"]["fd"]
    assert "fad_inf" in fd and np.isfinite(fd["fad_inf"])
    assert PRESETS["audioldm"].sample_rate == 16000 and PRESETS["stable-audio"].sample_rate == 44100
    assert {w.embedder for w in PRESETS["audioldm"].weights} == {"vggish", "passt", "clap"}


# ------------------------------------------------------------------ bad input: one line, exit 2
def _bad_inputs(tmp: Path):
    names = ["a", "b", "c"]
    gen = write_wavs(tmp / "gen", names)
    (tmp / "empty").mkdir()
    write_wavs(tmp / "unpaired", ["a", "b", "zzz"])
    write_wavs(tmp / "ref44", names, rate=44100)
    broken = write_wavs(tmp / "broken", names)
    (broken / "b.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    mixed = write_wavs(tmp / "mixed", ["a", "b"])
    write_wavs(mixed, ["c"], rate=16000)
    (tmp / "caps.csv").write_text("file_name,caption\na.wav,a tone\n")
    return {
        "missing": ([tmp / "nope"], "does not exist"),
        "empty": ([tmp / "empty"], "holds no audio files"),
        "unpaired": ([gen, "--reference", tmp / "unpaired"], "no same-named reference"),
        "unreadable": ([broken], "cannot read audio file"),
        "rates differ": ([gen, "--reference", tmp / "ref44"], "8000 Hz but reference"),
        "mixed rates": ([mixed], "different sample rates"),
        "captions missing": ([gen, "--captions", tmp / "caps.csv"], "no caption for 2"),
        "no captions for clap": ([gen, "--metrics", "clap"], "needs captions"),
        "missing weight file": (
            [gen, "--reference", gen, "--metrics", "fd", "--embedder", "vggish"],
            "SOUNDCTM_VGGISH_WEIGHTS",
        ),
        # every embedder of the preset is installed: the first missing weight file is named
        "preset weights": (
            [gen, "--reference", gen, "--preset", "audioldm"],
            "SOUNDCTM_VGGISH_WEIGHTS",
        ),
        "unknown preset": ([gen, "--preset", "nope"], "unknown evaluation preset"),
        "unknown metric": ([gen, "--metrics", "fad"], "did you mean 'fd'"),
        "nothing": ([], "nothing to evaluate"),
        "bad steps": (["--model", tmp / "nope", "--steps", "1,0"], "invalid --steps"),
        "bad gamma": (["--model", tmp / "nope", "--gamma", "2"], "invalid --gamma"),
        "missing model": (["--model", tmp / "nope"], "does not exist"),
        "missing prompts": (
            ["--model", tmp / "student", "--prompts", tmp / "none.csv"],
            "prompts file",
        ),
    }


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    build_toy("ctm").save(tmp_path / "student")
    cases = _bad_inputs(tmp_path)
    for label, (args, fragment) in cases.items():
        out = tmp_path / f"out-{label.replace(' ', '-')}"
        r = run(*args, "-o", out, "--no-cache")
        try:
            assert_one_line_error(r, fragment)
        except AssertionError as exc:
            raise AssertionError(f"case {label!r}: {exc}") from None
        assert not (out / "results.json").exists(), label


def test_preset_error_names_the_missing_file(tmp_path, monkeypatch):
    from soundctm.eval.presets import MissingWeightsError, check_preset, get_preset
    from soundctm.eval.weights import WeightsNotFoundError
    from soundctm.plugins.registry import get_registry

    installed = set(get_registry().names("embedder"))
    if "passt" not in installed:  # until a plugin provides it, the preset names what is missing
        with pytest.raises(MissingWeightsError, match="'passt'"):
            check_preset(get_preset("audioldm"))
    # a variable naming a missing file: the embedder's build (before any work) names both
    monkeypatch.setenv("SOUNDCTM_VGGISH_WEIGHTS", str(tmp_path / "vggish-10086976.pth"))
    with pytest.raises(WeightsNotFoundError) as err:
        get_registry().build("embedder", "vggish")
    assert "vggish-10086976.pth" in str(err.value) and "SOUNDCTM_VGGISH_WEIGHTS" in str(err.value)
