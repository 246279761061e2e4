"""What the CLI prints: rich tables for people, ``--json`` for scripts, and the one error mapping.

Every command ends in :func:`emit` (or :func:`emit_table`), and every ModelportError that escapes a
command is turned into a red one-line message on stderr and an exit code by :func:`exit_code`, in
``cli/app.py::main``: never a traceback for an error the server or the user caused.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelport import errors

if TYPE_CHECKING:
    from modelport.client import Client

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_GENERIC = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5

EXIT_CODES: tuple[tuple[type[errors.ModelportError], int], ...] = (
    (errors.BadRequest, EXIT_USAGE),
    (errors.ValidationFailed, EXIT_USAGE),
    (errors.PayloadTooLarge, EXIT_USAGE),
    (errors.UnsupportedMediaType, EXIT_USAGE),
    (errors.Unauthenticated, EXIT_AUTH),
    (errors.PermissionDenied, EXIT_AUTH),
    (errors.NotFound, EXIT_NOT_FOUND),
    (errors.Conflict, EXIT_CONFLICT),
)


def exit_code(exc: errors.ModelportError) -> int:
    """1 generic, 2 usage or bad request, 3 auth (401/403), 4 not found, 5 conflict."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_GENERIC


def fail(message: str) -> None:
    """Print one red line on stderr (markup in ``message`` is shown literally)."""
    one_line = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(one_line)}", soft_wrap=True)


def report(exc: errors.ModelportError) -> int:
    """Print a ModelportError as one line and return its exit code."""
    message = exc.message or exc.code
    request_id = exc.details.get("request_id")
    if request_id:  # a server-side failure: the id finds the log line
        message += f" (request id {request_id})"
    fail(message)
    return exit_code(exc)


def group(help_text: str) -> typer.Typer:
    """A command group with the settings every group shares (help rendered as Markdown, no locals)."""
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode="markdown",
        pretty_exceptions_show_locals=False,  # locals would include API keys
    )


@dataclass(frozen=True, slots=True)
class CliState:
    """Global options from the root callback, passed to commands through ``ctx.obj``."""

    url: str | None
    key: str | None
    json: bool


def state(ctx: typer.Context) -> CliState:
    """The root options; commands call this instead of reading ``ctx.obj`` themselves."""
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, CliState):
        obj = CliState(url=None, key=None, json=False)
    return obj


def client(ctx: typer.Context) -> Client:
    """An SDK Client for the root ``--url``/``--key`` (imported here so ``--help`` stays fast)."""
    from modelport.client import Client

    opts = state(ctx)
    try:
        return Client(opts.url, opts.key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url / MODELPORT_URL") from None


def to_json(data: Any) -> str:
    return orjson.dumps(
        data,
        option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
    ).decode()


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def timestamp(value: datetime | str) -> str:
    """``2026-01-31 12:00:00Z``: UTC to the second; the space lets a narrow column wrap cleanly."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    if moment.tzinfo is None:
        return moment.isoformat(sep=" ", timespec="seconds")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + "Z"


def _short(text: str) -> str:
    return text if len(text) <= 24 else text[:12] + "…"


def cell(value: Any) -> str:
    """A short, readable text for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime) or (isinstance(value, str) and _TIMESTAMP.match(value)):
        return timestamp(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):  # e.g. audit details: long hashes shortened like git does
        return ", ".join(f"{k}={_short(cell(v))}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    return str(value)


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], title: str | None = None) -> Table:
    out = Table(title=title, header_style="bold", title_justify="left")
    for column in columns:
        out.add_column(column.replace("_", " "), overflow="fold")
    for row in rows:
        out.add_row(*(escape(cell(row.get(c))) for c in columns))
    return out


def record(data: Mapping[str, Any], title: str | None = None) -> Table:
    """A two-column key/value table for one object; nested objects print as compact JSON."""
    out = Table(title=title, show_header=False, title_justify="left")
    out.add_column("field", style="bold")
    out.add_column("value", overflow="fold")
    for key, value in data.items():
        nested = isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values())
        out.add_row(escape(str(key)), escape(pretty(value) if nested else cell(value)))
    return out


def pretty(value: Any, indent: str = "") -> str:
    """Indented JSON-like text for people: null fields dropped, lists of plain values on one line."""
    inner = indent + "  "
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if v is not None]
        if not items:
            return "{}"
        body = ",\n".join(f"{inner}{to_json(str(k))}: {pretty(v, inner)}" for k, v in items)
        return "{\n" + body + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(inner + pretty(v, inner) for v in value) + "\n" + indent + "]"
    if isinstance(value, list):
        return "[" + ", ".join(pretty(v) for v in value) + "]"
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def emit(ctx: typer.Context, data: Any, render: Callable[[Any], Any] | None = None) -> None:
    """Print ``data``: as JSON with ``--json``, else through ``render`` (default: a record table)."""
    if state(ctx).json:
        sys.stdout.write(to_json(data) + "\n")
        return
    if render is not None:
        shown = render(data)
        if shown is not None:
            console.print(shown)
    elif isinstance(data, Mapping):
        console.print(record(data))
    else:
        console.print(escape(cell(data)))


def emit_table(
    ctx: typer.Context,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    empty: str,
) -> None:
    """Print a list: JSON with ``--json``, a table otherwise, or ``empty`` when there is nothing."""
    if state(ctx).json:
        sys.stdout.write(to_json(rows) + "\n")
    elif not rows:
        console.print(empty)
    else:
        console.print(table(rows, columns))


def done(ctx: typer.Context, message: str, data: Any = None) -> None:
    """Confirm a write: the answer as JSON with ``--json``, else one green line."""
    if state(ctx).json:
        sys.stdout.write(to_json(data if data is not None else {"ok": True}) + "\n")
    else:
        console.print(f"[green]✓[/] {escape(message)}")
