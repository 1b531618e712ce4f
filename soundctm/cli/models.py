"""Finding the model to use (shared by sample and refine). No torch at import."""

from __future__ import annotations

from pathlib import Path

from soundctm.errors import CheckpointError


def default_model_path() -> Path | None:
    """The packaged default model, if this installation ships one."""
    here = Path(__file__).resolve().parent.parent / "models" / "default"
    return here if (here / "model.json").is_file() else None


def resolve_model(model: Path | None) -> Path:
    """``model`` or the packaged default; a clear error if there is neither."""
    if model is not None:
        return model
    default = default_model_path()
    if default is None:
        raise CheckpointError(
            "no model given and this installation ships no default model; pass --model DIR "
            "(a checkpoint folder, e.g. runs/NAME/latest written by `soundctm train`) or set "
            "SOUNDCTM_SAMPLE_MODEL"
        )
    return default
