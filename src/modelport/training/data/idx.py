"""IDX files (the MNIST format), gzip-compressed or not, parsed with strict bounds checks.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension,
then the data in C order. Only the unsigned-byte type (0x08) that MNIST uses is accepted; the declared
size must match the payload exactly, so a truncated or padded file is refused, not misread.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from modelport.errors import InvalidArtifact

MAX_DIMS = 4
MAX_ELEMENTS = 1 << 31
UBYTE = 0x08


def parse_idx(data: bytes) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a uint8 array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InvalidArtifact(message="not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != UBYTE:
        raise InvalidArtifact(message=f"IDX type 0x{dtype_code:02x} is not supported (only unsigned bytes)")
    if not 1 <= ndim <= MAX_DIMS:
        raise InvalidArtifact(message=f"IDX files with {ndim} dimensions are not supported")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidArtifact(message="IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for dim in shape:
        count *= dim
    if count > MAX_ELEMENTS or len(data) - header != count:
        raise InvalidArtifact(message=f"IDX payload has {len(data) - header} bytes, header says {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file; ``.gz`` files are decompressed only as far as their header declares (plus one
    byte, to notice a longer payload), so a gzip bomb cannot make us inflate more than that."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = _gunzip_declared(path)
        except (OSError, EOFError, zlib.error):  # BadGzipFile is an OSError
            raise InvalidArtifact(message="IDX file is not valid gzip (damaged or truncated)") from None
    return parse_idx(raw)


def _gunzip_declared(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        ndim = head[3] if len(head) == 4 and head[3] <= MAX_DIMS else 0
        head += f.read(4 * ndim)
        count = math.prod(struct.unpack(f">{ndim}I", head[4:])) if len(head) == 4 + 4 * ndim else 0
        return head + f.read(min(count, MAX_ELEMENTS) + 1)


def load_mnist(folder: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) from the four standard MNIST file names."""
    prefix = "train" if split == "train" else "t10k"
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find(folder, f"{prefix}-labels-idx1-ubyte")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InvalidArtifact(message="MNIST images and labels do not match")
    return x, y


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise InvalidArtifact(message=f"MNIST file {stem}[.gz] not found in the data folder")


def find_mnist_files(folder: Path) -> list[Path]:
    """The standard MNIST file names present in ``folder`` (gzip or not), for hashing the data set."""
    found: list[Path] = []
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        found.extend(c for c in (folder / f"{stem}.gz", folder / stem) if c.is_file())
    return found


def has_test_split(folder: Path) -> bool:
    """True when both t10k files are present (a folder without them has no test split of its own)."""
    names = {p.name.removesuffix(".gz") for p in find_mnist_files(folder)}
    return {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"} <= names
