"""Tell a model file's format from its name, first bytes and zip listing, and refuse pickle.

Nothing here deserializes anything: we read at most a few hundred bytes, a zip central directory,
or an ``.npy`` header (a Python literal, parsed without evaluation).
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from modelport.errors import UnsafeFormat, UnsupportedFormat

SUPPORTED = [
    ".onnx (onnx)",
    ".pt/.pth TorchScript (torchscript)",
    ".pt2 torch.export archive (torch_export)",
    ".safetensors with a layer list (torch)",
    ".skops (sklearn)",
    ".keras/.h5 (keras)",
]
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".sav", ".dill", ".cloudpickle", ".pck"})
INSTEAD_GENERIC = "ONNX, skops (for scikit-learn) or safetensors weights with the layer list (for torch)"
INSTEAD_TORCH = (
    "TorchScript (torch.jit.save), a torch.export archive (.pt2), ONNX, or safetensors weights with the layer list"
)
_HEAD_BYTES = 16
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_ZIP_ENTRIES = 100_000
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def read_head(path: Path, size: int = _HEAD_BYTES) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def is_pickle_header(head: bytes) -> bool:
    """Pickle protocols 2-5 start with PROTO (0x80) and the protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def looks_like_safetensors(head: bytes) -> bool:
    """A safetensors file starts with a little-endian u64 header size and then a JSON object.

    Needed because a header size of 0x280-0x580 bytes makes the file start with 0x80 0x02..0x05,
    which would otherwise read as a pickle protocol header.
    """
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def zip_names(path: Path) -> list[str] | None:
    """The member names of a zip file, or None when ``path`` is not a readable zip."""
    if read_head(path, 4) not in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None  # NotImplementedError: a zip "version needed" or method Python cannot read
    if len(infos) > _MAX_ZIP_ENTRIES:
        return None
    return [info.filename for info in infos]


def torch_zip_kind(names: list[str]) -> str | None:
    """Classify a PyTorch zip archive by its listing.

    torch.export (``torch.export.save``, torch 2.13) writes ``<root>/archive_format`` ("pt2"),
    ``<root>/models/<name>.json`` and ``<root>/data/...``; TorchScript (``torch.jit.save``) writes
    ``<root>/code/...`` and ``<root>/constants.pkl``; plain ``torch.save`` writes ``<root>/data.pkl``
    and no code. Returns "torch_export", "torchscript", "torch_save" or None.
    """
    rel = {_strip_root(n) for n in names}
    if "archive_format" in rel and any(r.startswith("models/") and r.endswith(".json") for r in rel):
        return "torch_export"
    if "serialized_exported_program.json" in rel:
        return "torch_export"  # pre-2.8 torch.export zip layout; _pt2_guard refuses it with a reason
    if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel:
        return "torch_save"
    return None


def _strip_root(name: str) -> str:
    parts = PurePosixPath(name).parts
    return "/".join(parts[1:]) if len(parts) > 1 else name


def npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """(shape, dtype) of the ``.npy`` data at ``handle``, read from its header only (no allocation).

    Raises ValueError, OSError or EOFError for a header that is not one.
    """
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return tuple(shape), dtype


def npy_has_objects(path: Path) -> bool:
    """True when an ``.npy`` file holds an object (pickled) array; read from its header only."""
    with path.open("rb") as handle:
        try:
            _, dtype = npy_header(handle)
        except (ValueError, OSError):
            return False
    return bool(dtype.hasobject)


def refuse_pickle(filename: str, path: Path) -> None:
    """Raise UnsafeFormat when the file is, or is named like, a pickle of any flavour.

    Covers pickle/joblib/dill names (also compressed, e.g. ``.pkl.gz``), any file starting with a
    pickle protocol 2-5 header (legacy ``torch.save`` too), ``torch.save`` zip archives, and ``.npy``
    files whose dtype holds Python objects.
    """
    name = PurePosixPath(filename).name
    suffixes = {s.lower() for s in PurePosixPath(name).suffixes}
    if suffixes & PICKLE_SUFFIXES:
        raise UnsafeFormat(filename=name, reason="it is a pickle file", instead=INSTEAD_GENERIC)
    head = read_head(path)
    if is_pickle_header(head) and not looks_like_safetensors(head):
        torchish = PurePosixPath(name).suffix.lower() in (".pt", ".pth", ".bin", ".pt2")
        raise UnsafeFormat(
            filename=name,
            reason="it is a torch.save pickle" if torchish else "it is a pickle",
            instead=INSTEAD_TORCH if torchish else INSTEAD_GENERIC,
        )
    if head.startswith(_NPY_MAGIC) and npy_has_objects(path):
        raise UnsafeFormat(
            filename=name, reason="it is a NumPy array of Python objects (pickle)", instead=INSTEAD_GENERIC
        )
    names = zip_names(path) if head.startswith(_ZIP_MAGIC) else None
    if names is not None and torch_zip_kind(names) == "torch_save":
        raise UnsafeFormat(filename=name, reason="it is a torch.save pickle", instead=INSTEAD_TORCH)


def detect(filename: str, path: Path) -> str:
    """Pick the format name for an uploaded file, refusing pickle and unknown files.

    The extension proposes, the bytes decide: a ``.pt`` is TorchScript or torch.export only if its
    zip listing says so. ``.onnx`` files are parsed and checked later, by ``onnx.inspect``.
    """
    refuse_pickle(filename, path)
    name = PurePosixPath(filename).name
    suffix = PurePosixPath(name).suffix.lower()
    head = read_head(path)
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".safetensors":
        return "torch"
    if suffix in (".h5", ".hdf5") and head.startswith(_HDF5_MAGIC):
        return "keras"
    names = zip_names(path) if head.startswith(_ZIP_MAGIC) else None
    if names is not None:
        found = _zip_format(suffix, names)
        if found is not None:
            return found
    raise UnsupportedFormat(filename=name, supported=SUPPORTED)


def _zip_format(suffix: str, names: list[str]) -> str | None:
    if suffix == ".skops" and "schema.json" in names:
        return "sklearn"
    if suffix == ".keras" and "config.json" in names:
        return "keras"
    if suffix in (".pt", ".pth", ".pt2", ".zip", ""):
        kind = torch_zip_kind(names)
        if kind in ("torchscript", "torch_export"):
            return kind
    return None
