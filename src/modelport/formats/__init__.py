"""Model file formats: one module per on-disk format, each with the same verbs.

Every module exposes ``NAME``, ``EXTENSIONS``, ``inspect(bundle_dir, entrypoint, given)``,
``load(bundle_dir, manifest)`` and a ``save(obj, directory, ...)`` helper. ``FORMATS`` is typed as
``dict[str, Format]``, so mypy checks each module against the :class:`~modelport.formats.base.Format`
protocol and a missing verb fails type-checking rather than an upload.

    fmt = formats.get(formats.detect("mnist.onnx", path))   # refuses pickle, unknown files
    info = fmt.inspect(bundle_dir, "mnist.onnx", given)      # validates, infers the signature
    predictor = fmt.load(bundle_dir, manifest)               # after the platform stored the version
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from modelport.errors import UnsupportedFormat
from modelport.formats._sniff import SUPPORTED, detect, refuse_pickle
from modelport.formats.base import Format, Inspection, Predictor, Tensors

__all__ = ["FORMATS", "Format", "Inspection", "Predictor", "Tensors", "detect", "get", "refuse_pickle"]

FORMATS: dict[str, str] = {
    "onnx": "modelport.formats.onnx",
    "torchscript": "modelport.formats.torchscript",
    "torch_export": "modelport.formats.torch_export",
    "torch": "modelport.formats.torch",
    "sklearn": "modelport.formats.sklearn",
    "keras": "modelport.formats.keras",
}
"""Format name -> module, imported on first use: torch, onnxruntime and skops cost seconds to import, and
a server (or the CLI, which imports this package indirectly) should only pay for the formats it uses."""

if TYPE_CHECKING:
    # mypy checks every module against the Format protocol here, so a missing verb fails type-checking.
    from modelport.formats import keras, onnx, sklearn, torch, torch_export, torchscript

    _CHECKED: dict[str, Format] = {
        onnx.NAME: onnx,
        torchscript.NAME: torchscript,
        torch_export.NAME: torch_export,
        torch.NAME: torch,
        sklearn.NAME: sklearn,
        keras.NAME: keras,
    }


def get(name: str) -> Format:
    """The format module called ``name`` (imported now if needed); UnsupportedFormat names the known ones."""
    module = FORMATS.get(name)
    if module is None:
        raise UnsupportedFormat(filename=f"format={name[:40]}", supported=SUPPORTED)
    return cast(Format, importlib.import_module(module))
