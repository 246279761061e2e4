"""Which jobs a caller sees: its own (an admin: everyone's), narrowed by the key's model patterns.

A job names the models it touches in its stored spec: the model its result is registered to and,
for ``optimize``, the version it reads. A key with model patterns sees a job only when every model
the job names is inside them; to that key any other job is a 404 exactly like an unknown id (get,
events, logs, cancel) and absent from listings. A job that names no model (a spec without those
fields) is seen only by keys without model patterns.

The rule is SQL over the spec's JSON (the same on SQLite and PostgreSQL), so listings page and count
in the database. It mirrors ``kinds.target_of`` / ``optimize.target_of``:

=========  ====================================================================
kind       models
=========  ====================================================================
train      ``register.model`` (or ``registration.model``), else ``name``
sweep      the same, in ``base``
optimize   ``register.model``, else the source's model; and ``source`` itself
=========  ====================================================================
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select

from modelport.auth.principals import Principal
from modelport.errors import BadRequest, JobNotFound
from modelport.jobs import queue
from modelport.jobs.tables import JOB_STATUSES, Job
from modelport.registry import acl
from modelport.registry.db import Database


def _text(*path: str) -> ColumnElement[str]:
    text: ColumnElement[str] = Job.spec[path].as_string()
    return text


def _train_target(*base: str) -> ColumnElement[str]:
    return func.coalesce(_text(*base, "register", "model"), _text(*base, "registration", "model"), _text(*base, "name"))


def in_scope(patterns: tuple[str, ...]) -> ColumnElement[bool]:
    """Jobs every model of which is inside ``patterns`` (see the table above)."""
    optimize_target = _text("register", "model")
    return or_(
        and_(Job.kind == "train", acl.names_within(patterns, _train_target())),
        and_(Job.kind == "sweep", acl.names_within(patterns, _train_target("base"))),
        and_(
            Job.kind == "optimize",
            or_(optimize_target.is_(None), acl.names_within(patterns, optimize_target)),
            acl.names_within(patterns, _text("source"), ref=True),
        ),
    )


def audit_targets(patterns: tuple[str, ...]) -> Select[str]:
    """The audit targets (``job:<id>``) of the jobs inside ``patterns``."""
    return select(literal("job:") + Job.id).where(in_scope(patterns))


def require_in_scope(db: Database, principal: Principal, job_id: str) -> None:
    """JobNotFound, exactly as for an unknown id, when the job lies outside the key's model patterns."""
    patterns = acl.model_patterns(principal)
    if patterns is None:
        return
    with db.read() as s:
        found = s.scalar(select(Job.id).where(Job.id == queue.canonical_id(job_id), in_scope(patterns)))
    if found is None:
        raise JobNotFound(job_id=job_id)


def get_job(db: Database, principal: Principal, job_id: str) -> queue.JobView:
    """The job, if the caller submitted it (or is an admin) and the key reaches its models; else 404."""
    require_in_scope(db, principal, job_id)
    return queue.get_job(db, principal, job_id)


def cancel(db: Database, principal: Principal, job_id: str, *, client: str | None = None) -> queue.JobView:
    """``queue.cancel`` on a job the caller sees (404 otherwise)."""
    require_in_scope(db, principal, job_id)
    return queue.cancel(db, principal, job_id, client=client)


def read_log(db: Database, principal: Principal, job_id: str, *, tail: int | None = None) -> str:
    """``queue.read_log`` of a job the caller sees (404 otherwise)."""
    require_in_scope(db, principal, job_id)
    return queue.read_log(db, principal, job_id, tail=tail)


def list_jobs(
    db: Database,
    principal: Principal,
    *,
    status: str | None = None,
    kind: str | None = None,
    parent: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[queue.JobView], int]:
    """The jobs the caller sees, newest first; returns (page, total matching). Filtered in SQL, so
    pages are full and ``total`` counts only what the key may see."""
    if status is not None and status not in JOB_STATUSES:
        raise BadRequest(message=f"status must be one of {', '.join(JOB_STATUSES)}")
    q = select(Job)
    if not principal.is_admin:
        q = q.where(Job.owner == principal.name)
    patterns = acl.model_patterns(principal)
    if patterns is not None:
        q = q.where(in_scope(patterns))
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    if parent:
        q = q.where(Job.parent_id == queue.canonical_id(parent))
    with db.read() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
        return [queue.view(j) for j in rows], int(total)
