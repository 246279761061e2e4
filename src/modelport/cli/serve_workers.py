"""``modelport serve --workers N``: N API processes sharing one listening socket.

The parent binds the socket, bootstraps the home (migrations, admin key, temp clean-up) once, then
spawns N processes that each build their own app (their own model runtime and caches) and accept on the
shared socket; the kernel spreads connections between them. Settings travel to the children as the
validated Settings JSON, not through environment variables. A stop signal to the parent is passed to
every child, each of which drains its requests in flight (uvicorn's graceful shutdown), then the parent
exits 0. Caches are per process and live one second, so a revoked key or a moved alias is seen by every
process within a second. Rate limits hold for the server as a whole: the parent creates the table of
rate buckets under ``<home>/run/`` that every child maps (``auth/rate_limit.py``), and removes it at
the end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

import typer

from modelport.auth.rate_limit import create_table

if TYPE_CHECKING:
    from modelport.config import Settings


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _child(settings_json: str, sock: socket.socket) -> None:
    """One API process: its own app on the shared socket, until SIGTERM (then drain and exit)."""
    from modelport.api.app import create_app
    from modelport.cli.heap import keep_heap_pages
    from modelport.cli.serve import configure_logging
    from modelport.cli.server import Server, uvicorn_config
    from modelport.config import Settings

    keep_heap_pages()
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    Server(uvicorn_config(settings, create_app(settings), bind=False)).run(sockets=[sock])


def run(settings: Settings, count: int) -> None:
    """Serve with ``count`` API processes until SIGTERM/SIGINT; every child drains before the exit."""
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    table = create_table(settings.home / "run" / f"rate-limits-{port}")  # a restart on the port replaces it
    shared = settings.model_copy(update={"rate_limit_table": table}).model_dump_json()
    ctx = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = [
        ctx.Process(target=_child, args=(shared, sock), name=f"modelport-api-{i}") for i in range(count)
    ]
    for child in children:
        child.start()
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls_cert else "http"
    typer.echo(f"Modelport listening on {scheme}://{shown}:{port} ({count} worker processes)")

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                child.terminate()  # SIGTERM: uvicorn drains requests in flight
        # The children stop accepting on their copies of the socket; close ours too, so new
        # connections are refused at once instead of waiting in the backlog until every child exits.
        sock.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and any(child.is_alive() for child in children):
            for child in children:
                child.join(timeout=0.5)
    finally:
        stop(signal.SIGTERM, None)
        for child in children:
            child.join(timeout=settings.graceful_timeout + 5)
            if child.is_alive():
                child.kill()
        sock.close()
        with contextlib.suppress(OSError):
            table.unlink()
