"""CSV files with a header row: numeric feature columns and one target column (numbers or labels)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from modelport.errors import InvalidArtifact
from modelport.training.data.sources import Source, Table, encode_labels, sha256_files

MAX_CSV_BYTES = 2 << 30


def load_csv(path: Path, *, target: str | None = None, features: list[str] | None = None) -> Source:
    """Read ``path``; the target is ``target`` (default: the last column), features the other columns."""
    if path.stat().st_size > MAX_CSV_BYTES:
        raise InvalidArtifact(message=f"CSV files are limited to {MAX_CSV_BYTES} bytes")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArtifact(message=f"not a readable UTF-8 CSV file ({type(exc).__name__})") from None
    if len(rows) < 2:
        raise InvalidArtifact(message="a CSV file needs a header row and at least one example")
    header, body = rows[0], [r for r in rows[1:] if r]
    columns = {name: i for i, name in enumerate(header)}
    target = target if target is not None else header[-1]
    features = features if features is not None else [h for h in header if h != target]
    unknown = [c for c in [target, *features] if c not in columns]
    if unknown:
        raise InvalidArtifact(message=f"CSV has no column(s) {unknown[:5]}; columns: {header[:20]}")
    if any(len(r) != len(header) for r in body):
        bad = next(i for i, r in enumerate(body, start=2) if len(r) != len(header))
        raise InvalidArtifact(message=f"CSV line {bad} has a different number of fields than the header")
    x = np.empty((len(body), len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = _numbers([r[columns[name]] for r in body], name)
    y, classes = encode_labels(_target([r[columns[target]] for r in body]), target)
    return Source(Table(x, y), None, classes, sha256_files([path]))


def _numbers(values: list[str], column: str) -> np.ndarray:
    try:
        out = np.array(values, dtype=np.float64)
    except ValueError:
        raise InvalidArtifact(
            message=f"CSV column {column!r} is not numeric; only the target may hold labels"
        ) from None
    if not np.isfinite(out).all():
        raise InvalidArtifact(message=f"CSV column {column!r} contains NaN or infinity")
    return out


def _target(values: list[str]) -> np.ndarray:
    """Integers if every value is one, else floats, else the strings themselves (labels)."""
    for dtype in (np.int64, np.float64):
        try:
            return np.array(values, dtype=dtype)
        except ValueError:
            continue
    return np.array(values, dtype=str)
