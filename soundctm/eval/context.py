"""The evaluation context: what metric plugins use during a run.

It builds each embedder once (on the run's device) and hands out embeddings, per-window
embeddings, classifier logits and text embeddings through the :class:`~soundctm.eval.cache.
EmbeddingCache`. It implements the :class:`~soundctm.eval.plugins.Context` protocol.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from soundctm.errors import DataError
from soundctm.eval.cache import DEFAULT_CACHE, EmbeddingCache, cache_namespace
from soundctm.eval.evalset import EvalSet
from soundctm.eval.results import CacheInfo, EmbedderInfo
from soundctm.eval.weights import progress_to
from soundctm.events import Callback, EvalStage, EvalTick, emit


def _weight_json(w: Any) -> dict[str, str]:
    """A weight record (``WeightRecord`` or a plugin's own dict) as plain strings."""
    data = w.to_json() if callable(getattr(w, "to_json", None)) else dict(w)
    return {str(k): str(v) for k, v in data.items()}


class EvalContext:
    """Embedders built once, embeddings through the cache, events to ``callback``."""

    def __init__(
        self,
        cache: EmbeddingCache,
        *,
        registry: Any | None = None,
        device: str = "cpu",
        callback: Callback | None = None,
        batch_size: int = 16,
    ) -> None:
        from soundctm.plugins.registry import get_registry

        self.cache = cache
        self.registry = registry or get_registry()
        self.device = device
        self.callback = callback
        self.batch_size = max(1, int(batch_size))
        self._embedders: dict[str, Any] = {}

    def embedder(self, name: str, **params: Any) -> Any:
        """The embedder ``name`` with ``params`` (built, moved to the device and put in eval
        mode on first use)."""
        key = json.dumps([name, params], sort_keys=True, default=str)
        if key not in self._embedders:
            with progress_to(self.callback):
                emb = self.registry.build("embedder", name, **params)
            if callable(getattr(emb, "to", None)):
                emb = emb.to(self.device)
            if callable(getattr(emb, "eval", None)):
                emb.eval()
            self._embedders[key] = emb
        return self._embedders[key]

    def embedder_info(self) -> dict[str, EmbedderInfo]:
        """Checksum, rate and dimension of every embedder used so far, by name."""
        return {
            e.name: EmbedderInfo(
                checksum=str(getattr(e, "checksum", "none")),
                sample_rate=int(e.sample_rate),
                dim=int(e.dim),
                weights=tuple(_weight_json(w) for w in getattr(e, "weights", None) or ()),
            )
            for e in self._embedders.values()
        }

    def cache_info(self) -> CacheInfo:
        """Where the cache lives and how often it answered."""
        root = self.cache.root
        return CacheInfo(str(root) if root else None, self.cache.hits, self.cache.misses)

    def _per_item(self, embedder: Any, evalset: EvalSet, which: str, kind: str) -> list[np.ndarray]:
        """One array per item (``embed``: ``[dim]``, ``frames``: ``[windows, dim]``, ``logits``:
        ``[classes]``), from the cache or computed in batches of ``batch_size`` clips of one
        length (each clip's result does not depend on its batch)."""
        import torch

        from soundctm.eval.embedders import resample_for

        ns = cache_namespace(embedder)
        items = evalset.items
        keys: list[str] = []
        for it in items:
            if which == "reference" and it.reference is None:
                raise DataError(f"item {it.key!r} has no reference audio")
            digest = it.audio_sha256 if which == "generated" else it.reference_sha256
            keys.append(f"{digest}-{evalset.sample_rate}")
        out: list[np.ndarray | None] = [self.cache.get(ns, kind, k) for k in keys]
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            emit(self.callback, EvalStage(f"{kind} {embedder.name} ({which})", len(todo)))
        fn = embedder.embed_frames if kind == "frames" else getattr(embedder, kind)
        done = 0
        for group in _batches(todo, [len(_clip(items[i], which)) for i in todo], self.batch_size):
            x = torch.from_numpy(np.stack([_clip(items[i], which) for i in group]))
            x = resample_for(embedder, x, evalset.sample_rate)
            with torch.inference_mode():
                y = fn(x.to(self.device))
            for row, i in enumerate(group):
                arr = np.asarray(y[row].detach().float().cpu().numpy(), dtype=np.float32)
                if not np.all(np.isfinite(arr)):
                    raise DataError(
                        f"embedder {embedder.name!r} gave non-finite values for "
                        f"{items[i].key!r} ({which}); check that audio file"
                    )
                self.cache.put(ns, kind, keys[i], arr)
                out[i] = arr
                done += 1
                emit(self.callback, EvalTick(done, len(todo)))
        return [o for o in out if o is not None]

    def embeddings(
        self, embedder: Any, evalset: EvalSet, which: str, kind: str = "embed"
    ) -> np.ndarray:
        """``[N, dim]`` embeddings of the generated or reference clips; with ``kind="frames"``
        the per-window embeddings of all clips stacked ``[rows, dim]``."""
        rows = self._per_item(embedder, evalset, which, kind)
        if kind == "frames":
            return np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows], axis=0)
        return np.stack(rows)

    def logits(self, embedder: Any, evalset: EvalSet, which: str) -> np.ndarray:
        """``[N, classes]`` classifier logits of the generated or reference clips."""
        return np.stack(self._per_item(embedder, evalset, which, "logits"))

    def text_embeddings(self, embedder: Any, texts: list[str]) -> np.ndarray:
        """``[N, dim]`` text embeddings of ``texts`` (text-audio embedders only)."""
        import torch

        ns = cache_namespace(embedder)
        out = []
        for t in texts:
            key = hashlib.sha256(t.encode("utf-8")).hexdigest()
            got = self.cache.get(ns, "text", key)
            if got is None:
                with torch.inference_mode():
                    got = embedder.embed_text([t])[0].detach().float().cpu().numpy()
                self.cache.put(ns, "text", key, got)
            out.append(got)
        return np.stack(out)


def _clip(item: Any, which: str) -> np.ndarray:
    audio = item.audio if which == "generated" else item.reference
    return np.asarray(audio, dtype=np.float32)


def _batches(indices: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """``indices`` in groups of at most ``size`` whose clips have one length (embedders take
    ``[B, n]``; batching several clips is about 2x faster for the transformer embedders)."""
    groups: list[list[int]] = []
    by_length: dict[int, list[int]] = {}
    for i, n in zip(indices, lengths, strict=True):
        by_length.setdefault(n, []).append(i)
    for same in by_length.values():
        groups.extend(same[k : k + size] for k in range(0, len(same), size))
    return groups


def make_context(
    cache_dir: str | Path | None,
    *,
    use_cache: bool = True,
    registry: Any | None = None,
    device: str = "cpu",
    callback: Callback | None = None,
) -> EvalContext:
    """A context whose cache lives in ``cache_dir`` (default :data:`DEFAULT_CACHE`), or keeps
    nothing when ``use_cache`` is false."""
    root = (Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE) if use_cache else None
    return EvalContext(EmbeddingCache(root), registry=registry, device=device, callback=callback)


__all__ = ["EvalContext", "make_context"]
