"""Helpers shared by the format modules: bundle paths, error text, thread counts, signatures.

Everything here is about *untrusted* artifacts: paths are resolved and kept inside the bundle, and
error messages are scrubbed of server paths before they can reach an API response.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import InvalidArtifact, InvalidManifest
from modelport.store.bundle import Signature, TensorSpec, check_bundle_path

Files = dict[str, str]
"""What a ``save`` verb returns: bundle-relative path -> sha256 hex digest of the file written."""

DTYPE_NAMES: dict[str, str] = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "bool": "bool",
}
"""numpy dtype names that map 1:1 onto manifest dtypes; strings and objects become "string"."""

_ABS_PATH_RE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[\w.@+-]+[/\\])+[\w.@+-]*")
_MAX_ERROR_CHARS = 300


def resolve_entry(bundle_dir: Path, entrypoint: str) -> Path:
    """Return the real path of ``entrypoint`` inside ``bundle_dir``.

    The name is checked with the manifest path rules, then resolved with symlinks followed, so a
    symlink planted in the bundle cannot point the loader at a file outside it.
    """
    rel = check_bundle_path(entrypoint)
    root = bundle_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise InvalidArtifact(message=f"{rel!r} points outside the bundle")
    if not path.is_file():
        raise InvalidArtifact(message=f"the bundle has no file {rel!r}")
    return path


def inside(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` (symlinks followed) lies within ``root``."""
    return candidate.resolve().is_relative_to(root.resolve())


def describe_error(exc: BaseException, bundle_dir: Path | None = None, *, text: str | None = None) -> str:
    """A short, path-free description of a third-party exception (or of ``text``, its message as the
    caller read it), safe to show to the uploader.

    Framework errors often embed the absolute file name (and site-packages paths in tracebacks);
    the bundle directory is stripped and any other absolute path becomes ``<path>``.
    """
    text = (str(exc) if text is None else text) or type(exc).__name__
    if bundle_dir is not None:
        for root in {str(bundle_dir), str(bundle_dir.resolve())}:
            text = text.replace(root + os.sep, "").replace(root, "")
    text = _ABS_PATH_RE.sub("<path>", text)
    text = " ".join(text.split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def usable_cores() -> int:
    """CPU cores this process may run on (cgroup/affinity aware where the OS tells us)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_of(directory: Path, names: Iterable[str]) -> Files:
    """The ``Files`` record for files just written into ``directory``."""
    return {name: sha256_file(directory / name) for name in names}


def dtype_name(dtype: np.dtype[Any]) -> str:
    """Manifest dtype string for a numpy dtype; raise InvalidArtifact for ones we cannot serve."""
    if dtype.kind in ("U", "S", "O"):
        return "string"
    name = DTYPE_NAMES.get(dtype.name)
    if name is None:
        raise InvalidArtifact(message=f"the model uses dtype {dtype.name}, which Modelport cannot serve")
    return name


def default_output_names(count: int) -> list[str]:
    """``output`` for one output, ``output_0``.. ``output_{n-1}`` for several."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def batch_shape(shape: Iterable[int]) -> list[int]:
    """Per-example shape with a leading any-size batch dimension: (3, 4) -> [-1, 3, 4]."""
    return [-1, *[int(d) if int(d) > 0 else -1 for d in shape]]


def reconcile(inferred: Signature | None, given: Signature | None) -> Signature | None:
    """Merge the uploader's signature into the one read from the model, refusing contradictions.

    The uploader may narrow shapes (-1 -> a size), set ``allow_nan``, and list only some outputs;
    it may not rename inputs, change dtypes or change ranks.
    """
    if inferred is None or given is None:
        return given if inferred is None else inferred
    if {s.name for s in given.inputs} != {s.name for s in inferred.inputs}:
        raise InvalidManifest(
            message=(
                f"signature inputs {[s.name for s in given.inputs]} do not match the model's "
                f"inputs {[s.name for s in inferred.inputs]}"
            )
        )
    by_name = {s.name: s for s in given.inputs}
    inputs = [_merge_spec(spec, by_name[spec.name], "input") for spec in inferred.inputs]
    if not given.outputs:
        return Signature(inputs=inputs, outputs=list(inferred.outputs))
    known = {s.name: s for s in inferred.outputs}
    unknown = [s.name for s in given.outputs if s.name not in known]
    if unknown:
        raise InvalidManifest(message=f"signature outputs {unknown} are not outputs of the model ({sorted(known)})")
    outputs = [_merge_spec(known[s.name], s, "output") for s in given.outputs]
    return Signature(inputs=inputs, outputs=outputs)


def _merge_spec(model: TensorSpec, given: TensorSpec, kind: str) -> TensorSpec:
    if model.dtype != given.dtype:
        raise InvalidManifest(
            message=f"signature {kind} {given.name!r} says {given.dtype}, the model uses {model.dtype}"
        )
    if model.shape is None or given.shape is None:
        shape = given.shape if model.shape is None else model.shape
    elif len(model.shape) != len(given.shape) or any(
        m != g and -1 not in (m, g) for m, g in zip(model.shape, given.shape, strict=True)
    ):
        raise InvalidManifest(
            message=f"signature {kind} {given.name!r} has shape {given.shape}, the model {model.shape}"
        )
    else:
        shape = [g if m == -1 else m for m, g in zip(model.shape, given.shape, strict=True)]
    return TensorSpec(name=model.name, dtype=model.dtype, shape=shape, allow_nan=given.allow_nan)


def spec(name: str, dtype: str, shape: list[int] | None) -> TensorSpec:
    """Build a TensorSpec, turning a shape the manifest cannot express into InvalidArtifact."""
    try:
        return TensorSpec.model_validate({"name": name, "dtype": dtype, "shape": shape})
    except ValueError as exc:
        raise InvalidArtifact(
            message=f"tensor {name[:64]!r} ({dtype}, shape {shape}) cannot be described: "
            "Modelport takes at most 8 dimensions"
        ) from exc
