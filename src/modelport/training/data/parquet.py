"""Parquet files, read with pyarrow when it is installed (``pip install pyarrow``); refused clearly if not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import BadRequest, InvalidArtifact
from modelport.training.data.sources import Source, Table, encode_labels, sha256_files


def load_parquet(path: Path, *, target: str | None = None, features: list[str] | None = None) -> Source:
    """Numeric feature columns and one target column (default: the last), like the CSV loader."""
    pq = _pyarrow_parquet()
    try:
        table = pq.read_table(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for bad files
        raise InvalidArtifact(message=f"not a readable Parquet file ({type(exc).__name__})") from None
    names = list(table.column_names)
    target = target if target is not None else names[-1]
    features = features if features is not None else [n for n in names if n != target]
    unknown = [c for c in [target, *features] if c not in names]
    if unknown:
        raise InvalidArtifact(message=f"Parquet file has no column(s) {unknown[:5]}; columns: {names[:20]}")
    if table.num_rows == 0:
        raise InvalidArtifact(message="the Parquet file has no rows")
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = table.column(name).to_numpy(zero_copy_only=False)
        if column.dtype.kind not in "biuf":
            raise InvalidArtifact(message=f"Parquet column {name!r} is not numeric; only the target may hold labels")
        if column.dtype.kind == "f" and not np.isfinite(column).all():
            raise InvalidArtifact(message=f"Parquet column {name!r} contains NaN, null or infinity")
        x[:, j] = column
    labels = np.asarray(table.column(target).to_numpy(zero_copy_only=False))
    y, classes = encode_labels(labels, target)
    return Source(Table(x, y), None, classes, sha256_files([path]))


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BadRequest(
            message="reading Parquet needs the pyarrow package on the training machine (pip install pyarrow); "
            "or convert the data to CSV or NPZ"
        ) from None
    return pq
