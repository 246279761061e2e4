"""``modelport store``: maintenance of the local blob store, run on the server's machine, offline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from modelport.cli.doctor import Home
from modelport.cli.output import fail, group, state, to_json
from modelport.cli.serve import build_settings

app = group("Maintain the local blob store (on the server's machine, with the server and workers stopped).")


@app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    new_key_file: Annotated[
        Path,
        typer.Option(
            exists=True, dir_okay=False, readable=True, help="File with the new key: 32 raw bytes, or hex/base64."
        ),
    ],
    old_key_file: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, help="The current key [default: the server's]."),
    ] = None,
    home: Home = None,
) -> None:
    """Re-wrap every blob's data key with a new master key; no data file is rewritten.

    The current key is the server's (MODELPORT_MASTER_KEY, MODELPORT_MASTER_KEY_FILE, or the home's
    secrets/master.key) unless --old-key-file names it. Each key sidecar is replaced atomically, so the
    command can be run again after an interruption. Afterwards the old key opens nothing.

    When the current key is the home's own secrets/master.key, the new key replaces that file at the
    end. Otherwise set MODELPORT_MASTER_KEY_FILE (or MODELPORT_MASTER_KEY) to the new key before
    starting the server again. Make a new key with: `head -c 32 /dev/urandom > new.key; chmod 600 new.key`.
    """
    from modelport.store import crypto
    from modelport.store.local import LocalBlobStore

    settings = build_settings(None, None, home, None, False, None)
    if not settings.blobs_dir.is_dir():
        fail(f"no blob store in {settings.home}")
        raise typer.Exit(2)
    if old_key_file is not None:
        old = crypto.read_key_file(old_key_file)
    else:
        found = crypto.load_master_key(settings, may_create=False)
        if found is None:
            fail("this home has no master key: nothing to rotate")
            raise typer.Exit(2)
        old = found
    new = crypto.read_key_file(new_key_file)
    if new == old:
        fail("the new key is the current key")
        raise typer.Exit(2)
    store = LocalBlobStore(settings.blobs_dir, settings.tmp_dir, master=old, encrypt=False)
    result = store.rewrap(old, new)
    home_key = crypto.home_key_path(settings.home)
    installed = None
    # Installed even when some keys failed: those blobs were already unreadable with the old key, and
    # every re-wrapped one now needs the new key.
    if home_key.is_file() and crypto.read_key_file(home_key) == old:
        crypto.write_key_file(home_key, new, replace=True)
        installed = str(home_key)
    summary = {
        "old_key_id": old.kid,
        "new_key_id": new.kid,
        "rewrapped": result.rewrapped,
        "already": result.already,
        "failed": [{"sha256": sha, "problem": why} for sha, why in result.failed.items()],
        "installed": installed,
    }
    if state(ctx).json:
        sys.stdout.write(to_json(summary) + "\n")
    else:
        typer.echo(f"re-wrapped {result.rewrapped} data key(s) from key {old.kid} to {new.kid}", nl=False)
        typer.echo(f" ({result.already} already under the new key)" if result.already else "")
        for sha, why in result.failed.items():
            typer.echo(f"  FAILED  {sha}  {why}")
        if installed:
            typer.echo(f"the new key replaced {installed}")
        else:
            typer.echo("now point MODELPORT_MASTER_KEY_FILE (or MODELPORT_MASTER_KEY) at the new key, then restart")
    if result.failed:
        fail(f"{len(result.failed)} blob(s) could not be re-wrapped: unreadable with the old key already")
        raise typer.Exit(1)
