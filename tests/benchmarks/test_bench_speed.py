"""The speed targets of the default model (issue 19), each as a ratio with both sides measured
in one run, alternating, medians of several rounds, one thread (torch, onnxruntime and scipy),
CPU time (tests/benchmarks/timing.py: on a shared machine wall-clock time measures the others):

* network forward ``g(x, t, s)`` alone, batch 1 and 8;
* warm 1-step generation / network forward (target <= 2.5x), batch 1 and 8;
* the Griffin-Lim decoder: torch vs the host numpy/scipy iteration of exported models;
* a cold ``soundctm sample`` / ``python -c "import torch"`` (target <= 2x).

The torch vs onnxruntime pipeline ratio is in test_bench_export.py (it needs an export).
Run: python -m pytest tests/benchmarks/test_bench_speed.py --benchmark-only -s
Every test prints its ratio; the numbers also go to the benchmark's extra_info.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from timing import alternate, load  # tests/benchmarks/timing.py

from soundctm.cli.models import default_model_path
from soundctm.engine.pipeline import Pipeline

PROMPT = "a high-pitched beep repeating three times"
SECONDS = 3.0

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="no default model shipped")


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return Pipeline.load(default_model_path())


def _inputs(pipe: Pipeline, batch: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *pipe.latent_shape(SECONDS), generator=g) * 80
    cond = pipe.encode_text([PROMPT] * batch)
    full = {v: torch.full((batch,), v) for v in (80.0, 0.002, 6.0)}
    return x, full[80.0], full[0.002], cond, full[6.0]


@pytest.mark.parametrize("batch", [1, 8])
def test_one_step_generation_vs_network(benchmark, pipe, batch):
    x, t, s, cond, omega = _inputs(pipe, batch)
    prompts, seeds = [PROMPT] * batch, list(range(batch))

    def network() -> object:
        with torch.inference_mode():
            return pipe.ctm.g(x, t, s, cond, omega)

    def generate() -> object:
        return pipe.generate(prompts, seeds=seeds, steps=1, batch_size=batch)

    med = alternate({"network": network, "generate": generate})
    benchmark.pedantic(generate, rounds=3, warmup_rounds=0)
    ratio = med["generate"] / med["network"]
    benchmark.extra_info.update({"batch": batch, "ratio": round(ratio, 2), "load": load(), **med})
    print(
        f"\nbatch {batch}: network {med['network'] * 1e3:.1f} ms, warm 1-step generation "
        f"{med['generate'] * 1e3:.1f} ms, ratio {ratio:.2f} (target <= 2.5), load {load()}"
    )


@pytest.mark.parametrize("batch", [1, 8])
def test_decoder_torch_vs_host(benchmark, pipe, batch):
    from soundctm.export.phase import GriffinLimSettings, griffin_lim

    ae = pipe.autoencoder
    g = torch.Generator().manual_seed(0)
    z = 0.5 * torch.randn(batch, *pipe.latent_shape(SECONDS), generator=g)
    magnitude = ae.magnitude(z).numpy()
    settings = GriffinLimSettings.from_spec(ae.griffin_lim_settings())
    x, t, s, cond, omega = _inputs(pipe, batch)

    def network() -> object:
        with torch.inference_mode():
            return pipe.ctm.g(x, t, s, cond, omega)

    def torch_decoder() -> object:
        with torch.inference_mode():
            return ae.decode(z)

    med = alternate(
        {
            "network": network,
            "torch": torch_decoder,
            "host": lambda: griffin_lim(magnitude, settings),
        }
    )
    benchmark.pedantic(torch_decoder, rounds=3, warmup_rounds=0)
    benchmark.extra_info.update({"batch": batch, "load": load(), **med})
    print(
        f"\nbatch {batch}: Griffin-Lim decoder torch {med['torch'] * 1e3:.1f} ms "
        f"({med['torch'] / med['network']:.2f}x the network), host numpy "
        f"{med['host'] * 1e3:.1f} ms (torch / host {med['torch'] / med['host']:.2f}), "
        f"load {load()}"
    )


def test_cold_start_vs_import_torch(benchmark, tmp_path):
    """Fresh processes, alternating; ``soundctm sample`` writes one default-model clip."""
    exe = Path(sys.executable)
    cli = exe.parent / "soundctm"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(args: list[str]) -> Callable[[], object]:
        return lambda: subprocess.run(args, env=env, check=True, capture_output=True)

    fns = {
        "import torch": run([str(exe), "-c", "import torch"]),
        "sample": run([str(cli), "sample", PROMPT, "-o", str(tmp_path / "out")]),
        "help": run([str(cli), "--help"]),
    }
    med = alternate(fns, rounds=3, clock="children")
    wall = alternate(fns, rounds=1, clock="wall")
    benchmark.pedantic(fns["import torch"], rounds=1, warmup_rounds=0)
    ratio = med["sample"] / med["import torch"]
    benchmark.extra_info.update({"ratio": round(ratio, 2), "load": load(), **med})
    benchmark.extra_info["wall"] = wall
    print(
        f"\ncold `soundctm sample` {med['sample']:.2f} s CPU, `python -c 'import torch'` "
        f"{med['import torch']:.2f} s CPU: ratio {ratio:.2f} (target <= 2); `soundctm --help` "
        f"{med['help']:.2f} s CPU; wall clock (one round): sample {wall['sample']:.2f} s, import "
        f"torch {wall['import torch']:.2f} s, ratio {wall['sample'] / wall['import torch']:.2f}; "
        f"load {load()}"
    )
