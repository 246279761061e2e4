"""Input preprocessing with exactly the semantics serving applies (serving/pipeline.py).

Serving flattens each example to the size of the manifest's ``reshape`` step, then applies the steps
in order in float64 and casts to float32. Training does the same here, so a version's manifest
reproduces at serving time what the network saw in training. ``standardize`` is fitted on the
training split (mean/std per feature, after the steps before it) and recorded as ``normalize``.
A ``reshape`` to the network's input shape is always the last manifest step: callers may then send
each example in any shape with the right number of values (a 28x28 image or 784 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelport.errors import BadRequest
from modelport.serving.pipeline import normalize_array
from modelport.training.spec import PreprocessStep

Step = dict[str, Any]
_CHUNK = 8192
_MIN_STD = 1e-7
_SPATIAL_FIRST = ("conv2d", "maxpool", "avgpool")


def input_shape_for(
    example_shape: Sequence[int],
    steps: Sequence[PreprocessStep],
    first_layer: str | None,
    declared: Sequence[int] | None,
) -> list[int]:
    """The network's per-example input shape: declared, else the last reshape step, else derived.

    Derived: images (H, W) become (1, H, W) for a network that starts with a convolution or pooling,
    and anything else is flattened, so ``784 -> dense`` works on 28x28 MNIST without a reshape step.
    """
    size = math.prod(example_shape)
    reshapes = [s.reshape for s in steps if s.reshape is not None]
    if declared is not None:
        shape = list(declared)
    elif reshapes:
        shape = list(reshapes[-1])
    elif first_layer in _SPATIAL_FIRST:
        shape = [1, *example_shape] if len(example_shape) == 2 else list(example_shape)
    elif first_layer is None:
        shape = list(example_shape)
    else:
        shape = [size]
    if math.prod(shape) != size:
        raise BadRequest(message=f"input shape {shape} does not hold the {size} values of each example")
    return shape


def fit_steps(steps: Sequence[PreprocessStep], x_train: np.ndarray, input_shape: Sequence[int]) -> list[Step]:
    """The manifest's preprocess list: standardize fitted on ``x_train``, then a final reshape."""
    fitted: list[Step] = []
    for step in steps:
        if step.standardize:
            mean, std = _moments(apply_steps(fitted, x_train, size=None))
            fitted.append({"normalize": {"mean": mean, "std": std}})
        elif step.normalize is not None:
            fitted.append({"normalize": step.normalize.model_dump()})
        else:
            fitted.append({k: v for k, v in step.model_dump().items() if v is not None})
    if not fitted or fitted[-1] != {"reshape": list(input_shape)}:
        fitted.append({"reshape": list(input_shape)})
    return fitted


def apply_steps(steps: Sequence[Step], x: np.ndarray, *, size: int | None = None) -> np.ndarray:
    """float32 (N, *shape) after the steps; rows are processed in chunks so memory stays bounded."""
    n = x.shape[0]
    flat = x.reshape(n, -1)  # (N, k): what serving does to a raw input once a reshape step exists
    if size is not None and flat.shape[1] != size:
        raise BadRequest(message=f"each example has {flat.shape[1]} values; the network takes {size}")
    chunks = [_apply(steps, flat[i : i + _CHUNK]) for i in range(0, n, _CHUNK)]
    return np.concatenate(chunks, axis=0) if len(chunks) > 1 else chunks[0]


def _apply(steps: Sequence[Step], arr: np.ndarray) -> np.ndarray:
    out = arr.astype(np.float64)
    for step in steps:
        if "scale" in step:
            out = out * step["scale"]
        elif "shift" in step:
            out = out + step["shift"]
        elif "normalize" in step:
            out = normalize_array(out, step["normalize"]["mean"], step["normalize"]["std"])
        elif "reshape" in step:
            out = out.reshape(out.shape[0], *step["reshape"])
    return out.astype(np.float32)


def _moments(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-feature (last dim) or per-channel (dim 1, for N,C,H,W) mean and std; constant features get std 1."""
    axes = (0, *range(2, x.ndim)) if x.ndim > 2 else (0,)
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std < _MIN_STD, 1.0, std)  # a constant pixel (MNIST's border) would divide by zero
    return [float(v) for v in mean.reshape(-1)], [float(v) for v in std.reshape(-1)]


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    """(N,) class ids -> (N, classes) float32 one-hot rows."""
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise BadRequest(message=f"class ids must be in [0, {classes}); the data has {int(y.min())}..{int(y.max())}")
    out = np.zeros((y.shape[0], classes), dtype=np.float32)
    out[np.arange(y.shape[0]), y] = 1.0
    return out


def class_names(
    loss: str, one_hot_targets: bool, y: np.ndarray, names: list[str] | None, units: int
) -> list[str] | None:
    """Class names when the targets are class ids (None for regression), checked against the outputs."""
    known = names or []
    if y.dtype.kind not in "iu":
        if loss == "cross_entropy" or one_hot_targets:
            raise BadRequest(message=f"{loss} (or one_hot) needs class labels; the targets are real numbers")
        return None
    if loss in ("mse", "mae") and not one_hot_targets:
        return None  # integer regression targets
    count = max(int(y.max()) + 1, len(known))
    if loss == "binary_cross_entropy" and not one_hot_targets:
        if count > 2 or units != 1:
            raise BadRequest(
                message="binary_cross_entropy on class labels needs 2 classes and 1 output, or data.one_hot: true"
            )
        count = 2
    elif units != count:
        if units < count or known:
            raise BadRequest(message=f"the network has {units} outputs but the data has {count} classes")
        count = units  # e.g. a 10-way head on a slice that happens to hold only classes 0..8
    return known[:count] + [str(i) for i in range(len(known), count)]


def encode_targets(y: np.ndarray, kind: str, classes: list[str] | None) -> np.ndarray:
    """Targets as the loss wants them: int64 class ids, one-hot rows, or float32 (N, k) values."""
    if kind == "class_index":
        return y.astype(np.int64)
    if kind == "one_hot":
        if classes is None:
            raise BadRequest(message="data.one_hot needs class labels; the targets are real numbers")
        return one_hot(y.astype(np.int64), len(classes))
    out = y.astype(np.float32)
    return out.reshape(-1, 1) if out.ndim == 1 else out
