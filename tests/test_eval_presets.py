"""Both protocol presets end to end on tiny inputs, with stand-in weight files in each published
format: a random torchvggish ``vggish-*.pth``, a random laion ``630k-audioset-best.pt``, a
narrow hear21passt PaSST and a narrow torchopenl3 OpenL3, all through the built-in embedders."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from laion_clap_standin import laion_state, save_laion
from test_clap import write_tokenizer
from test_eval import assert_one_line_error, check_report, run, write_wavs


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    from transformers import AutoTokenizer

    from soundctm.eval.vggish import VGGish

    d = tmp_path_factory.mktemp("weights")
    tok = write_tokenizer(d / "roberta-tiny")
    vocab = len(AutoTokenizer.from_pretrained(str(tok)))
    torch.manual_seed(0)
    vggish = d / "vggish-10086976.pth"
    torch.save(VGGish().state_dict(), vggish)
    clap = save_laion(laion_state(vocab), d / "630k-audioset-best.pt")
    from soundctm.eval.openl3 import OpenL3
    from soundctm.eval.passt import PaSST

    # narrow PaSST / OpenL3 with the released key names, grid and front-end sizes
    passt = d / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(PaSST(embed_dim=32, depth=1, num_heads=1, mlp_hidden=64).state_dict(), passt)
    openl3 = d / "torchopenl3_mel256_env_512.pth.tar"
    torch.save(OpenL3((4, 4, 8, 8, 8, 8, 16, 16)).state_dict(), openl3)
    return {"vggish": vggish, "clap": clap, "tokenizer": tok, "passt": passt, "openl3": openl3}


@pytest.fixture
def presets_ready(weight_files, monkeypatch):
    monkeypatch.setenv("SOUNDCTM_VGGISH_WEIGHTS", str(weight_files["vggish"]))
    monkeypatch.setenv("SOUNDCTM_CLAP_WEIGHTS", str(weight_files["clap"]))
    monkeypatch.setenv("SOUNDCTM_CLAP_TOKENIZER", str(weight_files["tokenizer"]))
    monkeypatch.setenv("SOUNDCTM_PASST_WEIGHTS", str(weight_files["passt"]))
    monkeypatch.setenv("SOUNDCTM_OPENL3_WEIGHTS", str(weight_files["openl3"]))
    return weight_files


EXPECTED = {
    "audioldm": (16000, ["fd", "kl", "is", "fd-passt", "clap"], {"vggish", "passt", "clap"}),
    "stable-audio": (
        44100,
        ["fd", "kl", "clap", "fd-clap", "mmd-clap"],
        {"openl3", "passt", "clap"},
    ),
}


def test_both_presets_give_a_complete_report_on_folders(tmp_path, presets_ready):
    names = ["x1", "x2", "x3"]
    gen = write_wavs(tmp_path / "gen", names, rate=22050, seconds=1.0, seed=0)
    ref = write_wavs(tmp_path / "ref", names, rate=22050, seconds=1.0, seed=1, freq=700.0)
    caps = tmp_path / "caps.csv"
    caps.write_text("file_name,caption\n" + "".join(f"{n}.wav,tone {n}\n" for n in names))
    for preset, (rate, metrics, embedders) in EXPECTED.items():
        out = tmp_path / preset
        flag = ["--weights", f"clap={presets_ready['clap']}"] if preset == "audioldm" else []
        if flag:  # the flag instead of the variable
            os.environ.pop("SOUNDCTM_CLAP_WEIGHTS")
        r = run(gen, "--reference", ref, "--captions", caps, "--preset", preset, "-o", out, *flag)
        os.environ["SOUNDCTM_CLAP_WEIGHTS"] = str(presets_ready["clap"])
        assert r.exit_code == 0, r.output
        res = json.loads((out / "results.json").read_text())
        check_report(out, res)
        assert res["preset"] == preset and res["sample_rate"] == rate and res["n"] == 3
        assert res["metrics"] == metrics and res["skipped"] == {}
        values = res["runs"][0]["metrics"]
        assert all(math.isfinite(values[m]["value"]) for m in metrics), values
        # each protocol's KL direction: audioldm_eval KL(ref || gen), stable-audio KL(gen || ref)
        assert values["kl"]["direction"] == ("ref||gen" if preset == "audioldm" else "gen||ref")
        assert set(res["embedders"]) == embedders
        for name in ("vggish", "clap") if preset == "audioldm" else ("clap",):
            (w,) = res["embedders"][name]["weights"]
            assert w["sha256"] == res["embedders"][name]["checksum"] and len(w["sha256"]) == 64
            assert w["file"] == presets_ready[name].name
        report = (out / "report.md").read_text()
        assert "weight file `630k-audioset-best.pt`" in report
        assert "NOT the published file" in report  # random stand-ins are not the release
    # the same clips against themselves: FD ~0, KL 0, MMD 0
    out = tmp_path / "self"
    r = run(gen, "--reference", gen, "--captions", caps, "--preset", "stable-audio", "-o", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "results.json").read_text())["runs"][0]["metrics"]
    # KL: 0 up to audioldm_eval's epsilon inside the log (at most classes x 1e-6; PaSST: 527)
    assert abs(m["fd"]["value"]) < 1e-3 and m["kl"]["value"] == pytest.approx(0.0, abs=6e-4)
    assert m["mmd-clap"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_a_preset_on_a_model_resamples_to_its_rate(tmp_path, presets_ready):
    from conftest import build_toy

    from soundctm.eval.runner import evaluate_model

    student = build_toy("ctm", seconds=0.5, max_seconds=2.0).save(tmp_path / "student")
    res = evaluate_model(
        student, n=2, steps=[1], preset="audioldm", seconds=1.0, content=False,
        out=tmp_path / "out", use_cache=False,
    ).to_json()  # fmt: skip
    assert res["metrics"] == ["fd", "kl", "is", "fd-passt", "clap"] and res["n"] == 2
    assert res["seconds"] == 1.0 and res["sample_rate"] == 16000  # the model makes 8 kHz
    assert all(np.isfinite(v["value"]) for v in res["runs"][0]["metrics"].values())
    assert res["embedders"]["vggish"]["weights"][0]["file"] == "vggish-10086976.pth"


def test_bad_weights_flag_is_one_line(tmp_path):
    gen = write_wavs(tmp_path / "gen", ["a", "b"])
    for value, fragment in (("nope=/x", "unknown embedder 'nope'"), ("clap", "NAME=PATH")):
        assert_one_line_error(run(gen, "--weights", value, "-o", tmp_path / "o"), fragment)
