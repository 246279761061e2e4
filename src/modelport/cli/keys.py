"""``modelport keys`` and ``modelport whoami``: API keys (admins) and who the current key is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from modelport.cli.output import (
    client,
    console,
    done,
    emit,
    emit_table,
    group,
    record,
    state,
)

app = group("Create, list and revoke API keys (admins).")

KEY_COLUMNS = ("id", "name", "role", "prefix", "created_at", "expires_at")


@app.command("create")
def create_key(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(help="Principal the key acts as (several keys may share one)."),
    ],
    role: Annotated[str, typer.Option(help="member, or admin (full access).")] = "member",
    expires_in_days: Annotated[
        float | None,
        typer.Option(min=0.001, help="Expire the key after this many days."),
    ] = None,
) -> None:
    """Create an API key. The key is printed once: store it now, the server keeps only its hash."""
    if role not in ("member", "admin"):
        raise typer.BadParameter("use member or admin", param_hint="--role")
    expires_at = None
    if expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
    with client(ctx) as mp:
        created = mp.create_key(name, role=role, expires_at=expires_at)
    if state(ctx).json:
        emit(ctx, created)
        return
    console.print(record({k: v for k, v in created.items() if k != "key"}, title="API key"))
    typer.echo(f"API key (shown once, store it now): {created['key']}")  # plain: never wrapped


@app.command("list")
def list_keys(
    ctx: typer.Context,
    include_revoked: Annotated[bool, typer.Option("--include-revoked", help="Show revoked keys too.")] = False,
) -> None:
    """List API keys: ids, principals, roles and prefixes (never the keys themselves)."""
    with client(ctx) as mp:
        items = mp.list_keys(include_revoked=include_revoked)
    columns = (*KEY_COLUMNS, "revoked_at") if include_revoked else KEY_COLUMNS
    emit_table(ctx, items, columns, "no keys")


@app.command("revoke")
def revoke_key(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="Key id from `modelport keys list` (key_...).")],
) -> None:
    """Revoke an API key; every server refuses it within about a second."""
    with client(ctx) as mp:
        info = mp.revoke_key(key_id)
    done(ctx, f"revoked {key_id} ({info.get('name')})", info)


def whoami(ctx: typer.Context) -> None:
    """Show the principal and role of the API key in use (checks that URL and key work)."""
    with client(ctx) as mp:
        me = mp.whoami()
    emit(ctx, {"url": mp.url, **me}, lambda m: record(m, title="you are"))
