"""Helpers for components built on Hugging Face libraries (imported lazily)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports (the library never prints)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def hf_source(name: str) -> str:
    """``name`` as ``from_pretrained`` should see it: an existing local folder (``~`` expanded),
    else the hub id as given (the Hugging Face cache, or a download where allowed)."""
    local = Path(name).expanduser()
    return str(local) if local.exists() else str(name)
