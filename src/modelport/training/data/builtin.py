"""Data sets that ship inside scikit-learn (nothing is downloaded): digits, iris, wine, breast_cancer.

They make a spec runnable on any machine, and give the tests small real data.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets

from modelport.training.data.sources import Source, Table, sha256_arrays
from modelport.training.spec import BUILTIN_SETS

_LOADERS = {
    "digits": datasets.load_digits,
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
}


def load_builtin(name: str) -> Source:
    """The named set as (N, features) float32 inputs and int64 class ids; no test split of its own."""
    if name not in _LOADERS:
        raise ValueError(f"builtin sets: {', '.join(BUILTIN_SETS)}")
    bunch = _LOADERS[name]()
    x = np.asarray(bunch.data, dtype=np.float32)  # digits: (1797, 64) pixels 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    classes = [str(c) for c in bunch.target_names]
    return Source(Table(x, y), None, classes, sha256_arrays(x, y))
