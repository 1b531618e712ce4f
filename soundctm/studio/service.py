"""The studio without HTTP: one loaded model, an out folder, a job queue and the three actions.

:class:`Studio` checks a request against its :class:`~soundctm.studio.schemas.Limits` and the
model (:meth:`~soundctm.engine.sampler.SamplingAPI.resolve`) when it is submitted, so a bad
value is refused at once, then queues the work (:class:`~soundctm.studio.jobs.JobQueue`: one
job at a time on the model). A job writes each take with the library's writer (WAV + JSON
sidecar, atomically, never overwriting: :func:`~soundctm.engine.audio_io.save_sample`), so the
studio's takes are the same files ``soundctm sample`` and ``refine`` write, and renders its
spectrogram picture while the files are fresh. :mod:`soundctm.studio.api` puts this behind
FastAPI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from soundctm._version import __version__
from soundctm.engine.audio import read_audio
from soundctm.engine.audio_io import (
    FORMATS,
    free_stem,
    params_from_record,
    save_sample,
    slug,
    variation_record,
    variation_source,
)
from soundctm.engine.files import atomic_path, ensure_writable_dir
from soundctm.engine.levels import MODES
from soundctm.errors import AudioFileError, CheckpointError, InvalidArgumentError, SoundCTMError
from soundctm.events import Event
from soundctm.studio.jobs import Job, JobQueue
from soundctm.studio.schemas import GenerateRequest, Limits, RefineRequest, Sampling, VaryRequest
from soundctm.studio.spectrogram import spectrogram_png
from soundctm.studio.takes import UPLOADS, Take, TakeStore

#: Steps of a refine unless the request says otherwise (``soundctm refine``'s default).
REFINE_STEPS = 16
#: Takes of a generate or vary request unless it says otherwise.
DEFAULT_TAKES = 4
#: Upload formats kept (soundfile's format name -> suffix).
UPLOAD_FORMATS = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}
_UPLOAD_ID = re.compile(r"^[0-9a-f]{16}$")
#: Spectrogram pictures kept in memory.
PICTURE_CACHE = 512


@dataclass(frozen=True)
class Level:
    """How a job writes its takes: the level mode (:mod:`soundctm.engine.levels`) and the
    audio format (:data:`~soundctm.engine.audio_io.FORMATS`)."""

    normalize: str
    format: str


class NotFoundError(SoundCTMError):
    """No take, upload, job or file of that name."""


class NotAvailableError(SoundCTMError):
    """The request needs a feature this build of soundctm does not have."""


class UploadTooLargeError(SoundCTMError):
    """An upload is over the server's size limit."""


class NotAudioError(AudioFileError):
    """An upload that cannot be decoded as audio."""


class Studio:
    """A loaded pipeline serving one out folder (see the module docstring)."""

    def __init__(
        self,
        pipe: Any,
        model_dir: Path | None,
        out_dir: Path,
        *,
        limits: Limits | None = None,
        hub: dict[str, Any] | None = None,
    ) -> None:
        from soundctm.engine.checkpoint import card_sha256

        self.pipe = pipe
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.out_dir = ensure_writable_dir(Path(out_dir)).resolve()
        self.limits = limits or Limits()
        self.hub = hub
        has_card = self.model_dir is not None and (self.model_dir / "model.json").is_file()
        self.card_hash = card_sha256(self.model_dir) if has_card else None
        self.takes = TakeStore(self.out_dir)
        self.jobs = JobQueue(self.limits.max_queued)
        self._pictures: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._pictures_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str | Path | None,
        out_dir: Path,
        *,
        device: str = "auto",
        dtype: str = "float32",
        limits: Limits | None = None,
    ) -> Studio:
        """Load ``model`` (a folder, an ``hf:`` id or ``None`` for the packaged default) once."""
        from soundctm.cli.models import load_model, resolve_model_source

        model_dir, hub = resolve_model_source(model)
        pipe = load_model(model_dir, device, dtype)
        return cls(pipe, model_dir, out_dir, limits=limits, hub=hub)

    def close(self) -> None:
        """Stop the job queue (the running job finishes)."""
        self.jobs.close()

    # ------------------------------------------------------------------ what it offers
    @property
    def max_seconds(self) -> float:
        card_max = float(self.pipe.card.max_seconds)
        limit = self.limits.max_seconds
        return card_max if limit is None else min(card_max, limit)

    def features(self) -> dict[str, Any]:
        """Which optional actions this build offers."""
        vary = getattr(self.pipe, "vary", None)
        return {
            "vary": callable(vary),
            "normalize": list(MODES),
            "formats": list(FORMATS),
            "negative_prompt": True,
            "mask": callable(vary),
        }

    def info(self) -> dict[str, Any]:
        """The model, its defaults, the limits and the features (``GET /api/info``)."""
        card = self.pipe.card
        d = card.defaults
        return {
            "soundctm_version": __version__,
            "model": {
                "name": self.model_dir.name if self.model_dir else None,
                "path": str(self.model_dir.resolve()) if self.model_dir else None,
                "hub": self.hub,
                "kind": card.kind,
                "sample_rate": int(card.sample_rate),
                "seconds": float(card.seconds),
                "max_seconds": self.max_seconds,
                "card_sha256": self.card_hash,
            },
            "defaults": {
                "steps": d.steps,
                "gamma": d.gamma,
                "nu": d.nu,
                "omega": d.omega,
                "solver": d.solver,
                "seconds": float(card.seconds),
                "takes": DEFAULT_TAKES,
                "refine_steps": REFINE_STEPS,
                "strength": 0.5,
                "normalize": MODES[0],
                "format": "wav",
            },
            "limits": {**self.limits.record(), "max_seconds": self.max_seconds},
            "features": self.features(),
            "out": str(self.out_dir),
        }

    def warm_up(self) -> None:
        """One generation of the default number of takes, so the first request does not pay
        torch's first-call costs for that batch shape."""
        seconds = min(float(self.pipe.card.seconds), self.max_seconds)
        self.pipe.generate(["warm up"] * DEFAULT_TAKES, seeds=range(DEFAULT_TAKES), seconds=seconds)

    # ------------------------------------------------------------------ checks
    def _check_prompt(self, text: str | None, what: str = "prompt") -> str:
        if text is None or not text.strip():
            raise InvalidArgumentError(f"{what} is empty; describe the sound, e.g. 'a dog barks'")
        limit = self.limits.max_prompt_chars
        if len(text) > limit:
            raise InvalidArgumentError(
                f"{what} is {len(text)} characters; this studio takes at most {limit}"
            )
        return text.strip()

    def _check_takes(self, n: int) -> int:
        if n > self.limits.max_takes:
            raise InvalidArgumentError(
                f"n is {n} takes; this studio makes at most {self.limits.max_takes} per request"
            )
        return n

    def _check_steps(self, steps: int | None) -> None:
        if steps is not None and steps > self.limits.max_steps:
            raise InvalidArgumentError(
                f"steps is {steps}; this studio runs at most {self.limits.max_steps} steps"
            )

    def _arguments(self, req: Sampling) -> dict[str, Any]:
        """The sampling arguments of ``req``, checked against the limits and the model."""
        self._check_steps(req.steps)
        if req.seconds is not None and req.seconds > self.max_seconds:
            raise InvalidArgumentError(
                f"seconds is {req.seconds:g}; this studio makes clips of at most "
                f"{self.max_seconds:g} s"
            )
        arguments: dict[str, Any] = {
            "steps": req.steps,
            "gamma": req.gamma,
            "nu": req.nu,
            "omega": req.omega,
            "seconds": req.seconds,
        }
        if req.negative_prompt is not None and req.negative_prompt.strip():
            arguments["negative_prompt"] = self._check_prompt(
                req.negative_prompt, "negative_prompt"
            )
        self.pipe.resolve(**arguments)  # the model's own checks (gamma vs solver, ...)
        return arguments

    def _seeds(self, seed: int | None, n: int) -> list[int]:
        base = seed if seed is not None else secrets.randbelow(2**31)
        return [base + i for i in range(n)]

    def take(self, take_id: str) -> Take:
        """The take ``take_id`` or a :class:`NotFoundError`."""
        take = self.takes.get(take_id)
        if take is None:
            raise NotFoundError(f"no take {take_id!r} in {self.out_dir}; list them at /api/takes")
        return take

    def _own_take(self, take_id: str, action: str) -> Take:
        take = self.take(take_id)
        made_by = take.record.get("model_card_sha256")
        if self.card_hash is not None and made_by not in (None, self.card_hash):
            raise CheckpointError(
                f"take {take_id!r} was made by another model ({take.record.get('model')}), so "
                f"this studio cannot {action} it faithfully; start the studio with --model for "
                "that model"
            )
        return take

    # ------------------------------------------------------------------ actions
    def submit_generate(self, req: GenerateRequest) -> Job:
        """Queue ``req.n`` takes of ``req.prompt`` (all checks first)."""
        prompt = self._check_prompt(req.prompt)
        n = self._check_takes(req.n)
        arguments = self._arguments(req)
        level = Level(req.normalize or MODES[0], req.format or "wav")
        seeds = self._seeds(req.seed, n)

        def work(callback: Callable[[Event], None]) -> list[str]:
            gen = self.pipe.generate([prompt] * n, seeds=seeds, callback=callback, **arguments)
            return self._write(gen, level, lambda prm: f"{slug(prm.prompt)}-{prm.seed}", callback)

        return self.jobs.submit("generate", f"{n} x {prompt}", work)

    def submit_refine(self, req: RefineRequest) -> Job:
        """Queue a refine of take ``req.take`` at ``req.steps`` steps from its own seed (a
        variation: from its own input, strength and mask too), with the take's level mode
        and format unless the request names others (as ``soundctm refine`` does)."""
        take = self._own_take(req.take, "refine")
        params = params_from_record(take.record)
        self._check_steps(req.steps)
        arguments = {**params.arguments(), "steps": req.steps, "gamma": req.gamma}
        self.pipe.resolve(**arguments)
        level = Level(
            req.normalize or str(take.record.get("normalize") or "none"),
            req.format or take.audio.suffix.lstrip(".").lower(),
        )
        variation = variation_source(take.record, take.audio) if "strength" in take.record else None
        extra = {"refined_from": str(take.audio.resolve()), "refined_from_steps": params.steps}

        def work(callback: Callable[[Event], None]) -> list[str]:
            if variation is None:
                gen = self.pipe.refine(params, steps=req.steps, gamma=req.gamma, callback=callback)
                more: dict[str, Any] = {}
            else:  # the same input, strength, mask and seed, more steps
                source, more = variation
                gen = self.pipe.vary(
                    read_audio(source, self.pipe.sample_rate),
                    self.pipe.sample_rate,
                    [params.prompt],
                    seeds=[params.seed],
                    strength=float(more["strength"]),
                    mask=[(float(a), float(b)) for a, b in more["mask"]],
                    batch_size=1,
                    callback=callback,
                    **arguments,
                )
            return self._write(
                gen,
                level,
                lambda prm: f"{take.id}.refined-{req.steps}",
                callback,
                extra={**more, **extra},
            )

        return self.jobs.submit("refine", f"{take.id} at {req.steps} steps", work)

    def submit_vary(self, req: VaryRequest) -> Job:
        """Queue ``req.n`` variations of a take or an upload at ``req.strength`` (with
        ``req.mask``: only those spans regenerated)."""
        if (req.take is None) == (req.upload is None):
            raise InvalidArgumentError("give exactly one of take and upload to vary")
        if not self.features()["vary"]:
            raise NotAvailableError(
                "vary is not available in this build of soundctm (its pipeline has no vary); "
                "update soundctm"
            )
        if req.take is not None:
            take = self.take(req.take)
            source, prompt, name = take.audio, req.prompt or take.record.get("prompt"), take.id
        else:
            source = self.upload_path(req.upload or "")
            prompt, name = req.prompt, f"upload-{req.upload}"
        prompt = self._check_prompt(prompt if isinstance(prompt, str) else None)
        n = self._check_takes(req.n)
        arguments = self._arguments(req)
        mask = [(float(a), float(b)) for a, b in req.mask]
        for a, b in mask:
            if not 0 <= a < b:
                raise InvalidArgumentError(f"mask span {a:g}:{b:g} needs 0 <= start < end")
        level = Level(req.normalize or MODES[0], req.format or "wav")
        seeds = self._seeds(req.seed, n)
        extra = variation_record(source, req.strength, mask)
        rate = int(self.pipe.sample_rate)
        audio = read_audio(source, rate)  # a broken input fails the request, not the job

        def work(callback: Callable[[Event], None]) -> list[str]:
            gen = self.pipe.vary(
                audio,
                rate,
                [prompt] * n,
                seeds=seeds,
                strength=req.strength,
                mask=mask,
                callback=callback,
                **arguments,
            )
            return self._write(
                gen,
                level,
                lambda prm: f"{slug(name, 20)}.vary-{slug(prm.prompt)}-{prm.seed}",
                callback,
                extra=extra,
            )

        return self.jobs.submit("vary", f"{n} x {prompt} from {name}", work)

    # ------------------------------------------------------------------ files
    def _write(
        self,
        gen: Any,
        level: Level,
        stem_of: Callable[[Any], str],
        callback: Callable[[Event], None],
        extra: dict[str, Any] | None = None,
    ) -> list[str]:
        """Write each row of a generation as a take (levelled, in the chosen format); the ids,
        in order. Level warnings (a silent take) go to ``callback`` and so to the job."""
        ids = []
        for audio, prm in zip(gen.audio, gen.params, strict=True):
            record_extra = dict(extra or {})
            if self.hub:
                record_extra["model_hub"] = self.hub
            path = free_stem(self.out_dir, stem_of(prm), level.format)
            save_sample(
                path,
                audio,
                prm,
                sample_rate=gen.sample_rate,
                model_path=self.model_dir,
                model_card_sha256=self.card_hash,
                extra=record_extra,
                normalize=level.normalize,
                callback=callback,
            )
            ids.append(path.stem)
            with contextlib.suppress(SoundCTMError, OSError, RuntimeError, ValueError):
                self.picture(path.stem)  # rendered while the file is in the page cache
        return ids

    def picture(self, take_id: str) -> bytes:
        """The spectrogram PNG of a take (cached by file, size and modification time)."""
        take = self.take(take_id)
        stat = take.audio.stat()
        key = (take.audio.name, stat.st_mtime_ns, stat.st_size)
        with self._pictures_lock:
            found = self._pictures.get(key)
            if found is not None:
                self._pictures.move_to_end(key)
                return found
        try:
            data, rate = sf.read(str(take.audio), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioFileError(f"cannot read {take.audio.name} ({exc})") from exc
        png = spectrogram_png(data.mean(axis=1), int(rate))
        with self._pictures_lock:
            self._pictures[key] = png
            while len(self._pictures) > PICTURE_CACHE:
                self._pictures.popitem(last=False)
        return png

    def take_view(self, take: Take) -> dict[str, Any]:
        """The public record of a take (``GET /api/takes``)."""
        r = take.record
        made_by = r.get("model_card_sha256")
        name = take.audio.name
        refined_from = self.takes.id_of(r.get("refined_from"))
        source = r.get("vary_input")
        varied_from = self.takes.id_of(source)
        kind = "refine" if r.get("refined_from") else "vary" if source else "sample"
        return {
            "id": take.id,
            "kind": kind,
            "prompt": r.get("prompt"),
            "seed": r.get("seed"),
            "steps": r.get("steps"),
            "gamma": r.get("gamma"),
            "nu": r.get("nu"),
            "omega": r.get("omega"),
            "seconds": r.get("seconds"),
            "solver": r.get("solver"),
            "sample_rate": r.get("sample_rate"),
            "created": r.get("created"),
            "refined_from": refined_from,
            "varied_from": varied_from,
            "vary_input": Path(str(source)).name if source else None,
            "strength": r.get("strength"),
            "mask": r.get("mask"),
            "normalize": r.get("normalize"),
            "gain_db": r.get("gain_db"),
            "negative_prompt": r.get("negative_prompt"),
            "same_model": self.card_hash is None or made_by in (None, self.card_hash),
            "audio": f"/api/files/{name}",
            "sidecar": f"/api/files/{take.id}.json",
            "spectrogram": f"/api/takes/{take.id}/spectrogram.png",
            "record": r,
        }

    def upload_path(self, upload_id: str) -> Path:
        """The stored file of upload ``upload_id`` or a :class:`NotFoundError`."""
        if _UPLOAD_ID.match(upload_id):
            for suffix in UPLOAD_FORMATS.values():
                path = self.out_dir / UPLOADS / f"{upload_id}{suffix}"
                if path.is_file():
                    return path
        raise NotFoundError(f"no upload {upload_id!r}; upload the file with POST /api/uploads")

    def save_upload(self, data: bytes, filename: str | None = None) -> dict[str, Any]:
        """Keep an uploaded file that decodes as audio (WAV, FLAC, OGG or MP3 within the
        limits) under ``uploads/`` by its content hash; refuse anything else."""
        limit = self.limits.max_upload_bytes
        if len(data) > limit:
            raise UploadTooLargeError(
                f"the upload is {len(data)} bytes; this studio takes files of at most {limit}"
            )
        if not data:
            raise NotAudioError("the upload is empty; send a WAV, FLAC, OGG or MP3 file")
        folder = ensure_writable_dir(self.out_dir / UPLOADS)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=folder)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            info = _decode_check(tmp, self.limits.max_upload_seconds)
            digest = hashlib.sha256(data).hexdigest()
            upload_id = digest[:16]
            final = folder / f"{upload_id}{UPLOAD_FORMATS[info['format']]}"
            if not final.exists():
                with atomic_path(final) as part:
                    os.replace(tmp, part)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return {
            "id": upload_id,
            "name": _display_name(filename),
            "file": f"{UPLOADS}/{final.name}",
            "url": f"/api/files/{UPLOADS}/{final.name}",
            "sha256": digest,
            "seconds": info["seconds"],
            "sample_rate": info["sample_rate"],
            "channels": info["channels"],
        }


def _decode_check(path: Path, max_seconds: float) -> dict[str, Any]:
    """Decode ``path`` completely; its format, length and rate, or a :class:`NotAudioError`."""
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise NotAudioError(
            f"the upload is not audio soundctm can decode ({reason}); send a WAV, FLAC, OGG "
            "or MP3 file"
        ) from exc
    if info.format not in UPLOAD_FORMATS:
        raise NotAudioError(f"the upload is {info.format} audio; send a WAV, FLAC, OGG or MP3 file")
    if data.shape[0] == 0:
        raise NotAudioError("the upload decodes to no samples; send a longer file")
    if not np.isfinite(data).all():
        raise NotAudioError("the upload contains samples that are not finite numbers")
    seconds = data.shape[0] / float(rate)
    if seconds > max_seconds:
        raise NotAudioError(
            f"the upload is {seconds:.1f} s long; this studio takes files of at most "
            f"{max_seconds:g} s"
        )
    return {
        "format": info.format,
        "seconds": seconds,
        "sample_rate": int(rate),
        "channels": int(data.shape[1]),
    }


def _display_name(filename: str | None) -> str | None:
    if not filename:
        return None
    name = Path(filename.replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", name)[:100] or None


__all__ = [
    "DEFAULT_TAKES",
    "REFINE_STEPS",
    "NotAudioError",
    "NotAvailableError",
    "NotFoundError",
    "Studio",
    "UploadTooLargeError",
]
