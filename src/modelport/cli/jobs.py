"""``modelport jobs``: list, inspect, follow, cancel jobs and read their logs."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelport.cli.output import client, console, done, emit, emit_table, group, record, state
from modelport.cli.train import follow, summarize, sweep_table

app = group("List, inspect, follow and cancel jobs (training runs and sweeps).")

JobId = Annotated[str, typer.Argument(help="The job id (as printed by `modelport train`).")]
JOB_COLUMNS = ("id", "kind", "status", "where", "result", "owner", "created_at")


def _where(job: dict[str, Any]) -> str:
    """Where a job stands, in a few words: ``epoch 3/10``, ``4/8 trials``, or its status."""
    progress = job.get("progress") or {}
    if "trials" in progress:
        return f"{progress.get('trials_done', 0)}/{progress['trials']} trials"
    if "epoch" in progress:
        return f"epoch {progress['epoch']}/{progress.get('epochs', '?')}"
    return "-"


def _result(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    if result.get("model"):
        return f"{result['model']}:{result.get('version')}"
    return (job.get("error") or "-")[:60]


def _row(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "where": _where(job), "result": _result(job)}


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled.")] = None,
    kind: Annotated[str | None, typer.Option(help="train or sweep.")] = None,
    sweep: Annotated[str | None, typer.Option(help="Only the trials of this sweep job.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
) -> None:
    """List your jobs (admins: everyone's), newest first."""
    with client(ctx) as mp:
        page = mp.list_jobs(status=status, kind=kind, parent=sweep, limit=limit, offset=offset)
    if state(ctx).json:
        emit(ctx, page)
        return
    emit_table(ctx, [_row(j) for j in page["items"]], JOB_COLUMNS, "no jobs yet; start one with `modelport train`")


def _job_view(job: dict[str, Any]) -> Any:
    summary = {k: v for k, v in job.items() if k not in ("spec", "progress", "result")}
    console.print(record(summary, title=f"{job['kind']} job {job['id']}"))
    progress = job.get("progress") or {}
    if progress:
        console.print(record(progress, title="progress"))
    result = job.get("result") or {}
    if job["kind"] == "sweep" and result.get("trials"):
        return sweep_table(result)
    return record(result, title="result") if result else None


@app.command("get")
def get_job(ctx: typer.Context, job_id: JobId) -> None:
    """Show a job: status, progress (epoch, loss, metrics, ETA), result or error."""
    with client(ctx) as mp:
        emit(ctx, mp.get_job(job_id), _job_view)


@app.command("follow")
def follow_job(ctx: typer.Context, job_id: JobId) -> None:
    """Follow a job live until it ends; exit 0 if it succeeded, 1 otherwise."""
    with client(ctx) as mp:
        job = mp.get_job(job_id)
        summarize(ctx, follow(ctx, mp, job))


@app.command("cancel")
def cancel_job(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel a job: a queued one at once, a running one at its next step (a sweep with its trials)."""
    with client(ctx) as mp:
        job = mp.cancel_job(job_id)
    word = "cancelled" if job["status"] == "cancelled" else "asked to stop"
    done(ctx, f"job {job_id} {word}", job)


@app.command("logs")
def job_logs(
    ctx: typer.Context,
    job_id: JobId,
    tail: Annotated[int | None, typer.Option(min=1, help="Only the last N lines.")] = None,
) -> None:
    """Print a job's log: one line per event (status, epochs, checkpoints, messages)."""
    with client(ctx) as mp:
        text = mp.job_logs(job_id, tail=tail)
    if state(ctx).json:
        emit(ctx, {"id": job_id, "lines": text.splitlines()})
    else:
        sys.stdout.write(text)
        if not text:
            console.print(escape("(no events yet)"))
