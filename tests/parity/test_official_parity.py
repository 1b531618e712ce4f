"""Parity with the OFFICIAL SoundCTM-DiT code (opt-in; docs/official-models.md, "Parity with the
official code").

Runs only when two environment variables are set:

- ``SOUNDCTM_OFFICIAL_DIT_CODE``: a checkout of koichi-saito-sony/soundctm_dit_iclr;
- ``SOUNDCTM_OFFICIAL_DIT_PYTHON``: a Python that can import it (torch, transformers 4,
  descript-audiotools, descript-audio-codec, x-transformers, diffusers, ...).

For v1 and v2 it writes random-weight stand-ins in the official formats
(tests/parity/parity_standins.py), runs the official code on them in that Python
(tests/parity/run_official.py: the official demo's steps, from a fixed initial noise), imports
the same files with ``soundctm import soundctm-dit`` and checks that the CLAP embeddings, the
jump G at three (t, s), the 1-, 2- and 4-step latents (nu 1, and 2 steps at nu 2, which
exercises the unconditional half) and their decoded waveforms agree within 1e-4 relative
(max |ours - official| / max |official|). ``SOUNDCTM_OFFICIAL_DIT_REPORT=FILE`` also writes the
measured errors as JSON; ``SOUNDCTM_OFFICIAL_DIT_COMMIT`` names the official revision when the
checkout is not a git work tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OFFICIAL_PARITY_ENV
from parity_standins import HOP, write_parity_standins
from typer.testing import CliRunner

from soundctm.cli.app import build_app
from soundctm.engine.pipeline import Pipeline

CODE, PYTHON, REPORT = (
    OFFICIAL_PARITY_ENV.get(f"SOUNDCTM_OFFICIAL_DIT_{k}") for k in ("CODE", "PYTHON", "REPORT")
)
pytestmark = pytest.mark.skipif(
    not (CODE and PYTHON),
    reason="parity with the official code is opt-in: set SOUNDCTM_OFFICIAL_DIT_CODE (a checkout "
    "of koichi-saito-sony/soundctm_dit_iclr) and SOUNDCTM_OFFICIAL_DIT_PYTHON (a Python with its "
    "requirements); see docs/official-models.md",
)

RUNNER = Path(__file__).resolve().parent / "run_official.py"
TOL = 1e-4
PROMPTS = ["a dog barks in the distance", "rain falls on a metal roof"]
OMEGA = 5.0
JUMPS = [(80.0, 0.002), (2.0, 0.5), (0.3, 0.05)]
RUNS = [
    {"name": "1step", "steps": 1, "nu": 1.0},
    {"name": "2step", "steps": 2, "nu": 1.0},
    {"name": "4step", "steps": 4, "nu": 1.0},
    {"name": "2step_nu2", "steps": 2, "nu": 2.0},
]
SECONDS = 0.18  # 7938 samples: 32 frames at hop 256 (the decoder makes 8192; both are cropped)
FRAMES = -(-round(SECONDS * 44100) // HOP)
QUANTITIES = [
    "clap",
    *(f"jump_{i}" for i in range(len(JUMPS))),
    *(f"{kind}_{r['name']}" for r in RUNS for kind in ("latents", "audio")),
]
SIGMA_MAX = 80.0


def rel(ours: torch.Tensor, official: np.ndarray) -> float:
    ref = torch.from_numpy(official).float()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours.float() - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)


def write_inputs(folder: Path) -> Path:
    """The spec and the fixed noises the runner and this test share."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5031)
    shape = (len(PROMPTS), 8, FRAMES)
    np.save(folder / "x_T.npy", (SIGMA_MAX * torch.randn(shape, generator=g)).numpy())
    np.save(folder / "x_jump.npy", torch.randn(shape, generator=g).numpy())
    spec = {"prompts": PROMPTS, "jumps": JUMPS, "omega": OMEGA, "runs": RUNS}
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def run_official(src: Path, variant: str, spec: Path, out: Path) -> dict:
    cmd = [PYTHON, str(RUNNER), "--code", CODE, "--src", str(src), "--variant", variant,
           "--spec", str(spec), "--out", str(out)]  # fmt: skip
    env = {**os.environ, **OFFICIAL_PARITY_ENV}  # conftest clears SOUNDCTM_* for the tests
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=env)
    if done.returncode != 0:
        pytest.fail(f"the official code failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


def ours(imported: Path, inputs: Path) -> dict[str, torch.Tensor]:
    """The same quantities from the imported model."""
    pipe = Pipeline.load(imported)
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        got["clap"] = pipe.text_encoder([*PROMPTS, ""]).tokens[:, 0]
        cond = pipe.text_encoder(PROMPTS)
        x = torch.from_numpy(np.load(inputs / "x_jump.npy"))
        for i, (t, s) in enumerate(JUMPS):
            got[f"jump_{i}"] = pipe.ctm.jump(x, t, s, cond, OMEGA)
    x_t = torch.from_numpy(np.load(inputs / "x_T.npy"))
    ae = pipe.autoencoder
    decode = ae.decode
    seen: list[torch.Tensor] = []

    def spy(z: torch.Tensor) -> torch.Tensor:  # the latents the sampler hands to the decoder
        seen.append(z.clone())
        return decode(z)

    ae.decode = spy
    for r in RUNS:
        gen = pipe.generate(
            PROMPTS, seeds=[0, 1], latents=x_t, steps=r["steps"], nu=r["nu"], omega=OMEGA,
            gamma=0.0, seconds=SECONDS,
        )  # fmt: skip
        got[f"latents_{r['name']}"] = seen[-1]
        got[f"audio_{r['name']}"] = gen.audio
    return got


_REPORT: dict[str, dict] = {}


@pytest.fixture(scope="module", params=["v1", "v2"])
def measured(request, tmp_path_factory) -> tuple[str, dict[str, float]]:
    variant = request.param
    root = tmp_path_factory.mktemp(f"official-{variant}")
    src = root / "standin"
    write_parity_standins(src, variant)
    spec = write_inputs(root / "inputs")
    official = run_official(src, variant, spec, root / "official")
    out = root / "imported"
    r = CliRunner().invoke(
        build_app(), ["import", "soundctm-dit", str(src), "--variant", variant, "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    mine = ours(out, spec.parent)
    n = mine["audio_1step"].shape[-1]
    errors = {}
    for q in QUANTITIES:
        ref = official[q][..., :n] if q.startswith("audio_") else official[q]
        errors[q] = rel(mine[q], ref)
    versions = json.loads((root / "official" / "versions.json").read_text())
    _REPORT[variant] = {"errors": errors, "official": versions}
    if REPORT:
        Path(REPORT).write_text(json.dumps(_REPORT, indent=1))
    print(f"\n{variant}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()), file=sys.stderr)
    return variant, errors


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_equals_the_official_code(measured, quantity):
    variant, errors = measured
    assert errors[quantity] <= TOL, f"{variant} {quantity}: {errors[quantity]:.3g} relative"
