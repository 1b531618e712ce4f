"""Embedding 100 ten-second clips with the LAION-CLAP embedder at its real size (HTSAT-tiny, 512-d;
random weights in the released laion format), and the same clips again through the content-keyed
embedding cache. Run: ``pytest tests/benchmarks/test_bench_eval_clap.py --benchmark-only -s``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from laion_clap_standin import laion_state, save_laion
from test_clap import write_tokenizer

from soundctm.eval.clap import LaionClapEmbedder

CLIPS, SECONDS, SR = 100, 10.0, 48000


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("clap-real-size")
    tok = write_tokenizer(d / "tok")
    vocab = len(AutoTokenizer.from_pretrained(str(tok)))
    state = laion_state(vocab, embed=96, depths=(2, 2, 6, 2), heads=(4, 8, 16, 32), joint=512)
    return LaionClapEmbedder(save_laion(state, d / "630k-audioset-best.pt"), tokenizer=str(tok))


def clips() -> torch.Tensor:
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * SR)) / SR
    x = [0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(t.size)
         for i in range(CLIPS)]  # fmt: skip
    return torch.from_numpy(np.stack(x).astype(np.float32))


def test_embed_100_ten_second_clips(benchmark, embedder, tmp_path):
    from soundctm.eval.cache import EmbeddingCache
    from soundctm.eval.context import EvalContext
    from soundctm.eval.evalset import EvalItem, EvalSet

    audio = clips()
    embedder.embed(audio[:2])  # warm up
    t0 = time.perf_counter()
    feats = [embedder.features(a) for a in audio[:8]]
    front = (time.perf_counter() - t0) / 8
    out = benchmark.pedantic(embedder.embed, args=(audio,), rounds=1, iterations=1)
    assert out.shape == (CLIPS, 512) and len(feats) == 8
    total = benchmark.stats.stats.mean
    # through the evaluation context: first pass fills the cache, the second reads it back
    items = [EvalItem(f"c{i}", a.numpy()) for i, a in enumerate(audio[:20])]
    es = EvalSet(items, SR)
    ctx = EvalContext(EmbeddingCache(tmp_path / "cache"))
    ctx._embedders["clap"] = embedder
    t0 = time.perf_counter()
    first = ctx.embeddings(embedder, es, "generated")
    t1 = time.perf_counter()
    again = ctx.embeddings(embedder, es, "generated")
    t2 = time.perf_counter()
    np.testing.assert_array_equal(first, again)
    info = {
        "clips": CLIPS,
        "seconds_per_clip": round(total / CLIPS, 4),
        "real_time_factor": round(total / (CLIPS * SECONDS), 5),
        "front_end_seconds_per_clip": round(front, 4),
        "context_20_clips_s": round(t1 - t0, 3),
        "cached_20_clips_s": round(t2 - t1, 4),
        "threads": torch.get_num_threads(),
    }
    benchmark.extra_info.update(info)
    print(info)
