"""``modelport predict``: send raw inputs to a model version and show the decoded answer."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from modelport.cli.output import client, console, emit, table, to_json

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


def prediction_rows(predictions: Any) -> list[dict[str, Any]]:
    """Flatten argmax/top-k predictions (one example or a batch) into table rows."""
    if isinstance(predictions, dict):
        examples: list[Any] = [[predictions]]
    elif predictions and isinstance(predictions[0], dict):
        # A list of dicts is either one example's top-k or a batch of argmax picks.
        ranked = len(predictions) > 1 and all("score" in p for p in predictions) and _descending(predictions)
        examples = [predictions] if ranked else [[p] for p in predictions]
    else:
        examples = list(predictions or [])
    rows = []
    for i, ranking in enumerate(examples):
        for rank, item in enumerate(ranking if isinstance(ranking, list) else [ranking], start=1):
            rows.append({"example": i, "rank": rank, **item})
    return rows


def _descending(items: list[dict[str, Any]]) -> bool:
    scores = [p.get("score") for p in items]
    return all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(scores))


def _render(answer: dict[str, Any]) -> Any:
    console.print(f"[bold]{answer.get('model')}[/] version {answer.get('version')}")
    if answer.get("predictions") is not None:
        return table(prediction_rows(answer["predictions"]), PREDICTION_COLUMNS)
    return to_json(answer.get("outputs"))


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
    emit(ctx, answer, _render)
