"""Storage quota: the bytes a principal's uploaded versions and owned datasets take, checked before an
upload is staged so a refused upload leaves nothing behind."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.errors import TooManyRequests
from modelport.registry.db import Database
from modelport.registry.tables import Dataset, Version

RETRY_S = 3600
"""Retry-After of an upload refused by the storage quota (room comes back only when something is deleted)."""


def storage_used(session: Session, principal_name: str) -> int:
    """Sum of ``size_bytes`` of the versions ``principal_name`` created and the datasets it owns."""
    versions = session.scalar(
        select(func.coalesce(func.sum(Version.size_bytes), 0)).where(Version.created_by == principal_name)
    )
    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.owner == principal_name)
    )
    return int(versions or 0) + int(datasets or 0)


def _length(stream: BinaryIO) -> int:
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    return size


def check_storage(db: Database, principal: Principal, streams: Iterable[BinaryIO]) -> None:
    """429 when storing ``streams`` would take the principal past its quota (``max_storage_bytes``)."""
    limit = principal.max_storage_bytes
    if not limit:
        return
    incoming = sum(_length(s) for s in streams)
    with db.read() as s:
        used = storage_used(s, principal.name)
    if used + incoming > limit:
        raise TooManyRequests(
            message=f"storage quota exceeded: {principal.name!r} stores {used:,} bytes, this upload adds "
            f"{incoming:,}, the quota is {limit:,} bytes; delete versions or datasets first",
            retry_after=RETRY_S,
        )
