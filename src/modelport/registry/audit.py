"""Append-only audit records: every write and every refused request (403), who, when and from where.

Rows are only ever added: nothing here (or anywhere) updates or deletes them.

A key with model patterns lists only rows about models inside them: a model, version, alias,
deployment or permission row whose target names such a model, and the rows of jobs it sees
(``jobs/visibility.py``). Rows about no model (keys, datasets, denials) are listed only for keys
without model patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from modelport.registry import acl
from modelport.registry.db import Database
from modelport.registry.tables import AuditRecord

DENIED = "denied"
"""The action of a request refused with 403 (the route's template is the target)."""
MODEL_ACTIONS = ("model.", "version.", "alias.", "deployment.", "permission.")
"""Actions whose target is a model: ``name``, ``name:version`` or ``name@alias``."""
JOB_ACTIONS = "job."
"""Actions whose target is ``job:<id>``."""


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


def record_denial(
    db: Database,
    *,
    actor: str,
    method: str,
    route: str,
    params: dict[str, str],
    client: str | None,
) -> None:
    """Append a ``denied`` row in its own transaction: ``actor`` was refused ``method route``.

    The target is the route template, never the raw path; the path parameters go to the details, each
    cut to 100 characters, so a caller cannot write arbitrary amounts into the log.
    """
    with db.write() as s:
        record(
            s,
            actor=actor[:63],
            action=DENIED,
            target=f"{method} {route}"[:255],
            details={"params": {k[:40]: v[:100] for k, v in list(params.items())[:8]}},
            client=client[:64] if client else None,
        )


def target_history(session: Session, *, target: str, actions: tuple[str, ...], since: datetime) -> list[AuditEntry]:
    """Rows for exactly ``target`` with one of ``actions``, recorded at or after ``since``, oldest first."""
    q = (
        select(AuditRecord)
        .where(AuditRecord.target == target, AuditRecord.action.in_(actions), AuditRecord.at >= since)
        .order_by(AuditRecord.id)
    )
    return [_entry(r) for r in session.scalars(q)]


def _entry(r: AuditRecord) -> AuditEntry:
    return AuditEntry(
        id=r.id, at=r.at, actor=r.actor, action=r.action, target=r.target, details=r.details, client=r.client
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
    within: tuple[str, ...] | None = None,
) -> list[AuditEntry]:
    """Newest first; page with ``before_id`` (the smallest id of the previous page). ``within``: the
    caller key's model patterns (``acl.model_patterns``); filtered in SQL, so pages stay full."""
    q = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if within is not None:
        q = q.where(_about_models_within(within))
    if before_id is not None:
        q = q.where(AuditRecord.id < before_id)
    if actor:
        q = q.where(AuditRecord.actor == actor)
    if action:
        q = q.where(AuditRecord.action.startswith(action, autoescape=True))
    if target_prefix:
        q = q.where(AuditRecord.target.startswith(target_prefix, autoescape=True))
    return [_entry(r) for r in session.scalars(q)]


def _about_models_within(patterns: tuple[str, ...]) -> ColumnElement[bool]:
    from modelport.jobs import visibility  # jobs.queue imports this module

    about_model = or_(*(AuditRecord.action.startswith(a, autoescape=True) for a in MODEL_ACTIONS))
    return or_(
        and_(about_model, acl.names_within(patterns, AuditRecord.target, ref=True)),
        and_(
            AuditRecord.action.startswith(JOB_ACTIONS, autoescape=True),
            AuditRecord.target.in_(visibility.audit_targets(patterns)),
        ),
    )
