"""``modelport alias``: name versions (production, staging, ...) and move the names atomically."""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli.output import client, done, emit_table, group

app = group("Point aliases (production, staging...) at versions.")

Name = Annotated[str, typer.Argument(help="Model name.")]
Alias = Annotated[str, typer.Argument(help="Alias name, e.g. production.")]


@app.command("set")
def set_alias(
    ctx: typer.Context,
    name: Name,
    alias: Alias,
    version: Annotated[int, typer.Argument(min=1, help="Version the alias should point to.")],
) -> None:
    """Point ALIAS at VERSION (creates it, or moves it in one step: no request sees a gap)."""
    with client(ctx) as mp:
        view = mp.set_alias(name, alias, version)
    done(ctx, f"{name}@{alias} -> version {version}", view)


@app.command("delete")
def delete_alias(ctx: typer.Context, name: Name, alias: Alias) -> None:
    """Delete an alias (the version stays)."""
    with client(ctx) as mp:
        mp.delete_alias(name, alias)
    done(ctx, f"deleted alias {name}@{alias}", {"model": name, "deleted_alias": alias})


@app.command("list")
def list_aliases(ctx: typer.Context, name: Name) -> None:
    """List a model's aliases and the versions they point to."""
    with client(ctx) as mp:
        items = mp.list_aliases(name)
    emit_table(
        ctx,
        items,
        ("alias", "version", "updated_by", "updated_at"),
        f"model {name} has no aliases",
    )
