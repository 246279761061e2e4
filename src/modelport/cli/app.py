"""The ``modelport`` command: the root Typer app, its global options, and the one error exit.

Remote commands talk to a server through the SDK (``modelport.client``), exactly as a user's script
would; ``serve`` runs the server itself. ``main`` is the only place that turns a ModelportError into
a red line and an exit code (see ``cli/output.py::exit_code``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelport import __version__
from modelport.cli import (
    aliases,
    audit,
    datasets,
    doctor,
    jobs,
    keys,
    models,
    optimize,
    perms,
    predict,
    serve,
    store,
    train,
    upload,
    versions,
    worker,
)
from modelport.cli.output import CliState, fail, report
from modelport.errors import ModelportError

app = typer.Typer(
    name="modelport",
    help="Modelport: a self-hosted model-serving platform (server, registry and predictions).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals would include API keys
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelport {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(envvar="MODELPORT_URL", help="Server URL [default: http://127.0.0.1:8000]."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="MODELPORT_KEY",
            help="API key (better: set MODELPORT_KEY).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Global options apply to every command: modelport --url URL --json models list."""
    ctx.obj = CliState(url=url, key=key, json=json_output)


app.command("serve")(serve.serve)
app.command("upload")(upload.upload)
app.command("predict")(predict.predict)
app.command("audit")(audit.audit)
app.command("whoami")(keys.whoami)
app.add_typer(models.app, name="models")
app.add_typer(versions.app, name="versions")
app.add_typer(aliases.app, name="alias")
app.add_typer(keys.app, name="keys")
app.add_typer(perms.app, name="perms")
app.command("train")(train.train)
app.command("sweep")(train.sweep)
app.command("optimize")(optimize.optimize)
app.command("compare")(optimize.compare)
app.command("worker")(worker.worker)
app.add_typer(jobs.app, name="jobs")
app.add_typer(datasets.app, name="datasets")
app.command("doctor")(doctor.doctor)
app.add_typer(store.app, name="store")


def main() -> None:
    """Entry point of the ``modelport`` script: run the app; errors become one line and an exit code."""
    try:
        app(prog_name="modelport")
    except ModelportError as exc:
        raise SystemExit(report(exc)) from None
    except OSError as exc:  # a local file that cannot be read or written
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        fail("interrupted")
        raise SystemExit(130) from None
