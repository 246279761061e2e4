"""``modelport audit``: the append-only record of who changed what (admins)."""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli.output import client, emit_table

AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "details", "client")


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many records.")] = 50,
    actor: Annotated[str | None, typer.Option(help="Only this principal's actions.")] = None,
    action: Annotated[
        str | None,
        typer.Option(help="Only actions starting with this, e.g. key. or model.create."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="Only targets starting with this, e.g. a model name."),
    ] = None,
    before_id: Annotated[int | None, typer.Option(min=1, help="Page back: records older than this id.")] = None,
) -> None:
    """Show audit records, newest first (admins)."""
    with client(ctx) as mp:
        items = mp.audit(limit=limit, actor=actor, action=action, target=target, before_id=before_id)
    emit_table(ctx, items, AUDIT_COLUMNS, "no audit records")
