"""``modelport models``: register, list, inspect, change and delete models."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelport.cli.output import client, done, emit, group, record, table

app = group("Register, list, inspect, change and delete models.")

MODEL_COLUMNS = (
    "name",
    "latest_version",
    "aliases",
    "tags",
    "owner",
    "your_role",
    "description",
)

Name = Annotated[str, typer.Argument(help="Model name, e.g. mnist-mlp.")]


def _page_table(page: dict[str, Any]) -> Any:
    items = page["items"]
    if not items:
        return "no models"
    shown = f"{len(items)} of {page['total']}" if page["total"] > len(items) else str(len(items))
    return table(items, MODEL_COLUMNS, title=f"models ({shown})")


@app.command("list")
def list_models(
    ctx: typer.Context,
    prefix: Annotated[str | None, typer.Option(help="Only names starting with this.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only models with this tag.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
) -> None:
    """List the models you may read (a page; see --limit and --offset)."""
    with client(ctx) as mp:
        page = mp.list_models(prefix=prefix, tag=tag, limit=limit, offset=offset)
    emit(ctx, page, _page_table)


@app.command("get")
def get_model(ctx: typer.Context, name: Name) -> None:
    """Show a model: owner, tags, latest version, aliases and your role."""
    with client(ctx) as mp:
        emit(ctx, mp.get_model(name), lambda m: record(m, title=f"model {name}"))


@app.command("create")
def create_model(
    ctx: typer.Context,
    name: Name,
    description: Annotated[str, typer.Option("--description", "-d", help="What it is for.")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="A tag (repeat for more).")] = None,
) -> None:
    """Register a new model; you become its owner."""
    with client(ctx) as mp:
        model = mp.create_model(name, description=description, tags=tag or [])
    done(ctx, f"created model {name}", model)


@app.command("update")
def update_model(
    ctx: typer.Context,
    name: Name,
    description: Annotated[str | None, typer.Option("--description", "-d", help="New description.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", help="Replace the tags (repeat for more)."),
    ] = None,
    clear_tags: Annotated[bool, typer.Option("--clear-tags", help="Remove every tag.")] = False,
) -> None:
    """Change a model's description and/or tags; options left out stay as they are."""
    tags = [] if clear_tags else tag
    if description is None and tags is None:
        raise typer.BadParameter("give --description, --tag or --clear-tags")
    with client(ctx) as mp:
        model = mp.update_model(name, description=description, tags=tags)
    done(ctx, f"updated model {name}", model)


@app.command("delete")
def delete_model(
    ctx: typer.Context,
    name: Name,
    force: Annotated[bool, typer.Option("--force", help="Also delete its aliases (owners only).")] = False,
) -> None:
    """Delete a model and all its versions. Refused while aliases point at it, unless --force."""
    with client(ctx) as mp:
        mp.delete_model(name, force=force)
    done(ctx, f"deleted model {name}", {"deleted": name})
