"""``modelport worker``: run jobs from the server's queue in this process, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from modelport.cli.serve import LOG_LEVELS, build_settings, configure_logging


def worker(
    home: Annotated[
        Path | None,
        typer.Option(help="Data home shared with the server [default: ./modelport-data or $MODELPORT_HOME]."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="The server's database, e.g. postgresql+psycopg://... [default: SQLite in home]."),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(LOG_LEVELS)} [default: info]."),
    ] = None,
    exit_with_parent: Annotated[
        int | None,
        typer.Option(hidden=True, help="Stop when the process with this id (the server) is gone."),
    ] = None,
) -> None:
    """Run a job worker against the same database and home as the server.

    It claims queued jobs one at a time (training runs, sweeps) and heartbeats the one it runs. A stop
    signal checkpoints the running job and puts it back in the queue; a worker killed outright is
    noticed by the others after `job_heartbeat_timeout_s`, and its job resumes on another worker.
    """
    from modelport.jobs.worker import SECRET_ENV, Worker, warm_up

    for name in SECRET_ENV:  # jobs run code from specs: they never see API keys
        os.environ.pop(name, None)
    settings = build_settings(None, None, home, database_url, False, log_level and log_level.lower())
    if settings.log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    configure_logging(settings.log_level)
    settings.home.mkdir(parents=True, exist_ok=True)
    runner = Worker(settings.model_copy(update={"admin_key": None}), parent_pid=exit_with_parent)
    runner.db.migrate()

    def _stop(signum: int, frame: FrameType | None) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    warm_up()
    try:
        runner.run_forever()
    finally:
        runner.close()
