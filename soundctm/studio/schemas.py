"""The studio API's request bodies (pydantic; they make the OpenAPI schema).

Static ranges live here (gamma in [0, 1], a seed within 63 bits, ...); the limits a server
sets (prompt length, takes per request, steps, seconds, upload size: :class:`Limits`) are
checked by :class:`~soundctm.studio.service.Studio`, which names the limit in its error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from soundctm.engine.specs import MAX_SEED

#: The level modes of ``--normalize`` (soundctm.engine.levels.MODES) and the audio formats.
Normalize = Literal["peak", "loudness", "none"]
AudioFormat = Literal["wav", "flac", "ogg", "mp3"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a studio server (``/api/info`` reports them)."""

    max_prompt_chars: int = 500
    max_takes: int = 16
    max_steps: int = 64
    #: ``None``: the model's ``max_seconds``.
    max_seconds: float | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_seconds: float = 60.0
    max_queued: int = 8

    def record(self) -> dict[str, Any]:
        return asdict(self)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Body):
    """Sampling settings; a missing one takes the model's default (``/api/info``)."""

    steps: int | None = Field(None, ge=1, description="Sampling steps (1 for a CTM student).")
    gamma: float | None = Field(
        None, ge=0, le=1, description="CTM gamma: 0 keeps content, 1 is CM multistep."
    )
    nu: float | None = Field(None, ge=0, description="Guidance on the student's jumps (1 = off).")
    omega: float | None = Field(None, ge=0, description="The student's guidance input.")
    seconds: float | None = Field(None, gt=0, description="Clip length in seconds.")
    normalize: Normalize | None = Field(
        None, description="Output levels: peak (default), loudness or none."
    )
    format: AudioFormat | None = Field(None, description="Audio file format (default wav).")
    negative_prompt: str | None = Field(
        None, description="Replaces the empty prompt as the unconditional branch of guidance."
    )


class GenerateRequest(Sampling):
    """``POST /api/generate``: ``n`` takes of ``prompt``, take i from seed ``seed + i``."""

    prompt: str = Field(..., description="What the sound should be.")
    n: int = Field(4, ge=1, description="How many takes.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the first take.")


class RefineRequest(_Body):
    """``POST /api/refine``: re-run take ``take`` from its own seed with ``steps`` steps."""

    take: str = Field(..., description="The id of the take to refine.")
    steps: int = Field(16, ge=1, description="Steps of the refined take.")
    gamma: float = Field(0.0, ge=0, le=1, description="0 keeps the content exactly.")
    normalize: Normalize | None = Field(None, description="Output levels (default: the take's).")
    format: AudioFormat | None = Field(None, description="Audio format (default: the take's).")


class VaryRequest(Sampling):
    """``POST /api/vary``: ``n`` variations of a take or of an uploaded file."""

    take: str | None = Field(None, description="Vary this take (or give `upload`).")
    upload: str | None = Field(None, description="Vary this uploaded file (POST /api/uploads).")
    prompt: str | None = Field(
        None, description="Prompt of the variations (default: the take's prompt)."
    )
    strength: float = Field(0.5, ge=0, le=1, description="0 keeps the input, 1 ignores it.")
    mask: list[tuple[float, float]] = Field(
        default_factory=list,
        description="Spans [start, end] in seconds to regenerate, the rest kept (inpainting).",
    )
    n: int = Field(4, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


__all__ = ["GenerateRequest", "Limits", "Normalize", "RefineRequest", "Sampling", "VaryRequest"]
