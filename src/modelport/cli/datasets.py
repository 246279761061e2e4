"""``modelport datasets``: upload training data files and train on them by name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli.output import client, done, emit, group, record, table

app = group("Upload, list, inspect and delete training datasets (train with data: {source: dataset, name: NAME}).")

DATASET_COLUMNS = ("name", "format", "filename", "size_bytes", "sha256", "owner", "created_at")

Name = Annotated[str, typer.Argument(help="Dataset name, e.g. digits-npz.")]


def _page_table(page: dict[str, Any]) -> Any:
    items = page["items"]
    if not items:
        return "no datasets"
    shown = f"{len(items)} of {page['total']}" if page["total"] > len(items) else str(len(items))
    return table(items, DATASET_COLUMNS, title=f"datasets ({shown})")


@app.command("upload")
def upload_dataset(
    ctx: typer.Context,
    name: Name,
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A .npz, .csv or .parquet file.")
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", help="npz, csv or parquet [default: from the file's suffix]."),
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d", help="What it holds.")] = "",
) -> None:
    """Upload FILE as dataset NAME (yours alone; admins see all). NPZ arrays that need pickle are refused."""
    if format is not None and format not in ("npz", "csv", "parquet"):
        raise typer.BadParameter("use npz, csv or parquet", param_hint="--format")
    with client(ctx) as mp:
        view = mp.upload_dataset(name, file, format=format, description=description)
    done(
        ctx,
        f"uploaded dataset {name} ({view['format']}, {view['size_bytes']} bytes, sha256 {view['sha256'][:12]})",
        view,
    )


@app.command("list")
def list_datasets(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
) -> None:
    """List your datasets (admins: all), by name."""
    with client(ctx) as mp:
        page = mp.list_datasets(limit=limit, offset=offset)
    emit(ctx, page, _page_table)


@app.command("get")
def get_dataset(ctx: typer.Context, name: Name) -> None:
    """Show a dataset: format, file name, sha256, size, owner."""
    with client(ctx) as mp:
        emit(ctx, mp.get_dataset(name), lambda d: record(d, title=f"dataset {name}"))


@app.command("delete")
def delete_dataset(ctx: typer.Context, name: Name) -> None:
    """Delete a dataset (its owner or an admin); queued jobs that name it will fail."""
    with client(ctx) as mp:
        mp.delete_dataset(name)
    done(ctx, f"deleted dataset {name}", {"deleted": name})
