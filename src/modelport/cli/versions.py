"""``modelport versions``: list, inspect, change, delete and download model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelport.cli.output import (
    client,
    console,
    done,
    emit,
    emit_table,
    group,
    pretty,
    record,
    state,
    table,
)

app = group("List, inspect, change, delete and download versions.")

VERSION_COLUMNS = (
    "version",
    "format",
    "status",
    "size_bytes",
    "aliases",
    "created_by",
    "created_at",
)
LINEAGE_COLUMNS = ("model", "version", "format", "parent", "job", "transform")

Name = Annotated[str, typer.Argument(help="Model name.")]
Version = Annotated[int, typer.Argument(min=1, help="Version number (1, 2, ...).")]


def _versions_table(page: dict[str, Any]) -> Any:
    if not page["items"]:
        return "no versions yet; add one with `modelport upload`"
    return table(page["items"], VERSION_COLUMNS, title=f"versions ({page['total']})")


def _version_view(data: dict[str, Any]) -> Any:
    summary = {k: v for k, v in data.items() if k not in ("manifest", "files")}
    console.print(record(summary, title=f"{data['model']} version {data['version']}"))
    if data.get("files"):
        console.print(table(data["files"], ("path", "size_bytes", "sha256"), title="files"))
    manifest = {k: v for k, v in data.get("manifest", {}).items() if k != "files" and v}
    return f"[bold]manifest[/]\n{escape(pretty(manifest))}" if manifest else None


@app.command("list")
def list_versions(
    ctx: typer.Context,
    name: Name,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
) -> None:
    """List a model's versions, newest first."""
    with client(ctx) as mp:
        emit(ctx, mp.list_versions(name, limit=limit, offset=offset), _versions_table)


@app.command("get")
def get_version(ctx: typer.Context, name: Name, version: Version) -> None:
    """Show a version: status, files with their sha256, and its manifest."""
    with client(ctx) as mp:
        emit(ctx, mp.get_version(name, version), _version_view)


@app.command("update")
def update_version(
    ctx: typer.Context,
    name: Name,
    version: Version,
    description: Annotated[str | None, typer.Option("--description", "-d", help="New description.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="ready, or archived (archived versions are not served)."),
    ] = None,
) -> None:
    """Change a version's description or status; its files never change."""
    if description is None and status is None:
        raise typer.BadParameter("give --description or --status")
    with client(ctx) as mp:
        view = mp.update_version(name, version, description=description, status=status)
    done(ctx, f"updated {name} version {version}", view)


@app.command("delete")
def delete_version(ctx: typer.Context, name: Name, version: Version) -> None:
    """Delete a version (owners); refused while an alias points at it."""
    with client(ctx) as mp:
        mp.delete_version(name, version)
    done(
        ctx,
        f"deleted {name} version {version}",
        {"model": name, "deleted_version": version},
    )


def _inside(folder: Path, bundle_path: str) -> Path:
    """``folder/bundle_path``, refusing a path (from the server) that would land outside ``folder``."""
    target = (folder / bundle_path).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise typer.BadParameter(f"refusing to write {bundle_path!r} outside {folder}")
    return target


@app.command("download")
def download(
    ctx: typer.Context,
    name: Name,
    version: Version,
    path: Annotated[
        str | None,
        typer.Argument(help="File inside the version; all files when left out."),
    ] = None,
    dest: Annotated[
        Path,
        typer.Option("--dest", "-o", help="Folder (or file name, for one file) to write to."),
    ] = Path("."),
) -> None:
    """Download a version's files (hash-checked; nothing is left behind on a mismatch)."""
    with client(ctx) as mp:
        if path is None:
            paths = [f["path"] for f in mp.get_version(name, version)["files"]]
            dest.mkdir(parents=True, exist_ok=True)
            written = [mp.download(name, version, p, _inside(dest, p)) for p in paths]
        else:
            written = [mp.download(name, version, path, dest)]
    rows = [{"path": str(p), "size_bytes": p.stat().st_size} for p in written]
    if not state(ctx).json:
        console.print(f"[green]✓[/] downloaded {len(rows)} file(s)")
    emit_table(ctx, rows, ("path", "size_bytes"), "no files")


@app.command("lineage")
def show_lineage(ctx: typer.Context, name: Name, version: Version) -> None:
    """Show where a version came from: its parent, grandparent... with the job and transform."""
    with client(ctx) as mp:
        chain = mp.lineage(name, version)
    emit_table(ctx, chain, LINEAGE_COLUMNS, "no lineage")
