"""Finding the model to use (shared by sample and refine). No torch at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soundctm.errors import CheckpointError, InvalidArgumentError


def default_model_path() -> Path | None:
    """The packaged default model, if this installation ships one."""
    here = Path(__file__).resolve().parent.parent / "models" / "default"
    return here if (here / "model.json").is_file() else None


def load_model(model_dir: Path, device: str, dtype: str = "float32"):  # noqa: ANN201
    """A torch pipeline (its backbone in ``dtype``), or the onnxruntime pipeline when
    ``model_dir`` holds an ONNX export (``dtype`` must then be float32)."""
    from soundctm.export.runtime import is_exported, load_exported, providers_for_device

    if is_exported(model_dir):
        if dtype != "float32":
            raise InvalidArgumentError(
                f"--dtype {dtype} applies to torch models; {model_dir} is an ONNX export "
                "(float32 graphs); drop --dtype"
            )
        return load_exported(model_dir, providers=providers_for_device(device))
    from soundctm.engine.devices import resolve_device
    from soundctm.engine.pipeline import Pipeline

    return Pipeline.load(model_dir, device=resolve_device(device), dtype=dtype)


def resolve_model(model: Path | str | None) -> Path:
    """``model`` (a folder or an ``hf:OWNER/REPO[@REV]`` hub id, downloaded and converted on
    first use) or the packaged default; a clear error if there is neither."""
    return resolve_model_source(model)[0]


def resolve_model_source(model: Path | str | None) -> tuple[Path, dict[str, Any] | None]:
    """:func:`resolve_model` and, for a hub id, its origin (repo, revision, commit)."""
    from soundctm.engine.hub import is_hub_id

    if is_hub_id(model):
        from soundctm.cli.common import show_messages
        from soundctm.engine.hub import resolve

        found = resolve(str(model), callback=show_messages)
        return found.path, found.record()
    if model is not None:
        return Path(model), None
    default = default_model_path()
    if default is None:
        raise CheckpointError(
            "no model given and this installation ships no default model; pass --model DIR "
            "(a checkpoint folder, e.g. runs/NAME/latest written by `soundctm train`) or set "
            "SOUNDCTM_SAMPLE_MODEL"
        )
    return default, None
