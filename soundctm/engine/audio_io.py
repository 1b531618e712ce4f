"""Writing generated audio: WAV, FLAC, OGG or MP3 files (soundfile) with a JSON sidecar that
reproduces them; the level of each clip is set on the way (:mod:`soundctm.engine.levels`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from torch import Tensor

from soundctm._version import __version__
from soundctm.engine.checkpoint import sha256_file
from soundctm.engine.files import atomic_path, probe_write, write_error
from soundctm.engine.plan import SampleParams
from soundctm.errors import AudioFileError, InvalidArgumentError, StorageError

SIDECAR_VERSION = 1

#: The formats generated audio can be written in: soundfile's format and subtype, by suffix.
FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def check_format(name: str) -> str:
    """``name`` (lower-cased, without a dot) if it is one of :data:`FORMATS`, else an error."""
    fmt = str(name).lower().lstrip(".")
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)}, got {name!r}")
    return fmt


def sidecar_path(wav: Path) -> Path:
    """The sidecar of ``x.wav`` (or ``x.flac``, ...) is ``x.json``."""
    return Path(wav).with_suffix(".json")


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:max_len].rstrip("-")) or "sample"


def free_stem(folder: Path, stem: str, fmt: str = "wav") -> Path:
    """``folder/stem.FMT`` or ``folder/stem-N.FMT`` such that neither the file nor its sidecar
    exists yet (outputs never overwrite)."""
    fmt = check_format(fmt)
    candidate, i = folder / f"{stem}.{fmt}", 0
    while candidate.exists() or sidecar_path(candidate).exists():
        i += 1
        candidate = folder / f"{stem}-{i}.{fmt}"
    return candidate


def sidecar_record(
    params: SampleParams,
    *,
    sample_rate: int,
    model_path: Path | None,
    model_card_sha256: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar content: all it takes to regenerate the sample."""
    record: dict[str, Any] = {
        "soundctm_sidecar": SIDECAR_VERSION,
        **asdict(params),
        "sample_rate": sample_rate,
        "model": str(model_path.resolve()) if model_path is not None else None,
        "model_card_sha256": model_card_sha256,
        "soundctm_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record.update(extra or {})
    return record


def save_sample(
    wav: Path,
    audio: Tensor,
    params: SampleParams,
    *,
    sample_rate: int,
    model_path: Path | None,
    model_card_sha256: str | None,
    extra: dict[str, Any] | None = None,
    normalize: str = "none",
    callback: Callable[[Any], None] | None = None,
) -> Path:
    """:func:`write_sample` with the sidecar of ``params`` (:func:`sidecar_record`), the audio
    levelled by ``normalize`` first (:func:`~soundctm.engine.levels.normalize`; the sidecar
    records ``normalize`` and ``gain_db``). A level warning (a silent clip, say) goes to
    ``callback`` as one :class:`~soundctm.events.Message` naming the prompt and seed."""
    from soundctm.engine.levels import normalize as level
    from soundctm.events import Message

    leveled = level(audio, sample_rate, normalize)
    if leveled.warning is not None and callback is not None:
        callback(
            Message(
                f"warning: {params.prompt!r} (seed {params.seed}): {leveled.warning}",
                level="warning",
            )
        )
    record = sidecar_record(
        params,
        sample_rate=sample_rate,
        model_path=model_path,
        model_card_sha256=model_card_sha256,
        extra={"normalize": normalize, "gain_db": round(leveled.gain_db, 6), **(extra or {})},
    )
    return write_sample(wav, leveled.audio, sample_rate, record)


@contextlib.contextmanager
def _cleanup_on_error(paths: list[Path]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise


def write_sample(wav: Path, audio: Tensor, sample_rate: int, record: dict[str, Any]) -> Path:
    """Write ``audio`` (1-D, float in [-1, 1]; clipped beyond) plus sidecar JSON, in the format
    the suffix of ``wav`` names (:data:`FORMATS`: 16-bit WAV or FLAC, OGG Vorbis, MP3).

    Both files are written to temporary names first; either both appear or neither does. A
    failed write (a full disk, say) is an :class:`OutputPathError` naming the OS reason and the
    path; libsndfile gives no OS reason of its own, so the folder is probed for it
    (:func:`~soundctm.engine.files.probe_write`).
    """
    wav = Path(wav)
    container, subtype = FORMATS[check_format(wav.suffix or "wav")]
    data = np.clip(audio.detach().float().cpu().numpy().reshape(-1), -1.0, 1.0)
    try:
        with atomic_path(wav) as tmp_wav, atomic_path(sidecar_path(wav)) as tmp_json:
            try:
                sf.write(str(tmp_wav), data, sample_rate, subtype=subtype, format=container)
            except (sf.LibsndfileError, OSError) as exc:
                raise _audio_write_error(wav, exc, 44 + 2 * data.size) from exc
            tmp_json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        # the sidecar is renamed first: a failure renaming the WAV must not leave it alone
        for p in (wav, sidecar_path(wav)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    return wav


def write_wav(path: Path, data: np.ndarray, sample_rate: int, *, subtype: str = "PCM_16") -> Path:
    """Write ``data`` (frames, or frames x channels) as a WAV file atomically; a failed write is
    an :class:`OutputPathError` naming the OS reason and ``path``, and leaves no file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            sf.write(str(tmp), data, sample_rate, subtype=subtype, format="WAV")
        except (sf.LibsndfileError, OSError) as exc:
            raise _audio_write_error(path, exc, 44 + int(np.asarray(data).nbytes)) from exc
    return path


def _audio_write_error(wav: Path, exc: BaseException, size: int) -> StorageError:
    """The user error of a failed ``sf.write`` of ``size`` bytes to (a temporary name of)
    ``wav``."""
    if isinstance(exc, OSError):
        return write_error(wav, exc)
    probed = probe_write(wav.parent, size)
    if probed is not None:
        return write_error(wav, probed)
    detail = " ".join(str(getattr(exc, "error_string", "") or exc).split())
    return write_error(wav, exc, reason=f"cannot write audio (libsndfile: {detail})")


def read_sidecar(wav: Path) -> dict[str, Any]:
    """Read and check the sidecar of a generated WAV, with a one-line error if it is unusable."""
    wav = Path(wav)
    if not wav.is_file():
        raise AudioFileError(f"{wav} does not exist; give the path of a WAV that soundctm wrote")
    side = sidecar_path(wav)
    if not side.is_file():
        raise AudioFileError(
            f"{wav} has no sidecar {side.name}, so it cannot be refined; refine works on files "
            "written by `soundctm sample` (keep the .json beside the .wav)"
        )
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AudioFileError(f"sidecar {side} is not valid JSON ({exc}); it is unusable") from exc
    needed = {
        name
        for name, field in SampleParams.__dataclass_fields__.items()
        if field.default is dataclasses.MISSING
    }
    if not isinstance(record, dict) or not needed <= set(record):
        missing = sorted(needed - set(record if isinstance(record, dict) else {}))
        raise AudioFileError(
            f"sidecar {side} lacks {', '.join(missing)}; it was not written by soundctm sample"
        )
    return record


def params_from_record(record: dict[str, Any]) -> SampleParams:
    """The :class:`SampleParams` stored in a sidecar record."""
    try:
        return SampleParams(
            prompt=str(record["prompt"]),
            seed=int(record["seed"]),
            steps=int(record["steps"]),
            gamma=float(record["gamma"]),
            nu=float(record["nu"]),
            omega=float(record["omega"]),
            seconds=float(record["seconds"]),
            solver=str(record["solver"]),
            negative_prompt=_optional_text(record.get("negative_prompt")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AudioFileError(f"sidecar has a bad value ({exc}); it is unusable") from exc


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"negative_prompt must be text, got {value!r}")
    return value


def variation_record(
    path: Path, strength: float, mask: Sequence[tuple[float, float]]
) -> dict[str, Any]:
    """What a variation's sidecar adds: the input (absolute path, SHA-256), strength, mask."""
    return {
        "vary_input": str(path.resolve()),
        "vary_input_sha256": sha256_file(path),
        "strength": float(strength),
        "mask": [[a, b] for a, b in mask],
    }


def variation_source(record: dict[str, Any], file: Path) -> tuple[Path, dict[str, Any]]:
    """The input file of a variation's sidecar and what its refinement's sidecar repeats
    (input, SHA-256, strength, mask), after checking that the input is unchanged."""
    source = Path(str(record.get("vary_input") or ""))
    if not source.is_file():
        raise AudioFileError(
            f"{file.name} is a variation of {source}, which is gone; restore it to refine"
        )
    if sha256_file(source) != record.get("vary_input_sha256"):
        raise AudioFileError(
            f"{source} has changed since {file.name} was made from it, so the refined sound "
            "would differ; restore the original input to refine"
        )
    try:
        mask = [(float(a), float(b)) for a, b in record.get("mask") or []]
        strength = float(record["strength"])
    except (TypeError, ValueError) as exc:
        raise AudioFileError(
            f"the sidecar of {file.name} has a bad strength or mask ({exc})"
        ) from exc
    return source, variation_record(source, strength, mask) | {
        "vary_input_sha256": record["vary_input_sha256"]
    }
