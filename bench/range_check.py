"""Times the inference fast lane's range check (``serving/pipeline.py::_in_range``) against the forms
it replaced and the obvious alternatives, on RSW-1's request A (one MNIST image, float64 from JSON) and
raw B (32 images, float32):

    .venv/bin/python bench/range_check.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np

from modelport.serving.pipeline import _flat_lane, _in_range
from modelport.store.bundle import Manifest


def _with_errstate(arr: np.ndarray, limit: float) -> bool:
    """The check as it was until 2026-11-29."""
    flat = arr.reshape(-1)
    with np.errstate(over="ignore"):
        return float(flat @ flat) < limit


def main() -> None:
    manifest = Manifest.model_validate(
        {
            "entrypoint": "model.onnx",
            "format": "onnx",
            "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 784]}]},
        }
    )
    lane = _flat_lane(manifest.signature.inputs, manifest)
    assert lane is not None
    rng = np.random.default_rng(0)
    cases = {
        "A (1 x 784 float64)": rng.random((1, 784)),
        "raw B (32 x 784 float32)": rng.random((32, 784), dtype=np.float32),
    }
    print("| input | form | us a call |")
    print("| --- | --- | ---: |")
    for label, arr in cases.items():
        forms: dict[str, Callable[[np.ndarray], object]] = {
            "np.vdot (now)": lambda x: _in_range(x, lane),
            "@ inside np.errstate (before)": lambda x: _with_errstate(x, lane.square_limit),
            "np.isfinite(...).all()": lambda x: bool(np.isfinite(x).all()),
            "max and min": lambda x: (x.max(), x.min()),
        }
        for name, call in forms.items():
            best = min(timeit.repeat(lambda: call(arr), number=5000, repeat=7)) / 5000  # noqa: B023 - timed here
            print(f"| {label} | {name} | {best * 1e6:.2f} |")


if __name__ == "__main__":
    main()
