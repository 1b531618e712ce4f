"""The studio's HTTP API (FastAPI) and its page: ``create_app(studio)``.

Every route is under ``/api``; the page (``/``, files in ``soundctm/studio/static``, plain
HTML + JavaScript with no build step) uses nothing else. The schema is at ``/openapi.json``.
Errors are ``{"error": "one line"}`` with a status code: 400 a bad value, 404 no such take /
job / file, 409 a take made by another model, 413 an upload over the limit, 415 an upload
that is not audio, 422 a malformed body, 429 the queue is full, 501 a feature this build lacks.
docs/studio.md documents each route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from soundctm._version import __version__
from soundctm.errors import AudioFileError, CheckpointError, SoundCTMError
from soundctm.studio.jobs import QueueFullError
from soundctm.studio.schemas import GenerateRequest, RefineRequest, VaryRequest
from soundctm.studio.service import (
    NotAudioError,
    NotAvailableError,
    NotFoundError,
    Studio,
    UploadTooLargeError,
)
from soundctm.studio.takes import safe_file

STATIC = Path(__file__).resolve().parent / "static"
#: The longest a request may wait for a job (``?wait=S``), seconds.
MAX_WAIT = 30.0

_STATUS: list[tuple[type[SoundCTMError], int]] = [
    (NotFoundError, 404),
    (UploadTooLargeError, 413),
    (NotAudioError, 415),
    (QueueFullError, 429),
    (NotAvailableError, 501),
    (CheckpointError, 409),
    (AudioFileError, 400),
]

Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT,
        description="Seconds to wait for the job to finish before answering (0: answer at once).",
    ),
]


def error(status: int, message: str) -> JSONResponse:
    """The one error shape of the API."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def status_of(exc: SoundCTMError) -> int:
    """The HTTP status of a user error."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "malformed request"


def create_app(studio: Studio) -> FastAPI:
    """The FastAPI application of ``studio`` (its page, API and OpenAPI schema)."""
    app = FastAPI(
        title="soundctm studio",
        version=__version__,
        description=(
            "Generate, refine and vary sounds with a loaded SoundCTM model. Jobs run one at a "
            "time; POST answers 202 with the job (or 200 with the finished job when `wait` "
            "covers it); poll GET /api/jobs/{id}?wait=S. Takes are the WAV + JSON sidecar "
            "files in the out folder."
        ),
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: the page stays offline
        redoc_url=None,
    )
    app.state.studio = studio

    @app.exception_handler(SoundCTMError)
    async def _user_error(_: Request, exc: SoundCTMError) -> JSONResponse:
        return error(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_message(exc))

    def job_response(job_id: str, wait: float) -> JSONResponse:
        record = studio.jobs.wait(job_id, wait) if wait > 0 else None
        if record is None:
            job = studio.jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}")
            record = studio.jobs.view(job)
        done = record["status"] in ("done", "failed")
        return JSONResponse(record, status_code=200 if done else 202)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info", tags=["model"])
    def info() -> dict[str, Any]:
        """The model, its default settings, this server's limits and the optional features."""
        return studio.info()

    @app.post("/api/generate", tags=["jobs"], status_code=202)
    def generate(req: GenerateRequest, wait: Wait = 0.0) -> JSONResponse:
        """Queue `n` takes of `prompt` (take i from seed `seed + i`, random seed if absent)."""
        return job_response(studio.submit_generate(req).id, wait)

    @app.post("/api/refine", tags=["jobs"], status_code=202)
    def refine(req: RefineRequest, wait: Wait = 0.0) -> JSONResponse:
        """Queue a refine: the take's prompt and seed again at `steps` steps (gamma 0: the
        same content, cleaner)."""
        return job_response(studio.submit_refine(req).id, wait)

    @app.post("/api/vary", tags=["jobs"], status_code=202)
    def vary(req: VaryRequest, wait: Wait = 0.0) -> JSONResponse:
        """Queue `n` variations of a take or an upload at `strength` (0 keeps it, 1 ignores
        it)."""
        return job_response(studio.submit_vary(req).id, wait)

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str, wait: Wait = 0.0, after: int | None = None) -> JSONResponse:
        """A job: status (queued, running, done, failed), position in the queue, progress, the
        ids of the takes it wrote, or its error. With `wait`, answers when the job finishes or
        (given `after`) its `version` passes `after`: 200 when finished, else 202."""
        if wait > 0:
            record = studio.jobs.wait(job_id, wait, after)
            if record is None:
                raise NotFoundError(f"no job {job_id!r}")
            done = record["status"] in ("done", "failed")
            return JSONResponse(record, status_code=200 if done else 202)
        return job_response(job_id, 0.0)

    @app.get("/api/queue", tags=["jobs"])
    def queue() -> dict[str, Any]:
        """The running job, the waiting jobs in order and the last finished ones."""
        return studio.jobs.snapshot()

    @app.get("/api/takes", tags=["takes"])
    def takes(
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """The takes in the out folder, newest first (read from the sidecars)."""
        found = studio.takes.all()
        return {
            "total": len(found),
            "takes": [studio.take_view(t) for t in found[offset : offset + limit]],
        }

    @app.get("/api/takes/{take_id}", tags=["takes"])
    def take(take_id: str) -> dict[str, Any]:
        """One take, with its sidecar under `record`."""
        return studio.take_view(studio.take(take_id))

    @app.get(
        "/api/takes/{take_id}/spectrogram.png",
        tags=["takes"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def spectrogram(take_id: str) -> Response:
        """The take's spectrogram picture (0 to -90 dBFS, low frequencies at the bottom)."""
        return Response(
            studio.picture(take_id),
            media_type="image/png",
            headers={"Cache-Control": "max-age=3600"},
        )

    @app.get(
        "/api/files/{path:path}",
        tags=["takes"],
        response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}, "application/json": {}}}},
    )
    def files(path: str) -> FileResponse:
        """A file of the out folder (audio, sidecar JSON or PNG), never anything outside it."""
        found = safe_file(studio.out_dir, path)
        if found is None:
            raise NotFoundError(f"no file {path!r} in the out folder")
        return FileResponse(found)

    @app.post("/api/uploads", tags=["takes"], status_code=201)
    async def upload(request: Request, file: UploadFile) -> dict[str, Any]:
        """Upload an audio file to vary (WAV, FLAC, OGG or MP3, within the size and length
        limits); it is decoded before it is kept, or refused."""
        limit = studio.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise UploadTooLargeError(
                f"the upload is {declared} bytes; this studio takes files of at most {limit}"
            )
        data = await file.read(limit + 1)
        return await run_in_threadpool(studio.save_upload, data, file.filename)

    return app


__all__ = ["MAX_WAIT", "create_app", "error", "status_of"]
