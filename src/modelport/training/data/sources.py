"""Load a spec's ``data`` section into arrays: one entry point over every supported source.

A loader returns a :class:`Source`: the training examples, the source's own test split where it has
one, class names where the file carries them, and the sha256 of the bytes read (the version's
lineage). Splitting and preprocessing happen afterwards (splits.py, preprocess.py) so every source
gets the same treatment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from modelport.errors import BadRequest, InvalidArtifact
from modelport.training.spec import DataSpec

ResolveDataset = Callable[[str], Path]
MNIST_CLASSES = [str(i) for i in range(10)]
_SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Table:
    """Examples as stored: ``x`` (N, *example_shape) numbers; ``y`` (N,) int64 class ids or float targets."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise InvalidArtifact(message=f"{self.x.shape[0]} examples but {self.y.shape[0]} targets")
        if self.x.shape[0] == 0:
            raise InvalidArtifact(message="the data set has no examples")

    def head(self, n: int | None) -> Table:
        return self if n is None or n >= len(self.y) else Table(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Source:
    """What a loader read: train (and maybe test) tables, class names, and the sha256 of the bytes."""

    train: Table
    test: Table | None
    classes: list[str] | None
    sha256: str


def load_source(spec: DataSpec, resolve_dataset: ResolveDataset | None = None) -> Source:
    """Read the examples a spec names; raises BadRequest/InvalidArtifact with a clear message."""
    kind: str = spec.source
    path = Path(spec.path) if spec.path else None
    if kind == "builtin":
        from modelport.training.data.builtin import load_builtin

        source = load_builtin(str(spec.name))
    else:
        if kind == "dataset":
            kind, path = _resolve(spec, resolve_dataset)
        assert path is not None  # the spec validator guarantees a path for file sources
        source = _load_file(kind, path, spec)
    return replace(
        source,
        train=source.train.head(spec.max_samples),
        test=source.test.head(spec.max_test_samples) if source.test is not None else None,
    )


def _resolve(spec: DataSpec, resolve_dataset: ResolveDataset | None) -> tuple[str, Path]:
    if resolve_dataset is None:
        raise BadRequest(message="this runner cannot resolve datasets by name; give data.path instead")
    path = resolve_dataset(str(spec.name))
    kind = spec.format or ("idx" if path.is_dir() else _SUFFIX_FORMATS.get(path.suffix.lower()))
    if kind is None:
        raise BadRequest(message=f"dataset {spec.name!r}: cannot tell its format; set data.format")
    return kind, path


def _load_file(kind: str, path: Path, spec: DataSpec) -> Source:
    if not path.exists():
        raise BadRequest(message=f"data.path {str(spec.path or spec.name)[:200]!r} does not exist")
    if kind in ("mnist", "idx"):
        return _load_idx(path, mnist=kind == "mnist")
    if kind == "npz":
        from modelport.training.data.npz import load_npz

        return load_npz(path, x_key=(spec.features or ["x"])[0], y_key=spec.target or "y")
    if kind == "csv":
        from modelport.training.data.csv import load_csv

        return load_csv(path, target=spec.target, features=spec.features)
    from modelport.training.data.parquet import load_parquet

    return load_parquet(path, target=spec.target, features=spec.features)


def _load_idx(folder: Path, *, mnist: bool) -> Source:
    from modelport.training.data.idx import find_mnist_files, has_test_split, load_mnist

    if not folder.is_dir():
        raise BadRequest(message="an IDX source is a folder holding train-/t10k- images and labels files")
    x, y = load_mnist(folder, "train")
    train, test = Table(x, y.astype(np.int64)), None
    if has_test_split(folder):
        x_test, y_test = load_mnist(folder, "test")
        test = Table(x_test, y_test.astype(np.int64))
    return Source(train, test, MNIST_CLASSES if mnist else None, sha256_files(find_mnist_files(folder)))


def sha256_files(paths: Iterable[Path]) -> str:
    """sha256 of one file, or of the names and digests of several (so a folder has one digest)."""
    files = sorted(paths)
    if len(files) == 1:
        return _sha256_file(files[0])
    outer = hashlib.sha256()
    for path in files:
        outer.update(f"{path.name}\0{_sha256_file(path)}\n".encode())
    return outer.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    """sha256 of arrays' dtypes, shapes and bytes (for sources that are not files, like builtin sets)."""
    digest = hashlib.sha256()
    for arr in arrays:
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encode_labels(values: np.ndarray, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Targets as numbers: integers stay class ids, floats stay targets, strings become sorted classes."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64), None
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise InvalidArtifact(message=f"{where}: targets contain NaN or infinity")
        return values.astype(np.float32), None
    if values.dtype.kind in "USO":
        text = values.astype(str)
        classes = sorted(set(text.tolist()))
        if len(classes) > 10_000:
            raise InvalidArtifact(message=f"{where}: {len(classes)} distinct string labels; at most 10000")
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[v] for v in text.tolist()], dtype=np.int64), classes
    raise InvalidArtifact(message=f"{where}: targets of type {values.dtype} are not supported")
