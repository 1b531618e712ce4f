"""Embedding time of the published-model evaluators on this CPU: 100 ten-second clips through
PaSST (logits, the KL / IS input), OpenL3 and VGGish (per-frame embeddings, the FD input), then
the same clips again through the evaluation context's embedding cache (a re-run). CLAP's is in
test_bench_eval_clap.py.

Run: python -m pytest tests/benchmarks/test_bench_eval_embedders.py --benchmark-only -s
(``BENCH_EMBED_CLIPS`` sets the clip count, default 100; not a SOUNDCTM_ variable: the test
session clears those). The networks have their real sizes
(PaSST-S: 86 M parameters, OpenL3 mel256: 4.7 M, VGGish: 72 M) with random weights saved in
the released formats, so the timings are those of the real files. The clips are at the protocol
rates (32 kHz for PaSST, 48 kHz for OpenL3, 16 kHz for VGGish): resampling is not included.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from soundctm.eval.cache import EmbeddingCache
from soundctm.eval.context import EvalContext
from soundctm.eval.evalset import EvalItem, EvalSet
from soundctm.eval.openl3 import OpenL3, OpenL3Embedder
from soundctm.eval.passt import PaSST, PaSSTEmbedder
from soundctm.eval.vggish import VGGish, VGGishEmbedder

CLIPS = int(os.environ.get("BENCH_EMBED_CLIPS", "100"))
SECONDS = 10.0


def clips(rate: int) -> EvalSet:
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * rate)) / rate
    items = []
    for i in range(CLIPS):
        x = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        items.append(EvalItem(f"c{i:03d}", x.astype(np.float32)))
    return EvalSet(items, rate)


def _built(tmp_path_factory, network, file_name: str, embedder):
    """``embedder`` on a weight file of ``network`` with random weights (seed 0)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(file_name.split("-")[0].split("_")[0]) / file_name
    torch.save(network().state_dict(), path)
    return embedder(path)


@pytest.fixture(scope="module")
def passt(tmp_path_factory):
    return _built(tmp_path_factory, PaSST, "passt-s-f128-p16-s10-ap.476-swa.pt", PaSSTEmbedder)


@pytest.fixture(scope="module")
def openl3(tmp_path_factory):
    return _built(tmp_path_factory, OpenL3, "torchopenl3_mel256_env_512.pth.tar", OpenL3Embedder)


@pytest.fixture(scope="module")
def vggish(tmp_path_factory):
    return _built(tmp_path_factory, VGGish, "vggish-10086976.pth", VGGishEmbedder)


def _time(benchmark, embedder, kind, rate, tmp_path):
    evalset = clips(rate)
    ctx = EvalContext(EmbeddingCache(tmp_path / "cache"))
    cpu: list[float] = []

    def run():
        start = time.process_time()
        if kind == "logits":
            out = ctx.logits(embedder, evalset, "generated")
        else:
            out = ctx.embeddings(embedder, evalset, "generated", kind="frames")
        cpu.append(time.process_time() - start)
        return out

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    start = time.perf_counter()
    again = run()
    rerun = time.perf_counter() - start
    np.testing.assert_array_equal(out, again)
    seconds = benchmark.stats.stats.mean
    # on a shared machine the wall time depends on the load; the process CPU time (all threads)
    # does much less
    benchmark.extra_info.update(
        clips=CLIPS,
        seconds_per_clip=round(seconds / CLIPS, 3),
        cpu_seconds=round(cpu[0], 1),
        cpu_seconds_per_clip=round(cpu[0] / CLIPS, 3),
        real_time_factor=round(seconds / (CLIPS * SECONDS), 4),
        cached_rerun_seconds=round(rerun, 3),
        cache_hits=ctx.cache.hits,
        threads=torch.get_num_threads(),
        load_average=round(os.getloadavg()[0], 1),
    )
    print(
        f"\n{embedder.name} {kind}: {CLIPS} x {SECONDS:g} s clips in {seconds:.1f} s wall "
        f"({seconds / CLIPS:.2f} s/clip), {cpu[0]:.1f} s CPU ({cpu[0] / CLIPS:.2f} s/clip, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}); "
        f"cached re-run {rerun:.2f} s"
    )
    assert ctx.cache.hits == CLIPS
    return out


def test_passt_logits_100_clips(benchmark, passt, tmp_path):
    out = _time(benchmark, passt, "logits", 32000, tmp_path)
    assert out.shape == (CLIPS, 527)


def test_openl3_frames_100_clips(benchmark, openl3, tmp_path):
    out = _time(benchmark, openl3, "frames", 48000, tmp_path)
    assert out.shape == (CLIPS * 20, 512)  # 10 s, centred, hop 0.5 s: 20 frames per clip


def test_vggish_frames_100_clips(benchmark, vggish, tmp_path):
    out = _time(benchmark, vggish, "frames", 16000, tmp_path)
    assert out.shape == (CLIPS * 10, 128)  # 10 s: ten 0.96 s examples per clip
