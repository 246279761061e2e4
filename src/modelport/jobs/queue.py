"""The job queue: rows in the database, submitted and read by the API, claimed and ended by workers.

Life of a job::

    submit ──> queued ──claim──> running ──> succeeded | failed | cancelled
                  ^                 │
                  └──── requeue ────┘  (worker lost: heartbeat older than the timeout; or shut down)

Claims are atomic: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, and on SQLite the claim runs
in a ``BEGIN IMMEDIATE`` write transaction, which serializes claimers. A claim sets ``worker`` (the
lease) and every later write of the worker is fenced by it (``WHERE worker = :me AND status =
'running'``), so a worker that was presumed dead cannot overwrite the job's next attempt. Every state
change is an event (see ``events.py``) and an audit record, in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.errors import JobFinished, JobNotFound, TooManyRequests
from modelport.jobs import events, kinds
from modelport.jobs.tables import TERMINAL, Job
from modelport.registry import acl, audit
from modelport.registry.db import Database
from modelport.registry.tables import utcnow

ACTIVE = ("queued", "running")
QUOTA_RETRY_S = 30
"""Retry-After of a submit refused by the concurrent-job quota."""


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    kind: str
    status: str
    owner: str
    parent: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    attempts: int
    max_attempts: int
    cancel_requested: bool
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    trial: dict[str, Any] | None
    """For a sweep's trial: its number and parameters."""
    spec: dict[str, Any] | None = None


def view(job: Job, *, with_spec: bool = False) -> JobView:
    trial: dict[str, Any] | None = {k: job.meta[k] for k in ("trial", "params") if k in job.meta} or None
    return JobView(
        id=job.id,
        kind=job.kind,
        status=job.status,
        owner=job.owner,
        parent=job.parent_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        progress=dict(job.progress),
        result=job.result,
        error=job.error,
        trial=trial,
        spec=job.spec if with_spec else None,
    )


def canonical_id(job_id: str) -> str:
    """The job id in canonical uuid form, or JobNotFound: an id never reaches SQL or a path unchecked."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise JobNotFound(job_id=job_id) from None


def visible_job(session: Session, principal: Principal, job_id: str) -> Job:
    """The job if the caller submitted it (or is an admin); another principal's job is a 404."""
    job = session.get(Job, canonical_id(job_id))
    if job is None or not (principal.is_admin or job.owner == principal.name):
        raise JobNotFound(job_id=job_id)
    return job


# -- the API side ------------------------------------------------------------------------------------
def _new_job(principal: Principal, kind: str, spec: dict[str, Any], settings: Settings, **extra: Any) -> Job:
    now = extra.pop("created_at", None) or utcnow()
    return Job(
        id=str(uuid.uuid4()),
        kind=kind,
        status="queued",
        owner=principal.name,
        owner_role=principal.role,
        spec=spec,
        meta=extra.pop("meta", {}),
        attempts=0,
        max_attempts=settings.job_max_attempts,
        cancel_requested=False,
        progress={},
        event_seq=0,
        created_at=now,
        updated_at=now,
        **extra,
    )


def submit(
    db: Database,
    settings: Settings,
    principal: Principal,
    kind: str,
    spec: dict[str, Any],
    *,
    client: str | None = None,
) -> JobView:
    """Validate the spec (400 with the field path) and queue the job; a sweep queues its trials too."""
    prepared = kinds.get(kind).prepare(spec, principal, settings)
    acl.check_new_model(principal, prepared.target)  # the key's scope: jobs need "write" on their target
    kinds.check_target(db, principal, prepared.target)
    kinds.check_datasets(db, principal, prepared.datasets)
    kinds.check_sources(db, principal, prepared.sources)
    job = _new_job(principal, kind, prepared.spec, settings, meta=prepared.meta)
    with db.write() as s:
        _check_quota(s, principal, settings)
        s.add(job)
        s.flush()
        if prepared.trials:
            _add_trials(s, job, prepared.trials, principal, settings)
        else:
            events.append(s, job.id, "status", {"status": "queued"})
        details = {"kind": kind, "model": prepared.target, "trials": len(prepared.trials) or None}
        audit.record(
            s, actor=principal.name, action="job.submit", target=f"job:{job.id}", details=details, client=client
        )
        return view(job, with_spec=True)


def _check_quota(s: Session, principal: Principal, settings: Settings) -> None:
    """429 when the principal already has its most queued plus running jobs (a sweep counts once).

    Counted inside the submit's write transaction: serialized on SQLite; on PostgreSQL two submits at
    the same instant may both pass."""
    limit = principal.max_concurrent_jobs or settings.max_concurrent_jobs_per_principal
    if not limit:
        return
    active = s.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == principal.name, Job.status.in_(ACTIVE), Job.parent_id.is_(None))
    )
    if (active or 0) >= limit:
        raise TooManyRequests(
            message=f"job quota reached: {principal.name!r} has {active} queued or running jobs, the most "
            f"allowed is {limit}; wait for one to end or cancel one",
            retry_after=QUOTA_RETRY_S,
        )


def _add_trials(s: Session, parent: Job, trials: list[kinds.Trial], principal: Principal, settings: Settings) -> None:
    """A sweep waits on its trials: it is running with no worker until the last trial ends."""
    now = utcnow()
    parent.status, parent.started_at = "running", now
    parent.progress = {"trials": len(trials), "trials_done": 0}
    events.append(s, parent.id, "status", {"status": "running", "trials": len(trials)})
    for number, trial in enumerate(trials, start=1):
        child = _new_job(
            principal,
            "train",
            trial.spec,
            settings,
            parent_id=parent.id,
            meta={"trial": number, "params": trial.params},
            created_at=now + timedelta(microseconds=number),  # trials run in their order
        )
        s.add(child)
        s.flush()
        events.append(s, child.id, "status", {"status": "queued", "trial": number})


def get_job(db: Database, principal: Principal, job_id: str) -> JobView:
    with db.read() as s:
        return view(visible_job(s, principal, job_id), with_spec=True)


def status_of(db: Database, job_id: str) -> str:
    with db.read() as s:
        return str(s.scalar(select(Job.status).where(Job.id == job_id)))


def read_log(db: Database, principal: Principal, job_id: str, *, tail: int | None = None) -> str:
    """The job's events as text, one line each (the last ``tail`` lines when given)."""
    with db.read() as s:
        job = visible_job(s, principal, job_id)
        seq = job.event_seq
    first = max(0, seq - tail) if tail else 0
    lines: list[str] = []
    while True:
        batch = events.since(db, job.id, first)
        lines.extend(events.log_line(e) for e in batch)
        if len(batch) < 500:
            return "\n".join(lines) + ("\n" if lines else "")
        first = batch[-1].seq


def cancel(db: Database, principal: Principal, job_id: str, *, client: str | None = None) -> JobView:
    """Cancel a queued job at once; ask a running one to stop (its worker ends it ``cancelled``)."""
    with db.write() as s:
        job = visible_job(s, principal, job_id)
        if not db.is_sqlite:
            s.refresh(job, with_for_update=True)
        if job.status == "cancelled":
            return view(job, with_spec=True)
        if job.status in TERMINAL:
            raise JobFinished(job_id=job.id, status=job.status)
        _cancel_one(s, job, principal.name)
        for child in s.scalars(select(Job).where(Job.parent_id == job.id, Job.status.in_(ACTIVE))):
            _cancel_one(s, child, principal.name)
        audit.record(s, actor=principal.name, action="job.cancel", target=f"job:{job.id}", client=client)
        return view(job, with_spec=True)


def _cancel_one(s: Session, job: Job, actor: str) -> None:
    if job.status == "queued" or job.worker is None:  # queued, or a sweep waiting on its trials
        _end(s, job, "cancelled", error=None, reason=f"cancelled by {actor}")
    elif not job.cancel_requested:
        job.cancel_requested = True
        job.updated_at = utcnow()
        s.flush()
        events.append(s, job.id, "cancel_requested", {"by": actor})


# -- the worker side -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker holds the lease of."""

    id: str
    kind: str
    spec: dict[str, Any]
    meta: dict[str, Any]
    owner: Principal
    parent_id: str | None
    attempt: int
    worker: str


def has_queued(db: Database) -> bool:
    """A cheap read-only look, so idle workers do not take SQLite's write lock on every poll."""
    with db.read() as s:
        return s.scalar(select(Job.id).where(Job.status == "queued").limit(1)) is not None


def claim(db: Database, worker: str) -> Claimed | None:
    """Take the oldest queued job (atomic: two claimers never get the same job), or None."""
    with db.write() as s:
        job = s.scalar(
            select(Job)
            .where(Job.status == "queued")
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if job is None:
            return None
        now = utcnow()
        job.status, job.worker, job.heartbeat_at, job.updated_at = "running", worker, now, now
        job.attempts += 1
        job.started_at = job.started_at or now
        s.flush()
        events.append(s, job.id, "status", {"status": "running", "attempt": job.attempts})  # worker: in the audit
        audit.record(
            s, actor=worker[:63], action="job.start", target=f"job:{job.id}", details={"attempt": job.attempts}
        )
        owner = Principal(name=job.owner, role="admin" if job.owner_role == "admin" else "member")
        return Claimed(job.id, job.kind, dict(job.spec), dict(job.meta), owner, job.parent_id, job.attempts, worker)


def _leased(s: Session, job_id: str, worker: str) -> Job | None:
    return s.scalar(
        select(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running").with_for_update()
    )


def _lock_parent_first(s: Session, job_id: str) -> None:
    """Lock a trial's sweep before the trial: every writer takes parent then child, so none deadlock."""
    parent_id = s.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is not None:
        s.scalar(select(Job.id).where(Job.id == parent_id).with_for_update())


def heartbeat(db: Database, job_id: str, worker: str) -> tuple[bool, bool]:
    """Mark the job alive; returns (still ours, cancel requested)."""
    with db.write() as s:
        job = _leased(s, job_id, worker)
        if job is None:
            return False, False
        job.heartbeat_at = utcnow()
        return True, job.cancel_requested


def finish(
    db: Database,
    job_id: str,
    worker: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """End a leased job (succeeded, failed or cancelled); False when the lease was lost."""
    with db.write() as s:
        _lock_parent_first(s, job_id)
        job = _leased(s, job_id, worker)
        if job is None:
            return False
        job.result = result
        _end(s, job, status, error=error, reason=None)
        audit.record(s, actor=worker[:63], action=f"job.{status}", target=f"job:{job.id}", details={"error": error})
        return True


def release(db: Database, job_id: str, worker: str, *, reason: str, counts: bool = False) -> bool:
    """Give a leased job back to the queue (a worker shutting down; a sweep waiting on trials)."""
    with db.write() as s:
        job = _leased(s, job_id, worker)
        if job is None:
            return False
        _requeue(s, job, reason, counts=counts)
        audit.record(s, actor=worker[:63], action="job.requeue", target=f"job:{job.id}", details={"reason": reason})
        return True


def _requeue(s: Session, job: Job, reason: str, *, counts: bool) -> None:
    job.status, job.worker, job.heartbeat_at, job.updated_at = "queued", None, None, utcnow()
    if not counts:
        job.attempts = max(0, job.attempts - 1)
    s.flush()
    events.append(s, job.id, "status", {"status": "queued", "reason": reason})


def _end(s: Session, job: Job, status: str, *, error: str | None, reason: str | None) -> None:
    now = utcnow()
    job.status, job.error, job.worker, job.heartbeat_at = status, error, None, None
    job.finished_at = job.updated_at = now
    s.flush()
    result = (
        {k: v for k, v in job.result.items() if k != "trials"} if job.result else None
    )  # a sweep's table stays in the job
    data: dict[str, Any] = {"status": status, "result": result, "error": error, "reason": reason}
    events.append(s, job.id, "status", {k: v for k, v in data.items() if v is not None})
    if job.parent_id is not None:
        _trial_ended(s, job)


def _trial_ended(s: Session, trial: Job) -> None:
    """Count a sweep's ended trial; after the last one, queue the sweep to rank and register."""
    parent = s.scalar(select(Job).where(Job.id == trial.parent_id).with_for_update())
    if parent is None or parent.status in TERMINAL:
        return
    pending = s.scalar(select(func.count()).select_from(Job).where(Job.parent_id == parent.id, Job.status.in_(ACTIVE)))
    total = int(parent.progress.get("trials", 0))
    parent.progress = {**parent.progress, "trials_done": total - int(pending or 0)}
    parent.updated_at = utcnow()
    s.flush()
    metrics = (trial.result or {}).get("metrics")
    events.append(
        s,
        parent.id,
        "trial",
        {
            "trial": trial.meta.get("trial"),
            "job": trial.id,
            "status": trial.status,
            "params": trial.meta.get("params"),
            "metrics": metrics,
        },
    )
    if not pending and parent.status == "running" and parent.worker is None:
        _requeue(s, parent, "all trials ended; ranking them", counts=True)


def reap(db: Database, timeout_s: float) -> list[str]:
    """Requeue (or fail, after max attempts) running jobs whose worker stopped heartbeating."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = (Job.status == "running", Job.worker.is_not(None), Job.heartbeat_at < cutoff)
    with db.read() as s:
        candidates = list(s.scalars(select(Job.id).where(*stale)))
    reaped = []
    for job_id in candidates:  # one transaction each, parent locked first (see _lock_parent_first)
        with db.write() as s:
            _lock_parent_first(s, job_id)
            job = s.scalar(select(Job).where(Job.id == job_id, *stale).with_for_update(skip_locked=True))
            if job is not None:
                _give_up_or_requeue(s, job)
                reaped.append(job_id)
    return reaped


def _give_up_or_requeue(s: Session, job: Job) -> None:
    lost = f"its worker stopped responding (attempt {job.attempts} of {job.max_attempts})"
    if job.cancel_requested:
        _end(s, job, "cancelled", error=None, reason=lost)
    elif job.attempts >= job.max_attempts:
        _end(s, job, "failed", error=f"the job was given up: {lost}", reason=None)
    else:
        _requeue(s, job, lost, counts=True)
    audit.record(s, actor="system", action="job.reap", target=f"job:{job.id}", details={"status": job.status})


def trials_of(db: Database, sweep_id: str) -> list[Job]:
    """A sweep's trial rows, in trial order (read-only snapshots)."""
    with db.read() as s:
        rows = list(s.scalars(select(Job).where(Job.parent_id == sweep_id).order_by(Job.created_at)))
        s.expunge_all()
        return rows
