"""``modelport upload``: send model files as a new version, with a manifest built from flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from modelport.cli.output import client, done

FORMATS = ("onnx", "torchscript", "torch_export", "torch", "sklearn", "keras")


def read_manifest(path: Path | None) -> dict[str, Any]:
    """The --manifest file as a dict (a usage error, not a traceback, when it is not a JSON object)."""
    if path is None:
        return {}
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path} is not valid JSON ({exc})", param_hint="--manifest") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object", param_hint="--manifest")
    return data


def build_manifest(
    base: dict[str, Any],
    *,
    fmt: str | None,
    description: str | None,
    labels: str | None,
    preprocess_scale: float | None,
    postprocess: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest to send: the file's fields, with every flag that was given replacing its field."""
    manifest = dict(base)
    if fmt is not None:
        manifest["format"] = fmt
    if description is not None:
        manifest["description"] = description
    if labels is not None:
        manifest["labels"] = [label.strip() for label in labels.split(",")]
    if preprocess_scale is not None:
        manifest["preprocess"] = [{"scale": preprocess_scale}]
    if postprocess:
        manifest["postprocess"] = postprocess
    return manifest


def postprocess_steps(softmax: bool, sigmoid: bool, argmax: bool, top_k: int | None) -> list[dict[str, Any]]:
    """Decoding steps in the order they must run: activation first, then the pick."""
    steps: list[dict[str, Any]] = []
    if softmax:
        steps.append({"softmax": True})
    if sigmoid:
        steps.append({"sigmoid": True})
    if argmax:
        steps.append({"argmax": True})
    if top_k is not None:
        steps.append({"top_k": top_k})
    return steps


Files = Annotated[
    list[Path],
    typer.Argument(exists=True, dir_okay=False, readable=True, help="Model file(s); the first is the entrypoint."),
]
ManifestFile = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False, help="JSON manifest (signature, preprocess...); flags override it."),
]
Format = Annotated[str | None, typer.Option("--format", help=f"One of {', '.join(FORMATS)}; detected when left out.")]
Description = Annotated[str | None, typer.Option("--description", "-d", help="What changed in this version.")]
Labels = Annotated[str | None, typer.Option(help="Class labels, comma separated: cat,dog,bird.")]
Scale = Annotated[float | None, typer.Option(help="Multiply inputs by this first (e.g. 0.00392 for pixels).")]
Softmax = Annotated[bool, typer.Option("--softmax", help="Apply softmax to the first output.")]
Sigmoid = Annotated[bool, typer.Option("--sigmoid", help="Apply sigmoid to the first output.")]
Argmax = Annotated[bool, typer.Option("--argmax", help="Return the top class as 'predictions'.")]
TopK = Annotated[int | None, typer.Option(min=1, max=1000, help="Return the k best classes as 'predictions'.")]
Alias = Annotated[str | None, typer.Option(help="Point this alias (e.g. production) at the new version.")]


def upload(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name; registered first if it does not exist.")],
    files: Files,
    manifest: ManifestFile = None,
    fmt: Format = None,
    description: Description = None,
    labels: Labels = None,
    preprocess_scale: Scale = None,
    softmax: Softmax = False,
    sigmoid: Sigmoid = False,
    argmax: Argmax = False,
    top_k: TopK = None,
    alias: Alias = None,
) -> None:
    """Upload model files as a new version of NAME (the model is created if missing).

    The server refuses pickle, checks that the model loads and infers its signature where the format
    records one. Example: modelport upload mnist model.onnx --preprocess-scale 0.00392 --softmax --argmax
    --labels 0,1,2,3,4,5,6,7,8,9 --alias production
    """
    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(FORMATS)}", param_hint="--format")
    body = build_manifest(
        read_manifest(manifest),
        fmt=fmt,
        description=description,
        labels=labels,
        preprocess_scale=preprocess_scale,
        postprocess=postprocess_steps(softmax, sigmoid, argmax, top_k),
    )
    with client(ctx) as mp:
        view = mp.upload(name, files, manifest=body or None)
        if alias:
            mp.set_alias(name, alias, view["version"])
            view["aliases"] = sorted({*view.get("aliases", []), alias})
    suffix = f" (alias {alias})" if alias else ""
    done(ctx, f"uploaded {name} version {view['version']}{suffix}", view)
