"""Append-only audit records: every write, who made it, when and from where."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.registry.tables import AuditRecord


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    client: str | None = None,
) -> None:
    """Add an audit row in the caller's transaction, so the record and the write commit together."""
    session.add(
        AuditRecord(
            actor=actor,
            action=action,
            target=target,
            details=details or {},
            client=client,
        )
    )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    client: str | None


def list_entries(
    session: Session,
    *,
    limit: int = 100,
    before_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    target_prefix: str | None = None,
) -> list[AuditEntry]:
    """Newest first; page with ``before_id`` (the smallest id of the previous page)."""
    q = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if before_id is not None:
        q = q.where(AuditRecord.id < before_id)
    if actor:
        q = q.where(AuditRecord.actor == actor)
    if action:
        q = q.where(AuditRecord.action.startswith(action, autoescape=True))
    if target_prefix:
        q = q.where(AuditRecord.target.startswith(target_prefix, autoescape=True))
    return [
        AuditEntry(
            id=r.id,
            at=r.at,
            actor=r.actor,
            action=r.action,
            target=r.target,
            details=r.details,
            client=r.client,
        )
        for r in session.scalars(q)
    ]
