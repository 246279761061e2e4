"""``modelport doctor``: verify a home's blob store against its registry, offline (no server needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelport.cli.output import fail, state, to_json
from modelport.cli.serve import build_settings

if TYPE_CHECKING:
    from modelport.config import Settings
    from modelport.registry.doctor import DoctorReport

Home = Annotated[
    Path | None,
    typer.Option(help="Data home to check [default: ./modelport-data or $MODELPORT_HOME]."),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(help="The registry database, e.g. postgresql+psycopg://... [default: SQLite in home]."),
]


def _refuse_missing_home(settings: Settings) -> None:
    """Never create a home (or an empty SQLite file) just to report that it is empty."""
    if not settings.home.is_dir():
        fail(f"no Modelport home at {settings.home}")
        raise typer.Exit(2)
    if settings.database_url is None and not (settings.home / "modelport.db").is_file():
        fail(f"no registry database in {settings.home} (start `modelport serve` once to create it)")
        raise typer.Exit(2)


def _render(home: Path, report: DoctorReport) -> str:
    lines = [f"Modelport doctor: {home}"]
    key = f"master key {report.key_id}" if report.key_id else "no master key"
    lines.append(f"{key}; {report.encrypted} encrypted and {report.plaintext} plaintext blob(s) stored")
    lines.append(
        f"checked {report.checked} referenced blob(s): {report.ok} ok, "
        f"{len(report.missing)} missing, {len(report.damaged)} damaged"
    )
    for label, problems in (("DAMAGED", report.damaged), ("MISSING", report.missing)):
        for p in problems:
            lines.append(f"  {label}  {p.sha256}  {p.problem}")
            lines.extend(f"           used by {who}" for who in p.used_by)
    for sha, size in report.orphans.items():
        lines.append(f"  orphan   {sha}  {size} bytes, no version or dataset uses it")
    lines.extend(f"  stray    {path}" for path in report.stray)
    lines.extend(f"  leftover {path}" for path in report.leftovers)
    if report.healthy:
        note = " (orphans and leftovers take space only)" if report.orphans or report.leftovers else ""
        lines.append(f"OK: every referenced blob is present and intact{note}")
    else:
        bad = len(report.missing) + len(report.damaged)
        lines.append(f"FAILED: {bad} referenced blob(s) cannot be served")
    return "\n".join(lines)


def doctor(
    ctx: typer.Context,
    home: Home = None,
    database_url: DatabaseUrl = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify every stored blob against the registry, offline (no server needed).

    Opens the home's database and blob store directly, with the same settings as `modelport serve`
    (MODELPORT_HOME, MODELPORT_DATABASE_URL, MODELPORT_MASTER_KEY / MODELPORT_MASTER_KEY_FILE or the
    home's secrets/master.key). Every blob a version (its files and manifest) or a dataset uses is
    decrypted and re-hashed in full. The report lists:

    - **missing**: a row points at a blob that is not in the store;
    - **damaged**: tampered, truncated, its key sidecar edited or lost, or wrapped by another master key;
    - **orphans**: stored blobs that nothing uses (left by deleted versions or interrupted uploads);
    - **stray** files in the blob folders and **leftover** temporary files.

    Nothing is changed. Exit status: 0 when every used blob is present and intact (orphans and leftovers
    alone are only noted), 1 when any is missing or damaged, 2 when there is no home to check.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from modelport.registry.db import Database
    from modelport.registry.doctor import check_home
    from modelport.store.local import open_store

    settings = build_settings(None, None, home, database_url, False, None)
    _refuse_missing_home(settings)
    store = open_store(settings, create_key=False)
    db = Database(settings)
    try:
        report = check_home(db, store)
    except SQLAlchemyError:
        fail("cannot read the registry database (is this a Modelport home, migrated by `modelport serve`?)")
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    if json_output or state(ctx).json:
        sys.stdout.write(to_json({"home": str(settings.home), **report.to_dict()}) + "\n")
    else:
        typer.echo(_render(settings.home, report))
    if not report.healthy:
        raise typer.Exit(1)
