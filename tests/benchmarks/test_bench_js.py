"""The Node sampler of js/ (onnxruntime-node) vs the Python onnxruntime pipeline, same export.

The shipped default model exported at the start (or the folder in $BENCH_EXPORTED, to skip the
export), 1 step, batch 1, the card's 3-second clip, onnxruntime's default CPU threads on both
sides. Two measures, both sides in one run:

* warm: a loaded model generates again (Node: the third run of `sample.mjs --repeat 3`, as
  timed inside Node; Python: `OrtPipeline.generate` under pytest-benchmark), the two
  interleaved round by round so that both see the same machine load; text states cached on
  both sides;
* cold: a fresh process that loads the model and generates once (what a command line costs).

Run: pytest tests/benchmarks/test_bench_js.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soundctm.cli.models import default_model_path

JS = Path(__file__).parent.parent.parent / "js"
PROMPT = "a dog barks in the distance"
ROUNDS = 7


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    if shutil.which("node") is None or not (JS / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node and js/node_modules (npm ci in js/) are needed")
    if os.environ.get("BENCH_EXPORTED"):
        return Path(os.environ["BENCH_EXPORTED"])
    from soundctm.export import export_onnx

    ckpt = default_model_path()
    if ckpt is None:
        pytest.skip("the default model is not installed")
    return export_onnx(ckpt, tmp_path_factory.mktemp("bench-js") / "exported")


def node(exported: Path, *args: str) -> dict:
    cmd = ["node", str(JS / "sample.mjs"), "--model", str(exported), "--prompt", PROMPT]
    r = subprocess.run([*cmd, "--steps", "1", *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_warm_node_vs_python(benchmark, exported):
    from soundctm.export import OrtPipeline

    pipe = OrtPipeline.load(exported, providers=["cpu"])
    node_ms: list[float] = []

    def node_round() -> None:  # interleaved with Python's rounds: both see the same load
        node_ms.append(node(exported, "--repeat", "3")["runs_ms"][-1])  # its 3rd run: warm

    benchmark.pedantic(
        lambda: pipe.generate([PROMPT], seeds=[0], steps=1),
        setup=node_round,
        rounds=ROUNDS,
        warmup_rounds=1,
    )
    python_ms = 1000 * benchmark.stats.stats.median
    ratio = statistics.median(node_ms) / python_ms
    benchmark.extra_info.update({"node_median_ms": statistics.median(node_ms), "ratio": ratio})
    print(
        f"\nwarm 1-step generation, batch 1: Node {statistics.median(node_ms):.0f} ms, "
        f"Python onnxruntime {python_ms:.0f} ms: Node / Python = {ratio:.2f}"
    )


PYTHON_COLD = """
import sys
from soundctm.export import OrtPipeline
OrtPipeline.load(sys.argv[1], providers=["cpu"]).generate([sys.argv[2]], seeds=[0], steps=1)
"""


def test_cold_node_vs_python(benchmark, exported):
    def python_cold():
        subprocess.run([sys.executable, "-c", PYTHON_COLD, str(exported), PROMPT], check=True)

    node_s = []
    for _ in range(3):
        start = time.perf_counter()
        node(exported)
        node_s.append(time.perf_counter() - start)
    benchmark.pedantic(python_cold, rounds=3, warmup_rounds=0)
    python_s = benchmark.stats.stats.median
    ratio = statistics.median(node_s) / python_s
    benchmark.extra_info.update({"node_median_s": statistics.median(node_s), "ratio": ratio})
    print(
        f"\ncold process (load + one 1-step clip): Node {statistics.median(node_s):.2f} s, "
        f"Python {python_s:.2f} s: Node / Python = {ratio:.2f}"
    )
