"""torch eager vs onnxruntime (CPU): the network alone, the decoder alone and the 1-step pipeline,
batch 1 and 8.

The shipped default model (6.65M DiT student, MiniLM, mel codec with 32 Griffin-Lim iterations,
3-second clips) exported at the start; without it, a random "small" DiT student of the same
shape. Real-time factor = seconds of compute per second of audio.
Both runtimes use one thread (torch.set_num_threads(1), onnxruntime intra-op threads 1), so the
ratios do not depend on how busy a shared machine's other cores are; onnxruntime runs Griffin-Lim
on the host (numpy/scipy FFT, the default) and, for the decoder, also the whole decoder.onnx.
Run: pytest tests/benchmarks/test_bench_export.py --benchmark-only -s
"""

from __future__ import annotations

import pytest
import torch

from soundctm.cli.models import default_model_path
from soundctm.engine.pipeline import Pipeline
from soundctm.export import OrtPipeline, export_onnx

SECONDS = 3.0


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-export")
    ckpt = default_model_path()
    if ckpt is None:
        torch.manual_seed(0)
        pipe = Pipeline.build(
            kind="ctm",
            backbone=("dit", {"preset": "small", "student": True}),
            text_encoder=("minilm", {}),
            autoencoder=("mel", {"hop_length": 512}),
            sigma_data=0.5,
            seconds=SECONDS,
        )
        with torch.no_grad():
            for p in pipe.ctm.backbone.parameters():
                p.add_(0.02 * torch.randn_like(p))
        ckpt = pipe.save(root / "ckpt")
    exported = export_onnx(ckpt, root / "onnx")
    torch.set_num_threads(1)
    return (
        Pipeline.load(ckpt),
        OrtPipeline.load(exported, providers=["cpu"], threads=1),
        OrtPipeline.load(exported, providers=["cpu"], threads=1, host_phase_retrieval=False),
    )


def _net_inputs(pipe, batch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *pipe.latent_shape(SECONDS), generator=g) * 80
    cond = pipe.encode_text([f"a beep {i}" for i in range(batch)])
    t = torch.full((batch,), 80.0)
    s = torch.full((batch,), 0.002)
    w = torch.full((batch,), 5.0)
    return x, t, s, cond, w


@pytest.mark.parametrize("batch", [1, 8])
def test_network(benchmark, pipes, batch):
    """The network graph alone: torch eager and onnxruntime alternating, medians of 7."""
    from timing import alternate, load  # tests/benchmarks/timing.py

    x, t, s, cond, w = _net_inputs(pipes[0], batch)

    def run(net):
        def call():
            with torch.inference_mode():
                return net.g(x, t, s, cond, w)

        return call

    fns = {"torch": run(pipes[0].ctm), "onnxruntime": run(pipes[1].network)}
    med = alternate(fns)
    benchmark.pedantic(fns["onnxruntime"], rounds=3, warmup_rounds=0)
    ratio = med["torch"] / med["onnxruntime"]
    benchmark.extra_info.update({"batch": batch, "ratio": round(ratio, 2), "load": load(), **med})
    print(
        f"\nnetwork batch {batch}: torch {med['torch'] * 1e3:.1f} ms, onnxruntime "
        f"{med['onnxruntime'] * 1e3:.1f} ms, torch / onnxruntime {ratio:.2f}, load {load()}"
    )


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "onnxruntime-graph"])
@pytest.mark.parametrize("batch", [1, 8])
def test_decoder(benchmark, pipes, runtime, batch):
    pipe = pipes[["torch", "onnxruntime", "onnxruntime-graph"].index(runtime)]
    g = torch.Generator().manual_seed(0)
    z = 0.5 * torch.randn(batch, *pipes[0].latent_shape(SECONDS), generator=g)

    def run():
        with torch.inference_mode():
            return pipe.autoencoder.decode(z)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update({"runtime": runtime, "batch": batch})


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("batch", [1, 8])
def test_one_step_pipeline(benchmark, pipes, runtime, batch):
    pipe = pipes[0] if runtime == "torch" else pipes[1]
    prompts = ["a high-pitched beep repeating three times"] * batch
    seeds = list(range(batch))
    pipe.generate(prompts, seeds=seeds, steps=1, batch_size=batch)  # warm the prompt cache
    benchmark.pedantic(
        lambda: pipe.generate(prompts, seeds=seeds, steps=1, batch_size=batch),
        rounds=5,
        warmup_rounds=1,
    )
    rtf = benchmark.stats.stats.mean / (batch * SECONDS)
    benchmark.extra_info.update({"runtime": runtime, "batch": batch, "rtf": round(rtf, 4)})
    print(
        f"\n1-step pipeline {runtime} batch {batch}: {benchmark.stats.stats.mean * 1000:.0f} ms,"
        f" real-time factor {rtf:.4f}"
    )


@pytest.mark.parametrize("batch", [1, 8])
def test_one_step_pipeline_ratio(benchmark, pipes, batch):
    """torch eager / onnxruntime, both in this run, alternating, medians of 7 (target >= 1.3)."""
    from timing import alternate, load  # tests/benchmarks/timing.py

    prompts = ["a high-pitched beep repeating three times"] * batch
    seeds = list(range(batch))
    fns = {
        name: (lambda p=p: p.generate(prompts, seeds=seeds, steps=1, batch_size=batch))
        for name, p in (("torch", pipes[0]), ("onnxruntime", pipes[1]))
    }
    med = alternate(fns)
    benchmark.pedantic(fns["onnxruntime"], rounds=3, warmup_rounds=0)
    ratio = med["torch"] / med["onnxruntime"]
    benchmark.extra_info.update({"batch": batch, "ratio": round(ratio, 2), "load": load(), **med})
    print(
        f"\n1-step pipeline batch {batch}: torch {med['torch'] * 1e3:.1f} ms, onnxruntime "
        f"{med['onnxruntime'] * 1e3:.1f} ms, torch / onnxruntime {ratio:.2f} (target >= 1.3), "
        f"load {load()}"
    )
