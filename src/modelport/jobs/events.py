"""Job events: progress, metrics, checkpoints, logs and status changes, stored in order and streamed.

Events of one job are numbered 1, 2, 3... The number is taken with ``UPDATE jobs SET event_seq =
event_seq + 1`` in the transaction that inserts the event, so the job row is locked until commit and
events of one job become visible strictly in order: a follower that has seen event *n* never misses
an event below *n*. That number is the SSE ``id`` and what ``Last-Event-ID`` resumes from.

Status changes are events too: ``{"type": "status", "status": "running", "attempt": 1}``. A stream
ends after the event whose ``status`` is terminal (succeeded, failed or cancelled).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.to_thread
import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelport.jobs.tables import TERMINAL, Job, JobEvent
from modelport.registry.db import Database
from modelport.registry.tables import utcnow

MAX_EVENT_BYTES = 64 * 1024
PROGRESS_EVERY_S = 0.25
"""A worker stores at most one ``progress`` event of a job per this many seconds (others: all of them)."""
PROGRESS_KEYS = (
    "epoch",
    "epochs",
    "step",
    "steps",
    "steps_per_epoch",
    "total_steps",
    "samples",
    "loss",
    "lr",
    "batch_size",
    "throughput",
    "eta_s",
    "elapsed_s",
    "resumed_from",
    "metrics",
)
"""What ``GET /v1/jobs/{id}`` shows as ``progress``, taken from the latest event that carries it."""


@dataclass(frozen=True, slots=True)
class EventView:
    seq: int
    at: datetime
    type: str
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The event as the API and the SDK see it: ``{"seq", "at", "type", ...payload}``."""
        return {**self.data, "seq": self.seq, "at": self.at, "type": self.type}

    @property
    def ends_stream(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL


def clean_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe payload of an event (``type`` removed; oversized payloads cut to a note)."""
    payload = {str(k): v for k, v in event.items() if k not in ("type", "seq", "at")}
    raw = orjson.dumps(payload, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    if len(raw) > MAX_EVENT_BYTES:
        return {"truncated": True, "message": str(payload.get("message", ""))[:1000]}
    parsed: dict[str, Any] = orjson.loads(raw)
    return parsed


def append(session: Session, job_id: str, type_: str, data: dict[str, Any] | None = None) -> int:
    """Add event ``type_`` to the job in the caller's transaction; returns its number."""
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq)
    ).scalar_one()
    session.add(JobEvent(job_id=job_id, seq=seq, type=type_[:32], data=data or {}))
    return int(seq)


def since(db: Database, job_id: str, after: int, limit: int = 500) -> list[EventView]:
    """Events numbered above ``after``, oldest first."""
    with db.read() as s:
        rows = s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit)
        )
        return [EventView(seq=r.seq, at=r.at, type=r.type, data=dict(r.data)) for r in rows]


def merge_progress(progress: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The job's progress after ``event``: known keys overwrite, metrics accumulate.

    Metrics come flat (``{"metrics": {...}}``) or as an epoch's ``train`` and ``validation`` figures,
    which become ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``...
    """
    out = dict(progress)
    for key in PROGRESS_KEYS:
        if key in event and key != "metrics":
            out[key] = event[key]
    metrics: dict[str, Any] = {}
    for key, prefix in (("train", ""), ("validation", "val_"), ("metrics", "")):
        value = event.get(key)
        if isinstance(value, dict):
            metrics.update({prefix + k: v for k, v in value.items() if isinstance(v, int | float | str | None)})
    if metrics:
        out["metrics"] = {**out.get("metrics", {}), **metrics}
    return out


def sse_frame(event: EventView) -> bytes:
    """One server-sent event: ``id``, ``event`` (the type) and one line of JSON ``data``."""
    data = orjson.dumps(event.as_dict(), option=orjson.OPT_NON_STR_KEYS)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_NESTED_PREFIX = {"train": "", "validation": "val_", "metrics": "", "result": ""}


def log_line(event: EventView) -> str:
    """One human line for ``GET /v1/jobs/{id}/logs``: time, type, message or ``key=value`` pairs."""
    stamp = event.at.strftime("%Y-%m-%d %H:%M:%S")
    data = event.data
    if event.type == "log" and "message" in data:
        return f"{stamp} {str(data.get('level', 'info')).upper()} {data['message']}"
    parts: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            prefix = _NESTED_PREFIX.get(key, f"{key}.")
            parts.extend(f"{prefix}{k}={_number(v)}" for k, v in value.items() if not isinstance(v, dict | list | None))
        elif value is not None and not isinstance(value, list):
            parts.append(f"{key}={_number(value)}")
    return f"{stamp} {event.type} {' '.join(parts)}".rstrip()


def record(
    db: Database,
    job_id: str,
    worker: str,
    type_: str,
    data: dict[str, Any],
    *,
    skipped: dict[str, Any] | None = None,
) -> bool:
    """Store one event of a running job from its worker and fold it into ``progress``.

    ``skipped`` is a progress event that was not stored (throttled); it still updates ``progress``.
    Fenced by the lease: when the job is no longer running on ``worker`` (cancelled and reaped, or
    requeued to another worker) nothing is written and False comes back.
    """
    with db.write() as s:
        job = s.scalar(
            select(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running").with_for_update()
        )
        if job is None:
            return False
        job.progress = merge_progress(merge_progress(job.progress, skipped or {}), data)
        job.updated_at = utcnow()
        s.flush()
        append(s, job_id, type_, data)
        return True


class EventSink:
    """The ``report`` callback a worker hands to a job: stores events, throttling ``progress`` ones.

    ``progress`` events may arrive once per batch; storing each would make the database the
    bottleneck, so at most one per ``every_s`` is stored, and the latest one held back is folded into
    the job's ``progress`` with the next stored event. Every other type is stored at once.
    ``on_lost`` runs when the lease is gone (the job was requeued or ended elsewhere).
    """

    def __init__(
        self,
        db: Database,
        job_id: str,
        worker: str,
        *,
        on_lost: Callable[[], None],
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.db = db
        self.job_id = job_id
        self.worker = worker
        self.on_lost = on_lost
        self.every_s = every_s
        self._last_progress = float("-inf")
        self._held: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        type_ = str(event.get("type") or "log")
        payload = clean_payload(event)
        now = time.monotonic()
        with self._lock:
            if type_ == "progress":
                if now - self._last_progress < self.every_s:
                    self._held = payload
                    return
                self._last_progress = now
            held, self._held = self._held, None
            if not record(self.db, self.job_id, self.worker, type_, payload, skipped=held):
                self.on_lost()


def _status(db: Database, job_id: str) -> str | None:
    with db.read() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))


async def follow(
    db: Database,
    job_id: str,
    after: int,
    *,
    poll_s: float = 0.2,
    idle: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[EventView | None]:
    """Events above ``after``, then new ones as they are stored, until the job has ended.

    Yields None after each quiet poll, so the caller can send a keep-alive or notice that its client
    went away (``idle`` returning True ends the stream too).
    """
    last = after
    while True:
        batch = await anyio.to_thread.run_sync(since, db, job_id, last)
        for event in batch:
            last = event.seq
            yield event
            if event.ends_stream:
                return
        if batch:
            continue
        if await anyio.to_thread.run_sync(_status, db, job_id) in TERMINAL | {None}:
            if not await anyio.to_thread.run_sync(since, db, job_id, last):
                return  # ended before ``after``: nothing more will come
            continue
        if idle is not None and await idle():
            return
        yield None
        await anyio.sleep(poll_s)
