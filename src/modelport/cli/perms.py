"""``modelport perms``: per-model roles (reader < writer < owner) for principals."""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli.output import client, done, emit_table, group

app = group("Who may read, change or own a model.")

ROLES = ("reader", "writer", "owner")
Name = Annotated[str, typer.Argument(help="Model name.")]
Principal = Annotated[str, typer.Argument(help="Principal name (the NAME its keys were created with).")]


def _rows(permissions: dict[str, str]) -> list[dict[str, str]]:
    return [{"principal": p, "role": r} for p, r in sorted(permissions.items())]


@app.command("list")
def list_permissions(ctx: typer.Context, name: Name) -> None:
    """List who has which role on a model."""
    with client(ctx) as mp:
        perms = mp.list_permissions(name)
    emit_table(ctx, _rows(perms), ("principal", "role"), f"nobody has a role on {name}")


@app.command("set")
def set_permission(
    ctx: typer.Context,
    name: Name,
    principal: Principal,
    role: Annotated[
        str,
        typer.Argument(help="reader (predict, download), writer (upload), owner (everything)."),
    ],
) -> None:
    """Give PRINCIPAL a role on a model (owners and admins)."""
    if role not in ROLES:
        raise typer.BadParameter(f"use one of {', '.join(ROLES)}", param_hint="ROLE")
    with client(ctx) as mp:
        perms = mp.set_permission(name, principal, role)
    done(
        ctx,
        f"{principal} is now {role} of {name}",
        {"model": name, "permissions": perms},
    )


@app.command("delete")
def delete_permission(ctx: typer.Context, name: Name, principal: Principal) -> None:
    """Remove PRINCIPAL's role on a model (the last owner cannot be removed)."""
    with client(ctx) as mp:
        perms = mp.delete_permission(name, principal)
    done(
        ctx,
        f"{principal} has no role on {name} any more",
        {"model": name, "permissions": perms},
    )
