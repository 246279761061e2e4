"""``modelport predict``: send raw inputs to a model version and show the decoded answer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape

from modelport.cli.output import client, console, emit, pretty, state, table

PREDICTION_COLUMNS = ("example", "rank", "label", "index", "score")


def read_inputs(inline: str | None, file: Path | None) -> Any:
    """The inputs from --input, --file or stdin; a body ``{"inputs": ...}`` is unwrapped."""
    if inline is not None and file is not None:
        raise typer.BadParameter("give --input or --file, not both")
    if inline is not None:
        raw, source = inline.encode(), "--input"
    elif file is not None:
        raw, source = file.read_bytes(), str(file)
    elif sys.stdin.isatty():
        raise typer.BadParameter("give --input JSON, --file inputs.json, or pipe JSON to stdin")
    else:
        raw, source = sys.stdin.buffer.read(), "stdin"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"{source} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and set(data) == {"inputs"}:
        return data["inputs"]
    return data


def prediction_rows(predictions: Any, *, ranked: bool) -> list[dict[str, Any]]:
    """Flatten argmax/top-k predictions (one example or a batch) into table rows.

    A list of picks is ambiguous on its own: one example's top-k (``ranked``) or a batch of argmax
    picks. The caller settles it from the version's manifest.
    """
    if isinstance(predictions, dict):
        examples: list[list[Any]] = [[predictions]]
    elif predictions and all(isinstance(p, list) for p in predictions):
        examples = list(predictions)
    elif predictions:
        examples = [list(predictions)] if ranked else [[p] for p in predictions]
    else:
        examples = []
    return [
        {"example": i, "rank": rank, **item}
        for i, ranking in enumerate(examples)
        for rank, item in enumerate(ranking, start=1)
    ]


def ranks_top_k(manifest: dict[str, Any]) -> bool:
    """Whether the version's decoding ends in top-k (the server keeps the last argmax/top-k step)."""
    picks = [step for step in manifest.get("postprocess") or [] if step.get("argmax") or step.get("top_k")]
    return bool(picks and picks[-1].get("top_k"))


def _render(answer: dict[str, Any], ranked: bool) -> Any:
    console.print(f"[bold]{escape(str(answer.get('model')))}[/] version {answer.get('version')}")
    if answer.get("predictions") is not None:
        return table(prediction_rows(answer["predictions"], ranked=ranked), PREDICTION_COLUMNS)
    return escape(pretty(answer.get("outputs")))


def predict(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name, name:3 (a version) or name@staging (an alias).")],
    inline: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Inputs as JSON, e.g. '[[0.1, 0.2, 0.3]]'."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            exists=True,
            dir_okay=False,
            help="JSON file with the inputs.",
        ),
    ] = None,
) -> None:
    """Predict with a model: inputs from --input, --file or stdin (one example, a batch or {name: array}).

    Prints the decoded predictions as a table when the version's manifest decodes them (argmax, top-k),
    else the raw outputs; --json prints the whole answer.
    """
    inputs = read_inputs(inline, file)
    with client(ctx) as mp:
        answer = mp.predict(ref, inputs)
        ranked = False
        if not state(ctx).json and isinstance(answer.get("predictions"), list):
            ranked = ranks_top_k(mp.get_version(answer["model"], answer["version"])["manifest"])
    emit(ctx, answer, lambda a: _render(a, ranked))
