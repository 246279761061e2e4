"""Uploaded datasets: training data files stored content-addressed and referenced by name.

A dataset is one file (``npz``, ``csv`` or ``parquet``) kept as a blob under its sha256. It belongs to
the principal who uploaded it; only that principal and admins can see, use or delete it, and to anyone
else it does not exist (404, never 403, so names of others' datasets do not leak).

The order of an upload is the one of model versions (``uploads.py``): name and content checks (an NPZ
whose arrays need pickle is refused) run on a private temp copy first, so a refused upload leaves
nothing; the blob is stored before the row commits, so a crash can leave an orphan blob but never a
dataset pointing at a missing one. A job reads a dataset through a hash-checked copy (``jobs/kinds.py``).
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal, missing_scope
from modelport.errors import BadRequest, DatasetExists, DatasetNotFound, InvalidArtifact, UnsafeFormat
from modelport.refs import check_name
from modelport.registry import audit
from modelport.registry.db import Database
from modelport.registry.quotas import check_storage
from modelport.registry.tables import Dataset
from modelport.store.bundle import check_bundle_path
from modelport.store.local import LocalBlobStore

FORMATS = ("npz", "csv", "parquet")
SUFFIX_OF = {"npz": ".npz", "csv": ".csv", "parquet": ".parquet"}
_FORMAT_OF_SUFFIX = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_DESCRIPTION = 10_000


@dataclass(frozen=True, slots=True)
class DatasetView:
    name: str
    format: str
    filename: str
    sha256: str
    size_bytes: int
    owner: str
    created_at: datetime
    description: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def suffix(self) -> str:
        return SUFFIX_OF[self.format]


def _view(row: Dataset) -> DatasetView:
    return DatasetView(
        name=row.name,
        format=row.format,
        filename=row.filename,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        owner=row.owner,
        created_at=row.created_at,
        description=row.description,
    )


def format_of(filename: str, given: str | None) -> str:
    """The dataset's format: the one given, else from the file's suffix; one of ``FORMATS``."""
    if given:
        if given not in FORMATS:
            raise BadRequest(message=f"dataset format must be one of {', '.join(FORMATS)} (got {given[:20]!r})")
        return given
    found = _FORMAT_OF_SUFFIX.get(Path(filename).suffix.lower())
    if found is None:
        raise BadRequest(
            message=f"cannot tell the format of {filename!r}: name it .npz, .csv or .parquet, or give format"
        )
    return found


def check_content(path: Path, fmt: str, filename: str) -> None:
    """Refuse a file that is not what its format says; an NPZ is opened without pickle, array by array."""
    if fmt == "npz":
        _check_npz(path, filename)
    elif fmt == "parquet":
        _check_parquet(path, filename)
    else:
        with open(path, "rb") as f:
            sample = f.read(64 * 1024)
        if b"\x00" in sample:
            raise InvalidArtifact(message=f"{filename!r} is not a CSV text file")


def _check_parquet(path: Path, filename: str) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise InvalidArtifact(message=f"{filename!r} is not a Parquet file")


def _check_npz(path: Path, filename: str) -> None:
    import numpy as np

    from modelport.training.data.npz import check_member

    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile) or not archive.files:
                raise InvalidArtifact(message=f"{filename!r} is not an NPZ archive of arrays")
            for key in archive.files:
                check_member(archive, key)  # declared size and dtype from the header, before numpy allocates
                archive[key]  # each array is read in full: an object array needs pickle and raises here
    except ValueError as exc:
        if "pickle" in str(exc):
            raise UnsafeFormat(
                filename=filename, reason="its arrays need pickle to load", instead="numeric arrays (no object dtype)"
            ) from None
        raise InvalidArtifact(message=f"{filename!r} is not a readable NPZ archive") from None
    except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError):  # NotImplementedError: zip version/method
        raise InvalidArtifact(message=f"{filename!r} is not a readable NPZ archive") from None


def _load(session: Session, principal: Principal, name: str) -> Dataset:
    """The dataset row the caller may use, else DatasetNotFound (also for someone else's)."""
    check_name(name, kind="dataset")
    row = session.scalar(select(Dataset).where(Dataset.name == name))
    if row is None or (row.owner != principal.name and not principal.is_admin):
        raise DatasetNotFound(name=name)
    return row


def _exists(session: Session, name: str) -> bool:
    return session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None


def _store(store: LocalBlobStore, stream: BinaryIO, fmt: str, filename: str) -> tuple[str, int]:
    """Copy the upload to a temp file, check it, then store it as a blob (sha256, size)."""
    staged = store.new_tmp_path(SUFFIX_OF[fmt])
    try:
        stream.seek(0)
        with open(staged, "wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
        check_content(staged, fmt, filename)
        return store.put_file(staged)
    finally:
        staged.unlink(missing_ok=True)


def create_dataset(
    db: Database,
    store: LocalBlobStore,
    principal: Principal,
    *,
    name: str,
    filename: str,
    stream: BinaryIO,
    format: str | None = None,
    description: str = "",
    client: str | None = None,
) -> DatasetView:
    """Check, store and register an uploaded dataset owned by the caller (the row commits last)."""
    check_name(name, kind="dataset")
    if principal.scope is not None and not principal.scope.allows("write"):
        raise missing_scope("write", f"dataset {name!r}")
    check_storage(db, principal, [stream])
    clean = check_bundle_path(filename)
    fmt = format_of(clean, format)
    if len(description) > MAX_DESCRIPTION:
        raise BadRequest(message=f"description is longer than {MAX_DESCRIPTION} characters")
    with db.read() as s:
        if _exists(s, name):
            raise DatasetExists(name=name)  # fail before any work
    sha, size = _store(store, stream, fmt, clean)
    with db.write() as s:
        if _exists(s, name):
            raise DatasetExists(name=name)
        row = Dataset(
            name=name,
            owner=principal.name,
            format=fmt,
            filename=clean,
            sha256=sha,
            size_bytes=size,
            description=description,
        )
        s.add(row)
        s.flush()
        details = {"sha256": sha, "size_bytes": size, "format": fmt}
        audit.record(
            s, actor=principal.name, action="dataset.create", target=f"dataset:{name}", details=details, client=client
        )
        return _view(row)


def list_datasets(
    db: Database, principal: Principal, *, limit: int = 50, offset: int = 0
) -> tuple[list[DatasetView], int]:
    """The caller's datasets (an admin's: all), by name."""
    q = select(Dataset)
    count = select(func.count(Dataset.id))
    if not principal.is_admin:
        q, count = q.where(Dataset.owner == principal.name), count.where(Dataset.owner == principal.name)
    with db.read() as s:
        total = int(s.scalar(count) or 0)
        rows = s.scalars(q.order_by(Dataset.name).limit(limit).offset(offset))
        return [_view(r) for r in rows], total


def get_dataset(db: Database, principal: Principal, name: str) -> DatasetView:
    """A dataset the caller owns (admins: any), else DatasetNotFound."""
    with db.read() as s:
        return _view(_load(s, principal, name))


def delete_dataset(db: Database, principal: Principal, name: str, *, client: str | None = None) -> None:
    """Delete a dataset's row (owner or admin). The blob stays: identical bytes may be shared."""
    with db.write() as s:
        row = _load(s, principal, name)
        details = {"sha256": row.sha256, "owner": row.owner}
        s.delete(row)
        audit.record(
            s, actor=principal.name, action="dataset.delete", target=f"dataset:{name}", details=details, client=client
        )
