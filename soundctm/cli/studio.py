"""``soundctm studio``: serve the studio page and API (soundctm/studio) for one model."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Annotated

import typer

from soundctm.cli.common import err_console
from soundctm.cli.options import (
    Device,
    DtypeOption,
    config_option,
    model_option,
    out_option,
)
from soundctm.config import StudioSettings, load_settings
from soundctm.errors import InvalidArgumentError

Host = Annotated[
    str | None,
    typer.Option(
        "--host",
        help="Address to listen on (default: 127.0.0.1, this machine only; any other address "
        "lets other machines generate and read the out folder, with no password).",
        show_default=False,
    ),
]
Port = Annotated[
    int | None, typer.Option("--port", help="Port (default: 8765).", show_default=False)
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error saying why there is none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidArgumentError(
            f"--host {host!r} is not an address of this machine ({exc.strerror}); use 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InvalidArgumentError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
            "or stop the program using it"
        ) from None
    return sock


def studio(
    model: model_option() = None,  # type: ignore[valid-type]
    host: Host = None,
    port: Port = None,
    out: out_option("outputs", "Folder of the takes (read as the history, written to)") = None,  # type: ignore[valid-type]
    device: Device = None,
    dtype: DtypeOption = None,
    config: config_option("studio") = None,  # type: ignore[valid-type]
) -> None:
    """A local web page and JSON API: generate takes in one step, refine a chosen one, vary.

    The model is loaded once; jobs run one at a time. The page and the API (schema at
    /openapi.json) are served on 127.0.0.1:8765 unless --host/--port say otherwise. Ctrl-C
    stops it.
    """
    settings = load_settings(
        StudioSettings,
        config,
        model=model,
        host=host,
        port=port,
        out=out,
        device=device,
        dtype=dtype,
    )
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
        import uvicorn
    except ImportError as exc:
        raise InvalidArgumentError(
            f"soundctm studio needs fastapi, uvicorn and python-multipart ({exc.name} is "
            "missing); pip install fastapi uvicorn python-multipart"
        ) from None
    if not is_loopback(settings.host):
        typer.echo(
            f"warning: listening on {settings.host}: anyone who can reach this machine on port "
            f"{settings.port} can generate sounds and download the files in {settings.out}; "
            "there is no password",
            err=True,
        )
    sock = bind(settings.host, settings.port)
    try:
        from soundctm.studio.api import create_app
        from soundctm.studio.schemas import Limits
        from soundctm.studio.service import Studio

        limits = Limits(
            max_prompt_chars=settings.max_prompt_chars,
            max_takes=settings.max_takes,
            max_steps=settings.max_steps,
            max_upload_bytes=int(settings.max_upload_mb * 1024 * 1024),
            max_queued=settings.max_queued,
        )
        status = err_console.status("loading model", spinner="dots")
        with status if err_console.is_terminal else contextlib.nullcontext():
            service = Studio.load(
                settings.model,
                settings.out,
                device=settings.device,
                dtype=settings.dtype,
                limits=limits,
            )
            service.warm_up()
        shown = f"[{settings.host}]" if ":" in settings.host else settings.host
        err_console.print(
            f"soundctm studio: http://{shown}:{settings.port}/  (model {service.model_dir}, "
            f"takes in {service.out_dir}; API schema at /openapi.json; Ctrl-C stops)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        app = create_app(service)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,  # a page's open long poll must not hold up Ctrl-C
        )
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stops cleanly, then passes Ctrl-C on
            pass
        finally:
            service.close()
        err_console.print("soundctm studio stopped", highlight=False)
    finally:
        sock.close()
