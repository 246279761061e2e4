"""training/data/splits.py: the same seed holds out the same examples; the source's test split wins."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.errors import BadRequest
from modelport.training.data.sources import Source, Table
from modelport.training.data.splits import make_splits


def source(n: int, test: bool = False) -> Source:
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    t = Table(np.zeros((3, 1), np.float32), np.zeros(3, np.int64)) if test else None
    return Source(Table(x, np.arange(n) % 3), t, None, "0" * 64)


def test_splits_are_disjoint_complete_and_seeded() -> None:
    a = make_splits(source(100), validation_split=0.1, test_split=0.2, seed=1)
    b = make_splits(source(100), validation_split=0.1, test_split=0.2, seed=1)
    assert a.test is not None and a.validation is not None
    assert (len(a.train.y), len(a.validation.y), len(a.test.y)) == (72, 8, 20)
    seen = np.concatenate([a.train.x, a.validation.x, a.test.x]).ravel()
    assert sorted(seen.tolist()) == list(range(100))
    assert b.validation is not None and np.array_equal(a.validation.x, b.validation.x)
    c = make_splits(source(100), validation_split=0.1, test_split=0.2, seed=2)
    assert c.validation is not None and not np.array_equal(a.validation.x, c.validation.x)


def test_source_test_split_is_used_as_is() -> None:
    s = make_splits(source(50, test=True), validation_split=0.0, test_split=0.5, seed=0)
    assert s.test_from_source and s.test is not None and len(s.test.y) == 3 and len(s.train.y) == 50


def test_too_small_to_split() -> None:
    with pytest.raises(BadRequest, match="hold out"):
        make_splits(source(2), validation_split=0.1, test_split=0.0, seed=0)
