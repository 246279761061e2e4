"""Deterministic train / validation / test splits from a seed.

The permutation comes from numpy's PCG64 seeded with the spec's seed, so the same spec on the same
data always holds out the same examples, and a resumed run sees the same split as the first one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelport.errors import BadRequest
from modelport.training.data.sources import Source, Table


@dataclass(frozen=True)
class Splits:
    train: Table
    validation: Table | None
    test: Table | None
    test_from_source: bool
    """True when the test split is the source's own (e.g. MNIST t10k), not carved from the training data."""


def make_splits(source: Source, *, validation_split: float, test_split: float, seed: int) -> Splits:
    """Carve test (only if the source has no test split) and validation sets out of the training data."""
    pool = source.train
    test = source.test
    if test is None and test_split > 0:
        test, pool = _hold_out(pool, test_split, seed, salt=1)
    validation = None
    if validation_split > 0:
        validation, pool = _hold_out(pool, validation_split, seed, salt=2)
    return Splits(pool, validation, test, source.test is not None)


def _hold_out(table: Table, fraction: float, seed: int, *, salt: int) -> tuple[Table, Table]:
    """(held, kept): ``fraction`` of the rows chosen at random; both keep the original row order."""
    n = len(table.y)
    held_n = round(n * fraction)
    if held_n < 1 or held_n >= n:
        raise BadRequest(message=f"cannot hold out {fraction:g} of {n} examples; use more data or another split")
    order = np.random.default_rng([seed, salt]).permutation(n)
    held, kept = np.sort(order[:held_n]), np.sort(order[held_n:])
    return Table(table.x[held], table.y[held]), Table(table.x[kept], table.y[kept])
