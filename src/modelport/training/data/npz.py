"""NumPy ``.npz`` archives, read with ``allow_pickle=False`` so an object array cannot run code.

Arrays: ``x`` and ``y`` (names configurable with ``features``/``target``), optionally ``x_test`` and
``y_test`` (the source's own test split) and ``labels`` (class names, strings).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from modelport.errors import InvalidArtifact
from modelport.formats._sniff import npy_header
from modelport.training.data.sources import Source, Table, encode_labels, sha256_files

MAX_ARRAY_BYTES = 8 << 30


def load_npz(path: Path, *, x_key: str = "x", y_key: str = "y") -> Source:
    """Train (and optional test) tables from an NPZ file; refuses pickled object arrays."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: _read(archive, k) for k in archive.files if k in (x_key, y_key, "x_test", "y_test", "labels")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise InvalidArtifact(
            message=f"not a readable .npz file without pickled objects ({type(exc).__name__})"
        ) from None
    missing = [k for k in (x_key, y_key) if k not in arrays]
    if missing:
        raise InvalidArtifact(message=f"the .npz file has no array(s) {missing}; it holds inputs and targets")
    y, classes = encode_labels(arrays[y_key], "y")
    train = Table(_numeric(arrays[x_key], x_key), y)
    test = None
    if "x_test" in arrays and "y_test" in arrays:
        test = Table(_numeric(arrays["x_test"], "x_test"), encode_labels(arrays["y_test"], "y_test")[0])
    if "labels" in arrays:
        classes = [str(v) for v in arrays["labels"].reshape(-1).tolist()]
    return Source(train, test, classes, sha256_files([path]))


def _read(archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """One array, after checking its declared size (no decompression or allocation bomb)."""
    check_member(archive, key)
    return np.asarray(archive[key])


def check_member(archive: np.lib.npyio.NpzFile, key: str) -> None:
    """Refuse an array before numpy allocates it: numpy allocates the shape an ``.npy`` header declares
    before reading any data, so a 300-byte member can declare terabytes. The declared bytes must fit
    in the member's uncompressed size (from the zip directory, itself capped), and an object dtype
    (which needs pickle) is refused from the header alone."""
    directory = archive.zip
    if directory is None:
        return
    info = directory.getinfo(f"{key}.npy")
    if info.file_size > MAX_ARRAY_BYTES:
        raise InvalidArtifact(message=f"array {key!r} is larger than {MAX_ARRAY_BYTES} bytes")
    with directory.open(info) as member:
        try:
            shape, dtype = npy_header(member)
        except (ValueError, OSError, EOFError):
            raise InvalidArtifact(message=f"array {key!r} has an unreadable .npy header") from None
        header_bytes = member.tell()
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")  # the callers' pickle path
    declared = math.prod(int(d) for d in shape) * dtype.itemsize
    if declared > info.file_size - header_bytes:
        raise InvalidArtifact(
            message=f"array {key!r} declares {declared} bytes but holds {max(info.file_size - header_bytes, 0)}"
        )


def _numeric(arr: np.ndarray, key: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf" or arr.ndim < 1:
        raise InvalidArtifact(message=f"array {key!r} must hold numbers, one row per example")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidArtifact(message=f"array {key!r} contains NaN or infinity")
    return arr
