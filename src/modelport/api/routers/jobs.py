"""/v1/jobs: submit, list, get, cancel, follow (server-sent events) and read the logs of jobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.routers._json import json_response, page
from modelport.jobs import events, queue, visibility
from modelport.registry.db import Database

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0
"""A comment line at least this often keeps proxies from closing a quiet event stream."""


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["train", "sweep", "optimize"]
    spec: dict[str, Any] = Field(description="a training spec (train) or a sweep spec (sweep)")


@router.post("", status_code=201, summary="Submit a job; its spec is validated before it is queued")
def submit_job(body: JobSubmit, ctx: Ctx, who: Caller, client: Client) -> Response:
    view = queue.submit(ctx.db, ctx.settings, who, body.kind, body.spec, client=client)
    return json_response(view, 201)


@router.get("", summary="List the caller's jobs (admins: all) within the key's models, newest first")
def list_jobs(
    ctx: Ctx,
    who: Caller,
    status: Annotated[str | None, Query(description="queued, running, succeeded, failed or cancelled")] = None,
    kind: Annotated[str | None, Query(max_length=16)] = None,
    parent: Annotated[str | None, Query(max_length=64, description="the trials of this sweep")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    items, total = visibility.list_jobs(
        ctx.db, who, status=status, kind=kind, parent=parent, limit=limit, offset=offset
    )
    return json_response(page(items, total, limit, offset))


@router.get("/{job_id}", summary="A job: status, progress, result or error")
def get_job(job_id: str, ctx: Ctx, who: Caller) -> Response:
    return json_response(visibility.get_job(ctx.db, who, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a queued job now, or ask a running one to stop")
def cancel_job(job_id: str, ctx: Ctx, who: Caller, client: Client) -> Response:
    return json_response(visibility.cancel(ctx.db, who, job_id, client=client))


@router.get("/{job_id}/logs", summary="The job's events as text, one line each")
def job_logs(
    job_id: str,
    ctx: Ctx,
    who: Caller,
    tail: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> Response:
    return PlainTextResponse(visibility.read_log(ctx.db, who, job_id, tail=tail))


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: past events, then live ones until the job ends (resume with Last-Event-ID)",
    response_class=StreamingResponse,
)
async def job_events(
    job_id: str,
    request: Request,
    ctx: Ctx,
    who: Caller,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="same as the Last-Event-ID header")] = None,
) -> Response:
    view = await anyio.to_thread.run_sync(visibility.get_job, ctx.db, who, job_id)
    start = after if after is not None else _event_number(last_event_id)
    return StreamingResponse(
        _sse(ctx.db, view.id, start, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event_number(header: str | None) -> int:
    """The number in a Last-Event-ID header; anything else replays from the start."""
    if header and header.strip().isdigit() and len(header.strip()) <= 12:
        return int(header.strip())
    return 0


async def _sse(db: Database, job_id: str, after: int, request: Request) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    quiet_since = time.monotonic()
    async for event in events.follow(db, job_id, after, idle=request.is_disconnected):
        if event is not None:
            quiet_since = time.monotonic()
            yield events.sse_frame(event)
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
