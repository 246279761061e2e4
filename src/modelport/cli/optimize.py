"""``modelport optimize`` and ``modelport compare``: make smaller/faster versions, and see what they cost.

``optimize`` builds an optimize spec from a few options (or takes a spec file), submits it as a job
and follows it; every step registers a version whose report holds each figure beside its parent's.
``compare A B`` puts two versions' measured figures side by side with the ratio B/A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from modelport.cli.output import client, console, emit, state, table
from modelport.cli.train import Detach, follow, read_spec, summarize
from modelport.errors import NotFound

FIGURES = (
    ("accuracy", "accuracy"),
    ("errors", "test errors"),
    ("parameters", "parameters"),
    ("nonzero_parameters", "non-zero parameters"),
    ("model_bytes", "size on disk (bytes)"),
    ("latency_ms_b1", "latency batch 1 (ms)"),
    ("latency_ms_b256", "latency batch 256 (ms)"),
)


def optimize(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The version to start from: name:N, name@alias or name.")],
    prune: Annotated[
        float | None, typer.Option(help="Target sparsity, e.g. 0.9 (structured: fraction of neurons removed).")
    ] = None,
    method: Annotated[str, typer.Option(help="Pruning method: magnitude, random, taylor or structured.")] = "magnitude",
    scope: Annotated[str, typer.Option(help="Sparsity per layer or global.")] = "global",
    finetune: Annotated[int, typer.Option(help="Fine-tune this many epochs after pruning.")] = 0,
    quantize: Annotated[
        str | None, typer.Option(help="int8 (static, calibrated), int8-dynamic or int4 (weight-only).")
    ] = None,
    export: Annotated[bool, typer.Option("--export", help="Add an ONNX export step.")] = False,
    data_path: Annotated[
        str | None, typer.Option(help="Evaluation/calibration data as the worker sees it (MNIST IDX folder).")
    ] = None,
    data_source: Annotated[
        str, typer.Option(help="Data source kind for --data-path (mnist, idx, npz, csv, parquet).")
    ] = "mnist",
    dataset: Annotated[str | None, typer.Option(help="An uploaded dataset instead of --data-path.")] = None,
    builtin: Annotated[
        str | None, typer.Option(help="A built-in data set (digits, iris, wine, breast_cancer).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Register the results under this model (default: the source's).")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the last step's version.")] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option("--spec", help="An optimize spec file instead of the options.", exists=True, dir_okay=False),
    ] = None,
    detach: Detach = False,
) -> None:
    """Prune, fine-tune, quantize or export a version; each step becomes a new version with a report.

    Example: modelport optimize mnist-mlp:1 --prune 0.9 --finetune 2 --quantize int8

    Evaluation, calibration and fine-tuning use the data the source was trained on, unless
    --data-path, --dataset or --builtin says otherwise.
    """
    from modelport.client import optimize_spec

    if spec_file is not None:
        spec = {**read_spec(spec_file), "source": source}  # the argument names the version to start from
    else:
        data = _data(data_path, data_source, dataset, builtin)
        spec = optimize_spec(
            source,
            data=data,
            prune=prune,
            prune_method=method,
            scope=scope,
            finetune_epochs=finetune,
            quantize=quantize,
            export=export,
            model=model,
            alias=alias,
        )
        if not spec["steps"]:
            raise typer.BadParameter("give at least one of --prune, --finetune, --quantize, --export (or --spec)")
    with client(ctx) as mp:
        job = mp.submit_job("optimize", spec)
        if detach:
            emit(ctx, job, lambda j: j["id"])
            return
        if not state(ctx).json:
            console.print(f"job [bold]{job['id']}[/] queued (optimize); Ctrl-C stops following, not the job")
        final = follow(ctx, mp, job)
        if final["status"] == "succeeded" and not state(ctx).json:
            for step in (final.get("result") or {}).get("steps", []):
                name, number = step["ref"].rsplit(":", 1)
                console.print(_report_table(mp.report(name, int(number))))
        summarize(ctx, final)


def compare(
    ctx: typer.Context,
    first: Annotated[str, typer.Argument(help="Version A: name:N.")],
    second: Annotated[str, typer.Argument(help="Version B: name:N.")],
) -> None:
    """Show two versions' measured figures side by side, with the ratio B/A.

    Figures come from optimize reports (a version's own, or its child's view of it as a parent);
    a version with neither shows its recorded test accuracy and file sizes.
    """
    a_name, a_number = _ref(first)
    b_name, b_number = _ref(second)
    with client(ctx) as mp:
        a = _figures(mp, a_name, a_number)
        b = _figures(mp, b_name, b_number)
        a_report, b_report = _report(mp, a_name, a_number), _report(mp, b_name, b_number)
    # A parent has no report of its own; its child's report measured it in the same run.
    for child_report, parent_figures, parent_ref in ((b_report, a, first), (a_report, b, second)):
        if child_report is not None and child_report.get("parent") == parent_ref:
            for key, row in child_report.get("figures", {}).items():
                parent_figures.setdefault(key, row.get("parent"))
    rows = []
    for key, label in FIGURES:
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            continue
        ratio = vb / va if isinstance(va, int | float) and isinstance(vb, int | float) and va else None
        rows.append({"figure": label, first: va, second: vb, "B/A": f"{ratio:.3g}" if ratio is not None else None})
    columns = ("figure", first, second, "B/A")
    shown = [{k: _shown(v) for k, v in row.items()} for row in rows]  # --json keeps the numbers as they are
    emit(ctx, {"a": first, "b": second, "figures": rows}, lambda d: table(shown, columns))


def _shown(value: Any) -> Any:
    """Floats to four significant digits (accuracies, milliseconds); integers and text as they are."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _data(path: str | None, kind: str, dataset: str | None, builtin: str | None) -> dict[str, Any] | None:
    given = [x for x in (path, dataset, builtin) if x is not None]
    if not given:
        return None  # the server uses what the source version was trained on
    if len(given) != 1:
        raise typer.BadParameter("give at most one of --data-path, --dataset, --builtin (the evaluation data)")
    if dataset is not None:
        return {"source": "dataset", "name": dataset}
    if builtin is not None:
        return {"source": "builtin", "name": builtin}
    return {"source": kind, "path": path}


def _ref(text: str) -> tuple[str, int]:
    name, _, number = text.partition(":")
    if not name or not number.isdigit():
        raise typer.BadParameter(f"{text!r}: give a version as name:N")
    return name, int(number)


def _report(mp: Any, name: str, number: int) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = mp.report(name, number)
    except NotFound:
        return None
    return found


def _figures(mp: Any, name: str, number: int) -> dict[str, Any]:
    """A version's own measured figures: its report's values, else what its manifest recorded."""
    version = mp.get_version(name, number)
    report = version["manifest"].get("report")
    if isinstance(report, dict):
        return {k: row.get("value") for k, row in report.get("figures", {}).items()}
    metrics = version["manifest"].get("metrics") or {}
    entry = version["manifest"].get("entrypoint")
    sizes = [f["size_bytes"] for f in version.get("files", []) if f["path"] == entry]
    out: dict[str, Any] = {"parameters": metrics.get("parameters"), "model_bytes": sizes[0] if sizes else None}
    if isinstance(metrics.get("test_accuracy"), int | float):
        out["accuracy"] = metrics["test_accuracy"]
    return {k: v for k, v in out.items() if v is not None}


def _report_table(report: dict[str, Any]) -> Any:
    rows = []
    for key, label in FIGURES:
        row = report.get("figures", {}).get(key)
        if row is None:
            continue
        ratio = row.get("ratio")
        delta = row.get("delta_points")
        change = f"{ratio:.3g}x" if ratio is not None else (f"{delta:+.2f} pts" if delta is not None else "")
        rows.append(
            {"figure": label, "parent": _shown(row.get("parent")), "this": _shown(row.get("value")), "change": change}
        )
    kind = (report.get("transform") or {}).get("kind", "step")
    title = f"{report['model']}:{report['version']} ({kind} of {report.get('parent')})"
    return table(rows, ("figure", "parent", "this", "change"), title=title)
