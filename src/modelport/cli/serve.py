"""``modelport serve``: the API server in this process (uvicorn), stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelport.cli.output import EXIT_USAGE, fail

if TYPE_CHECKING:
    import socket

    from modelport.config import Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def build_settings(
    host: str | None,
    port: int | None,
    home: Path | None,
    database_url: str | None,
    no_auth: bool,
    log_level: str | None,
    job_workers: int | None = None,
    workers: int | None = None,
) -> Settings:
    """Settings from ``MODELPORT_*``, with every flag that was given taking precedence."""
    from pydantic import ValidationError

    from modelport.config import Settings

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "home": home,
        "database_url": database_url,
        "log_level": log_level,
        "job_workers": job_workers,
        "workers": workers,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if no_auth:
        overrides["auth"] = False
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings (flags or MODELPORT_* variables): {problems}")
        raise typer.Exit(EXIT_USAGE) from None


class _UvicornStyle(logging.Formatter):
    """``INFO:     modelport.x: message``, aligned with uvicorn's own lines on the same stream."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname}:".ljust(9)
        return super().format(record)


def configure_logging(level: str) -> None:
    """Send the ``modelport.*`` loggers to stderr at ``level`` (uvicorn configures its own)."""
    logger = logging.getLogger("modelport")
    logger.setLevel(logging.DEBUG if level == "trace" else level.upper())
    if not any(getattr(h, "modelport_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_UvicornStyle("%(levelprefix)s %(name)s: %(message)s"))
        handler.modelport_cli = True  # type: ignore[attr-defined]  # marks our handler, so a second call adds none
        logger.addHandler(handler)
    logger.propagate = False


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _install_signal_handlers() -> None:
    """Make a stop signal end the process with status 0.

    uvicorn captures SIGINT/SIGTERM while it serves, drains requests in flight, then re-raises the
    signal with the handler that was installed before it started. With Python's defaults that would
    kill the process (status -15) *after* a clean shutdown; this handler turns it into a normal exit.
    """
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, announcing the bound address (the real port when 0 was asked)."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                host, port = self.config.host, self.config.port
                if self.servers and self.servers[0].sockets:
                    port = self.servers[0].sockets[0].getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                typer.echo(f"Modelport listening on http://{shown}:{port}")

    return Server


def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Address to bind [default: 127.0.0.1 or $MODELPORT_HOST]."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on; 0 picks a free one [default: 8000]."),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(help="Data home: database, blobs, secrets [default: ./modelport-data]."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://... [default: SQLite in home]."),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Serve without API keys (everyone is admin)."),
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(LOG_LEVELS)} [default: info]."),
    ] = None,
    job_workers: Annotated[
        int | None,
        typer.Option(min=0, max=64, help="Job worker processes to run beside the API; 0: none [default: 1]."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="API processes sharing the port (each loads its own models) [default: 1]."),
    ] = None,
) -> None:
    """Run the Modelport server until Ctrl-C or SIGTERM.

    The first start creates the database and prints a one-time admin API key (unless
    MODELPORT_ADMIN_KEY gives one). A stop signal lets requests in flight finish, then exits 0.
    """
    settings = build_settings(
        host, port, home, database_url, no_auth, log_level and log_level.lower(), job_workers, workers
    )
    if settings.log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    configure_logging(settings.log_level)
    run_server(settings)


def _single_config(settings: Settings, app: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,  # audit records the peer address; X-Forwarded-For is not trusted
        timeout_graceful_shutdown=settings.graceful_timeout,
        lifespan="on",
    )


def run_server(settings: Settings) -> None:
    """Bootstrap the data home, print a new admin key once, then serve until a stop signal."""

    from modelport.api.app import bootstrap, create_app

    admin_key = bootstrap(settings)
    if admin_key:
        typer.echo(f"Admin API key (shown once, store it now): {admin_key}")
    if not settings.auth:
        typer.secho("warning: authentication is OFF; every caller is an admin", fg="yellow", err=True)
    _install_signal_handlers()
    from modelport.jobs.worker import WorkerProcesses

    workers = WorkerProcesses(settings, settings.job_workers)
    workers.start()  # jobs never run in the API's process
    try:
        if settings.workers > 1:
            from modelport.cli import serve_workers

            serve_workers.run(settings, settings.workers)
        else:
            _server_class()(_single_config(settings, create_app(settings))).run()
    finally:
        workers.stop()
