"""The contract every model format module fulfils.

Order of calls for an upload, then a load::

    fmt = formats.get("onnx")                          # or formats.detect(filename, head)
    info = fmt.inspect(bundle_dir, "model.onnx")      # validates the files, refuses pickle, infers signature
    ... the platform writes the manifest, stores blobs, commits the version ...
    predictor = fmt.load(bundle_dir, manifest)          # files already hash-checked into bundle_dir
    outputs = predictor({"input": batch})               # numpy in, numpy out, batch dimension first
    predictor.unload()

A format module exposes ``NAME``, ``EXTENSIONS``, ``inspect`` and ``load`` at module level, so that
``formats/__init__.py`` can type-check it against :class:`Format`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelport.serving.devices import Device
from modelport.store.bundle import Manifest, ManifestInput, Signature

Tensors = dict[str, np.ndarray]


class Predictor(Protocol):
    """A loaded model: call it with a batch of named arrays, get named arrays back.

    ``signature.inputs`` gives the names, dtypes and shapes it accepts; the caller has already cast the
    arrays to those dtypes. ``__call__`` must be thread-safe for one caller at a time and must not keep
    references to its inputs. ``memory_bytes`` is an estimate used by the runtime's cache.
    """

    signature: Signature
    memory_bytes: int

    def __call__(self, inputs: Tensors) -> Tensors: ...

    def unload(self) -> None: ...


@dataclass
class Inspection:
    """What ``inspect`` learned about an uploaded artifact."""

    signature: Signature | None
    """Inferred signature, or None where the format cannot tell (the uploader must then give one)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Format-specific facts to keep in the manifest's metrics (e.g. opset, parameter count)."""


class Format(Protocol):
    NAME: str
    EXTENSIONS: tuple[str, ...]

    def inspect(self, bundle_dir: Path, entrypoint: str, given: ManifestInput) -> Inspection: ...

    def load(self, bundle_dir: Path, manifest: Manifest, device: Device = "cpu") -> Predictor: ...
