"""``modelport keys`` and ``modelport whoami``: API keys (admins) and who the current key is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

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

app = group("Create, list, rotate and revoke API keys (admins; anyone may create a narrower key for themselves).")

KEY_COLUMNS = ("id", "name", "role", "prefix", "service_account", "scopes", "created_at", "expires_at")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


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
    scope_actions: Annotated[
        str | None,
        typer.Option(help="Only these actions, comma-separated: infer, read, write, admin (e.g. infer,read)."),
    ] = None,
    scope_models: Annotated[
        str | None,
        typer.Option(help="Only these models, comma-separated names or prefixes ending in * (e.g. 'team-a-*')."),
    ] = None,
    service_account: Annotated[
        bool, typer.Option("--service-account", help="Mark the key as a service account (CI, automation).")
    ] = False,
    rate_limit_rps: Annotated[
        float | None, typer.Option(min=0.001, help="Inference requests per second for this key.")
    ] = None,
    max_concurrent_jobs: Annotated[
        int | None, typer.Option(min=1, help="Queued plus running jobs allowed with this key.")
    ] = None,
) -> None:
    """Create an API key. The key is printed once: store it now, the server keeps only its hash.

    Admins create any key; anyone else only a key for themselves, no wider than the key in use.
    """
    if role not in ("member", "admin"):
        raise typer.BadParameter("use member or admin", param_hint="--role")
    expires_at = None
    if expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
    scopes = None
    if scope_actions is not None or scope_models is not None:
        scopes = {"actions": _csv(scope_actions), "models": _csv(scope_models)}
    with client(ctx) as mp:
        created = mp.create_key(
            name,
            role=role,
            expires_at=expires_at,
            scopes=scopes,
            service_account=service_account,
            rate_limit_rps=rate_limit_rps,
            max_concurrent_jobs=max_concurrent_jobs,
        )
    _show_new(ctx, created)


def _show_new(ctx: typer.Context, created: dict[str, Any]) -> None:
    if state(ctx).json:
        emit(ctx, created)
        return
    console.print(record({k: v for k, v in created.items() if k != "key"}, title="API key"))
    typer.echo(f"API key (shown once, store it now): {created['key']}")  # plain: never wrapped


@app.command("rotate")
def rotate_key(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="Key id from `modelport keys list` (key_...).")],
    grace: Annotated[
        float,
        typer.Option(min=0, max=30 * 24 * 3600, help="Seconds the old key keeps working before it expires."),
    ] = 3600,
) -> None:
    """Rotate a key without downtime: a new key with the same rights is printed once; the old one
    keeps working for --grace seconds, then expires. Switch your clients to the new key meanwhile."""
    with client(ctx) as mp:
        created = mp.rotate_key(key_id, grace_s=grace)
    _show_new(ctx, created)


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
