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
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
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
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if no_auth:
        overrides["auth"] = False
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        fail(f"invalid settings (flags or MODELPORT_* variables): {problems}")
        raise typer.Exit(EXIT_USAGE) from None
    problem = _tls_problem(settings)
    if problem:
        fail(problem)
        raise typer.Exit(EXIT_USAGE)
    return settings


def _tls_problem(settings: Settings) -> str | None:
    cert, key = settings.tls_cert, settings.tls_key
    if (cert is None) != (key is None):
        return "TLS needs both --tls-cert and --tls-key (MODELPORT_TLS_CERT, MODELPORT_TLS_KEY)"
    for path in (cert, key):
        if path is not None and not path.is_file():
            return f"TLS file not found: {path}"
    return None


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
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="PEM certificate (chain): serve HTTPS; needs --tls-key [default: $MODELPORT_TLS_CERT]."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="PEM private key of --tls-cert [default: $MODELPORT_TLS_KEY]."),
    ] = None,
) -> None:
    """Run the Modelport server until Ctrl-C or SIGTERM.

    The first start creates the database and prints a one-time admin API key (unless
    MODELPORT_ADMIN_KEY gives one). A stop signal lets requests in flight finish, then exits 0.
    """
    settings = build_settings(
        host,
        port,
        home,
        database_url,
        no_auth,
        log_level and log_level.lower(),
        job_workers,
        workers,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    if settings.log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    configure_logging(settings.log_level)
    run_server(settings)


def _warn_if_public(settings: Settings) -> None:
    """On every interface, say which Host names are answered (the rest get 400) and whether TLS is on."""
    if settings.host not in ("0.0.0.0", "::"):
        return
    if "*" not in settings.allowed_hosts:
        names = ", ".join(settings.allowed_hosts)
        typer.secho(
            f"note: listening on all interfaces; requests by IP address and for these names are answered: {names}. "
            "List the DNS names clients use (others get 400), e.g. "
            """MODELPORT_ALLOWED_HOSTS='["models.example.com"]'""",
            fg="yellow",
            err=True,
        )
    if settings.tls_cert is None:
        typer.secho(
            "note: plain HTTP on all interfaces; keys travel in clear. Use --tls-cert/--tls-key or a TLS proxy.",
            fg="yellow",
            err=True,
        )


def run_server(settings: Settings) -> None:
    """Bootstrap the data home, print a new admin key once, then serve until a stop signal."""

    from modelport.api.app import bootstrap, create_app
    from modelport.cli.heap import keep_heap_pages

    keep_heap_pages()  # (each process of --workers sets its own)
    admin_key = bootstrap(settings)
    if admin_key:
        typer.echo(f"Admin API key (shown once, store it now): {admin_key}")
    if not settings.auth:
        typer.secho("warning: authentication is OFF; every caller is an admin", fg="yellow", err=True)
    _warn_if_public(settings)
    _install_signal_handlers()
    from modelport.jobs.worker import WorkerProcesses

    workers = WorkerProcesses(settings, settings.job_workers)
    workers.start()  # jobs never run in the API's process
    try:
        if settings.workers > 1:
            from modelport.cli import serve_workers

            serve_workers.run(settings, settings.workers)
        else:
            from modelport.cli.server import AnnouncingServer, uvicorn_config

            AnnouncingServer(uvicorn_config(settings, create_app(settings))).run()
    finally:
        workers.stop()
