"""soundctm: fast text-to-sound generation with Sound Consistency Trajectory Models.

The public API is imported lazily so that ``import soundctm`` (and ``soundctm --help``) never
imports torch::

    from soundctm import Pipeline
    pipe = Pipeline.load("path/to/checkpoint")
    result = pipe.generate(["a high-pitched beep repeating three times"], seeds=[0])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soundctm._version import __version__
from soundctm.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from soundctm.engine.pipeline import Pipeline, load_pipeline

__all__ = ["Pipeline", "__version__", "hookimpl", "load_pipeline"]


def __getattr__(name: str) -> Any:
    if name in {"Pipeline", "load_pipeline"}:
        from soundctm.engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'soundctm' has no attribute {name!r}")
