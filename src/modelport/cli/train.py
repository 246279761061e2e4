"""``modelport train`` and ``modelport sweep``: submit a spec file and follow the job live.

Following reads the job's server-sent events through the SDK (``Client.job_events``): a progress
bar with the epoch, loss, metrics and ETA, one line per status change, log message or sweep trial.
The exit code says how the job ended: 0 succeeded, 1 failed or cancelled.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from modelport.cli.output import EXIT_GENERIC, client, console, emit, fail, state, table, to_json

if TYPE_CHECKING:
    from modelport.client import Client

SHOWN_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "mae", "val_mae")
SpecFile = Annotated[Path, typer.Argument(help="The spec file (YAML or JSON).", exists=True, dir_okay=False)]
Detach = Annotated[bool, typer.Option("--detach", "-d", help="Print the job id and return at once.")]


def read_spec(path: Path) -> dict[str, Any]:
    """The spec file as a dict; a usage error (not a traceback) when it is not a YAML/JSON mapping."""
    import yaml

    from modelport.client._jobs import job_spec

    try:
        return job_spec(path)
    except (yaml.YAMLError, ValueError) as exc:
        raise typer.BadParameter(f"{path} is not a YAML/JSON mapping ({type(exc).__name__})") from None


def _figures(values: dict[str, Any], keys: tuple[str, ...] = SHOWN_METRICS) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k in keys and isinstance(v, int | float))


class JobView:
    """The live view of one job: a rich progress bar fed by its events."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[where]}"),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(job["kind"], total=None, where="", figures="", eta="")

    def __enter__(self) -> JobView:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def _line(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "status":
            self._status(event)
        elif kind == "started":
            self.progress.update(self.task, total=event.get("epochs"))
        elif kind == "progress":
            self._step(event)
        elif kind == "epoch":
            figures = {**event.get("train", {}), **{f"val_{k}": v for k, v in event.get("validation", {}).items()}}
            where = f"epoch {event.get('epoch')}/{event.get('epochs')}"
            self.progress.update(self.task, completed=event.get("epoch"), where=where, figures=_figures(figures))
        elif kind == "log":
            self._line(f"[dim]{escape(str(event.get('message', '')))}[/]")
        elif kind == "trial":
            self._trial(event)
        elif kind == "step":
            self._optimize_step(event)

    def _status(self, event: dict[str, Any]) -> None:
        status = event.get("status")
        if status == "running" and "trials" in event:
            self.progress.update(self.task, total=event["trials"], where=f"0/{event['trials']} trials")
        detail = event.get("reason") or (f"attempt {event['attempt']}" if "attempt" in event else "")
        self._line(f"{escape(str(status))}" + (f" [dim]({escape(str(detail))})[/]" if detail else ""))

    def _step(self, event: dict[str, Any]) -> None:
        epoch, steps = event.get("epoch") or 1, event.get("steps_per_epoch") or 0
        done = epoch - 1 + (min(event.get("step", 0), steps) / steps if steps else 0)
        eta = event.get("eta_s")
        self.progress.update(
            self.task,
            completed=done,
            where=f"epoch {epoch}/{event.get('epochs')}",
            figures=f"loss {event['loss']:.4g}" if isinstance(event.get("loss"), int | float) else "",
            eta=f"eta {eta:.0f}s" if isinstance(eta, int | float) else "",
        )

    def _optimize_step(self, event: dict[str, Any]) -> None:
        where = f"step {int(event.get('index', 0)) + 1}"
        if event.get("status") == "registered":
            figures = event.get("figures") or {}
            shown = "  ".join(
                f"{k} {figures[k]:.4g}"
                for k in ("accuracy", "model_bytes", "latency_ms_b256")
                if isinstance(figures.get(k), int | float)
            )
            self._line(
                f"{where} ({escape(str(event.get('kind')))}) registered {escape(str(event.get('ref')))}  {shown}"
            )
        else:
            self.progress.update(
                self.task, description=f"{where}/{event.get('of', '?')} {event.get('kind')}", completed=0
            )

    def _trial(self, event: dict[str, Any]) -> None:
        self.progress.advance(self.task)
        total = self.progress.tasks[0].total
        self.progress.update(self.task, where=f"{int(self.progress.tasks[0].completed)}/{total} trials")
        params = ", ".join(f"{k}={v}" for k, v in (event.get("params") or {}).items())
        figures = _figures(event.get("metrics") or {}, (*SHOWN_METRICS, "test_accuracy"))
        self._line(f"trial {event.get('trial')} {escape(str(event.get('status')))}: {escape(params)}  {figures}")


def follow(ctx: typer.Context, mp: Client, job: dict[str, Any]) -> dict[str, Any]:
    """Show the job's events until it ends (JSON lines with --json); return the final job."""
    if state(ctx).json:
        for event in mp.job_events(job["id"]):
            sys.stdout.write(to_json(event).replace("\n", "") + "\n")
        return mp.get_job(job["id"])
    with JobView(job) as view:
        for event in mp.job_events(job["id"]):
            view.on_event(event)
    return mp.get_job(job["id"])


def summarize(ctx: typer.Context, job: dict[str, Any]) -> None:
    """The end of a followed job: its result (or error), then exit 0 only if it succeeded."""
    if state(ctx).json:
        sys.stdout.write(to_json(job) + "\n")
    elif job["status"] == "succeeded":
        result = job.get("result") or {}
        if job["kind"] == "sweep":
            console.print(sweep_table(result))
        if job["kind"] == "optimize":
            console.print(
                f"[green]✓[/] job {job['id']} succeeded: registered {', '.join(result.get('versions') or [])}"
            )
            return
        alias = f" (alias {result['alias']})" if result.get("alias") else ""
        console.print(
            f"[green]✓[/] job {job['id']} succeeded: registered {result.get('model')}:{result.get('version')}{alias}"
        )
        figures = _figures(
            result.get("metrics") or result.get("best", {}).get("metrics") or {}, (*SHOWN_METRICS, "test_accuracy")
        )
        if figures:
            console.print(f"  {figures}")
    if job["status"] != "succeeded":
        if not state(ctx).json:
            fail(f"job {job['id']} {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
        raise typer.Exit(EXIT_GENERIC)


def sweep_table(result: dict[str, Any]) -> Any:
    """The ranked trials: rank, trial, status, each parameter, the metric."""
    metric = result.get("metric", "value")
    rows = result.get("trials") or []
    names = list(dict.fromkeys(k for row in rows for k in row.get("params", {})))
    flat = [
        {
            **{"rank": r["rank"], "trial": r["trial"], "status": r["status"]},
            **r.get("params", {}),
            metric: f"{r[metric]:.4g}" if isinstance(r.get(metric), int | float) else None,
        }
        for r in rows
    ]
    return table(
        flat, ("rank", "trial", "status", *names, metric), title=f"trials by {metric} ({result.get('mode', 'max')})"
    )


def _submit(ctx: typer.Context, kind: str, spec_file: Path, detach: bool) -> None:
    spec = read_spec(spec_file)
    with client(ctx) as mp:
        job = mp.submit_job(kind, spec)
        if detach:
            emit(ctx, job, lambda j: j["id"])
            return
        if not state(ctx).json:
            console.print(f"job [bold]{job['id']}[/] queued ({kind}); Ctrl-C stops following, not the job")
        summarize(ctx, follow(ctx, mp, job))


def train(ctx: typer.Context, spec_file: SpecFile, detach: Detach = False) -> None:
    """Train a model from a spec file on the server and follow it with a live progress bar.

    The server validates the spec first (a typo is an error naming the field), runs it on a job
    worker and registers the result as a new version (`register: {model, alias}` in the spec).
    """
    _submit(ctx, "train", spec_file, detach)


def sweep(ctx: typer.Context, spec_file: SpecFile, detach: Detach = False) -> None:
    """Run a hyper-parameter sweep (one training job per combination) and show the ranked trials.

    The spec has `base` (a training spec), `search` (grid or random with `trials`), `parameters`
    (dotted paths to lists of values), `metric` and `mode`. Only the best trial is registered.
    """
    _submit(ctx, "sweep", spec_file, detach)
