"""The embedding cache: arrays on disk keyed by audio content, embedder and weight checksum.

Re-runs of an evaluation skip the embedders: every array an embedder computes for a clip (its
embedding, per-window embeddings, classifier logits, a caption's text embedding) is stored as a
``.npy`` file (``allow_pickle=False``, nothing is pickled) under a folder named by the embedder,
its weight checksum and its sample rate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CACHE = Path("~/.cache/soundctm/embeddings")


def cache_namespace(embedder: Any) -> str:
    """The cache folder of ``embedder``: ``<name>-<checksum[:16]>-<sample rate>``, then
    ``-<variant>`` when the embedder has a ``variant`` string (settings that change its output
    for the same weights, such as PaSST's protocol or OpenL3's hop)."""
    checksum = str(getattr(embedder, "checksum", "none"))
    out = f"{embedder.name}-{checksum[:16]}-{int(embedder.sample_rate)}"
    variant = str(getattr(embedder, "variant", "") or "")
    if variant:
        out += "-" + "".join(c if c.isalnum() or c in "-_.@" else "_" for c in variant)
    return out


class EmbeddingCache:
    """Arrays on disk under ``root/<namespace>/<kind>/<key[:2]>/<key>.npy``.

    ``key`` is the SHA-256 of the audio (file bytes, or float32 samples for audio made in
    memory); ``root=None`` keeps nothing. ``hits`` and ``misses`` count the look-ups."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.hits = 0
        self.misses = 0

    def _path(self, namespace: str, kind: str, key: str) -> Path:
        assert self.root is not None
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in key)
        return self.root / namespace / kind / safe[:2] / f"{safe}.npy"

    def get(self, namespace: str, kind: str, key: str) -> np.ndarray | None:
        """The stored array, or None (a miss) when there is none or it cannot be read."""
        if self.root is None:
            self.misses += 1
            return None
        try:
            arr = np.load(self._path(namespace, kind, key), allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, namespace: str, kind: str, key: str, value: np.ndarray) -> None:
        """Store ``value`` as float32 (written to a temporary name and renamed)."""
        if self.root is None:
            return
        path = self._path(namespace, kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(value, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except OSError:  # a cache that cannot be written only costs time
            return


__all__ = ["DEFAULT_CACHE", "EmbeddingCache", "cache_namespace"]
