"""The manifest's pre- and post-processing around a Predictor, and input checking.

A caller sends raw examples (one, or a batch); ``prepare`` decides which by comparing the rank with the
signature, applies scale/shift/normalize/reshape, casts to the signature dtype and checks shapes;
``decode`` applies softmax/sigmoid and turns argmax/top-k into labelled predictions.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.errors import InvalidInput, ModelFailed, ModelportError, Unavailable
from modelport.formats._common import describe_error
from modelport.formats.base import Predictor, Tensors
from modelport.serving.json_matrix import JsonMatrix
from modelport.store.bundle import Manifest, TensorSpec

_CPP_SOURCE = re.compile(r"(?:[/\\][\w.@+-]+)+\.\w+:\d+ [^\s(]+\([^)]*\)(?: const)? ")
"""A C++ source location and function in a framework's message (onnxruntime: "/onnxruntime_src/...
/reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(const TensorShape&, ...) "): noise to
the caller, and it would use up the length a reason may have."""


def model_failed(exc: Exception) -> ModelFailed:
    """What the caller is told when the model raised on input that passed every check: the framework's
    own reason, without paths, C++ source locations or TorchScript's traceback (whose frames name
    the uploader's and the server's files; the error itself is its last line)."""
    text = str(exc).strip()
    if "Traceback of TorchScript" in text:
        text = re.sub(r"^\w+: ", "", text.splitlines()[-1])
    return ModelFailed(reason=describe_error(exc, text=_CPP_SOURCE.sub("", text)))


NUMPY_DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "bool": np.bool_,
    "string": np.str_,
}


def _shape_text(shape: list[int] | None) -> str:
    return "[" + ", ".join("N" if i == 0 else ("*" if d == -1 else str(d)) for i, d in enumerate(shape or [])) + "]"


class Pipeline:
    """A loaded version: manifest + predictor. Thread-safe; holds no per-request state."""

    def __init__(self, manifest: Manifest, predictor: Predictor) -> None:
        self.manifest = manifest
        self.predictor = predictor
        self.inputs = manifest.signature.inputs
        reshape = next((p.reshape for p in manifest.preprocess if p.reshape is not None), None)
        self.raw_example_size = math.prod(reshape) if reshape else None
        # per-example shapes with no free dimension, compared as one tuple on the hot path
        self._fixed_tails = {
            t.name: tuple(t.shape[1:]) for t in self.inputs if t.shape is not None and -1 not in t.shape[1:]
        }
        self._flat = _flat_lane(self.inputs, manifest)
        self._float_input = len(self.inputs) == 1 and self.inputs[0].dtype.startswith("float")
        """A JSON matrix is then the float64 array the general path makes of its lists (``_list_to_array``);
        any other model reads the body's JSON again, so an integer stays an integer."""

    # -- inputs ---------------------------------------------------------------------------------
    def prepare(self, inputs: Any, *, max_batch: int) -> tuple[Tensors, bool]:
        """Named, preprocessed, type-checked batch arrays, and whether the caller sent one example."""
        if self._flat is not None:
            fast = self._prepare_fast(self._flat, inputs, max_batch)
            if fast is not None:
                return fast
        if type(inputs) is JsonMatrix:  # the general path: the array its lists would make, or the JSON
            inputs = inputs.values if self._float_input else inputs.parsed()
        named = self._name_inputs(inputs)
        arrays: Tensors = {}
        single_flags = set()
        for spec in self.inputs:
            raw = self._to_array(spec, named[spec.name])
            arr, single = self._batch(spec, raw)
            single_flags.add(single)
            if arr.shape[0] > max_batch:
                raise InvalidInput(message=f"batch of {arr.shape[0]} is over the limit of {max_batch}")
            if arr.shape[0] == 0:
                raise InvalidInput(message="empty batch: send at least one example")
            arrays[spec.name] = self._check_shape(spec, self._preprocess(arr) if spec is self.inputs[0] else arr)
        if len(single_flags) > 1:
            raise InvalidInput(message="send every input as one example, or every input as a batch")
        return arrays, single_flags.pop()

    def _prepare_fast(self, lane: _FlatLane, inputs: Any, max_batch: int) -> tuple[Tensors, bool] | None:
        """The fast lane for JSON rows, a JSON body read as a matrix, or a raw tensor; None when the
        inputs need the general path (which gives the precise message for anything wrong)."""
        kind = type(inputs)
        if kind is JsonMatrix:
            return self._prepare_matrix(lane, inputs.values, max_batch)
        if kind is list:
            return self._prepare_flat(lane, inputs, max_batch)
        if kind is np.ndarray:
            return self._prepare_flat_array(lane, inputs, max_batch)
        return None

    def _prepare_flat(self, lane: _FlatLane, rows: list[Any], max_batch: int) -> tuple[Tensors, bool] | None:
        """The common request, fast: a batch of flat rows of numbers for a one-input float model with no
        preprocessing. None hands anything else (or anything wrong) to the general path, which gives the
        precise message; the answer is the same either way (a Python float rounds to float32 once;
        booleans, as the general path, count as 0 and 1)."""
        n = len(rows)
        if n == 0 or n > max_batch:
            return None
        k = lane.width
        for row in rows:
            if type(row) is not list or len(row) != k:
                return None
        arr = np.empty((n, k), dtype=lane.dtype)
        pack_into, step = lane.pack_into, lane.row_bytes
        try:  # straight into the input's dtype, rounding as numpy's cast does
            for i, row in enumerate(rows):
                pack_into(arr, i * step, *row)
        except (struct.error, TypeError, OverflowError):  # not a number (a string, null, a list), or too large
            return None
        # struct refused values past the dtype; NaN or Infinity cannot come from JSON, but a list may
        # come from elsewhere (the general path names them)
        if not np.isfinite(arr).all():
            return None
        return {lane.name: arr}, False

    def _prepare_flat_array(self, lane: _FlatLane, arr: np.ndarray, max_batch: int) -> tuple[Tensors, bool] | None:
        """The fast lane for a raw tensor: a (N, width) float array of the input's dtype (or any other
        float, cast), with one range check; anything else takes the general path."""
        if arr.ndim != 2 or arr.shape[1] != lane.width or not 0 < arr.shape[0] <= max_batch or arr.dtype.kind != "f":
            return None
        if not _in_range(arr, lane):
            return None
        return {lane.name: arr.astype(lane.dtype, copy=False)}, False

    def _prepare_matrix(self, lane: _FlatLane, values: np.ndarray, max_batch: int) -> tuple[Tensors, bool] | None:
        """The fast lane for a JSON body read as a float64 matrix (one example when 1-D)."""
        if values.ndim == 1:
            fast = self._prepare_flat_array(lane, values.reshape(1, -1), max_batch)
            return None if fast is None else (fast[0], True)
        return self._prepare_flat_array(lane, values, max_batch)

    def _name_inputs(self, inputs: Any) -> dict[str, Any]:
        names = [s.name for s in self.inputs]
        if isinstance(inputs, dict):
            missing = [n for n in names if n not in inputs]
            extra = [k for k in inputs if k not in names]
            if missing or extra:
                raise InvalidInput(
                    message=f"inputs must be named {', '.join(names)}",
                    details={
                        "missing": missing[:10],
                        "unexpected": [str(e)[:64] for e in extra[:10]],
                    },
                )
            return inputs
        if len(names) != 1:
            raise InvalidInput(message=f"this model takes several inputs; send an object with {', '.join(names)}")
        return {names[0]: inputs}

    def _to_array(self, spec: TensorSpec, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            arr = value
        else:
            if not isinstance(value, list):
                raise InvalidInput(message=f"input {spec.name!r} must be an array (a JSON list)")
            arr = _list_to_array(spec, value)
        if spec.dtype == "string":
            return arr.astype(np.str_)
        if arr.dtype.kind not in "biuf":
            raise InvalidInput(
                message=f"input {spec.name!r} must hold numbers (got {arr.dtype.kind!r} values)",
                details={"expected_dtype": spec.dtype},
            )
        return arr

    def _batch(self, spec: TensorSpec, arr: np.ndarray) -> tuple[np.ndarray, bool]:
        if self.raw_example_size is not None and spec is self.inputs[0]:
            k = self.raw_example_size
            if arr.ndim == 1 and arr.size == k:
                return arr.reshape(1, k), True
            if arr.ndim >= 2 and math.prod(arr.shape[1:]) == k:
                return arr.reshape(arr.shape[0], k), False
            raise InvalidInput(
                message=f"input {spec.name!r}: each example must have {k} values",
                details={"got_shape": list(arr.shape)},
            )
        rank = _rank(spec)
        if arr.ndim == rank - 1:
            return arr[np.newaxis, ...], True
        if arr.ndim == rank:
            return arr, False
        if arr.ndim > rank:
            raise _too_deep(spec, arr.ndim)
        raise InvalidInput(
            message=f"input {spec.name!r} must have shape {_shape_text(spec.shape)} (or one example without N)",
            details={"got_shape": list(arr.shape), "expected_shape": spec.shape},
        )

    def _preprocess(self, arr: np.ndarray) -> np.ndarray:
        # Overflow shows up as Infinity and 0/0 as NaN, both refused in _check_shape: no warning per request.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for step in self.manifest.preprocess:
                if step.scale is not None:
                    arr = arr * step.scale
                elif step.shift is not None:
                    arr = arr + step.shift
                elif step.normalize is not None:
                    arr = normalize_array(arr, step.normalize.mean, step.normalize.std)
                elif step.reshape is not None:
                    arr = arr.reshape(arr.shape[0], *step.reshape)
        return arr

    def _check_shape(self, spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
        if spec.shape is not None:
            expected = spec.shape
            tail = arr.shape[1:]
            ok = len(expected) == arr.ndim and (
                self._fixed_tails.get(spec.name) == tail
                or all(e == -1 or e == a for e, a in zip(expected[1:], tail, strict=True))
            )
            if not ok:
                raise InvalidInput(
                    message=f"input {spec.name!r} must have shape {_shape_text(expected)}",
                    details={"got_shape": list(arr.shape), "expected_shape": expected},
                )
        with np.errstate(over="ignore", invalid="ignore"):
            cast = arr.astype(NUMPY_DTYPES[spec.dtype], copy=False)
        # Checked after the cast: 1e39 is finite as JSON/float64 but infinite as float32.
        if cast.dtype.kind == "f" and not spec.allow_nan and not np.isfinite(cast).all():
            raise InvalidInput(
                message=f"input {spec.name!r} contains NaN or Infinity (or values too large for {spec.dtype})"
            )
        return cast

    # -- model and outputs ----------------------------------------------------------------------
    def run(self, arrays: Tensors) -> Tensors:
        try:
            return self.predictor(arrays)
        except ModelportError:
            raise
        except MemoryError:
            raise Unavailable(message="the server ran out of memory running the model; send fewer examples") from None
        except Exception as exc:  # noqa: BLE001 - whatever the framework raises on input that passed our checks
            raise model_failed(exc) from None

    def postprocess(self, outputs: Tensors) -> tuple[Tensors, list[Any] | None]:
        """Apply softmax/sigmoid to the primary (first) output; argmax/top-k become predictions."""
        names = list(outputs)
        primary = np.asarray(outputs[names[0]])
        predictions: list[Any] | None = None
        for step in self.manifest.postprocess:
            if step.softmax:
                primary = _softmax(primary)
            elif step.sigmoid:
                primary = 1.0 / (1.0 + np.exp(-primary))
            elif step.argmax:
                predictions = self._top(primary, 1, flat=True)
            elif step.top_k:
                predictions = self._top(primary, step.top_k, flat=False)
        return {names[0]: primary, **{n: outputs[n] for n in names[1:]}}, predictions

    def decode(self, outputs: Tensors, *, single: bool) -> tuple[Any, Any]:
        """(outputs, predictions) as JSON-ready values; one output is a bare array, several a dict."""
        tensors, batch_predictions = self.postprocess(outputs)
        values: dict[str, Any] = dict(tensors)
        predictions: Any = batch_predictions
        if single:
            values = {k: v[0] for k, v in values.items()}
            predictions = batch_predictions[0] if batch_predictions is not None else None
        if len(values) == 1:
            return _jsonable(next(iter(values.values()))), predictions
        return _jsonable_dict(values), predictions

    def _top(self, scores: np.ndarray, k: int, *, flat: bool) -> list[Any]:
        scores2d = scores.reshape(scores.shape[0], -1)
        labels = self.manifest.labels
        if flat:  # argmax: one pass, no sort
            best = scores2d.argmax(axis=1).tolist()
            values = scores2d[np.arange(len(best)), best].tolist()
            return [
                {"label": labels[i] if labels and i < len(labels) else str(i), "index": i, "score": _finite(v)}
                for i, v in zip(best, values, strict=True)
            ]
        k = min(k, scores2d.shape[1])
        idx = np.argsort(-scores2d, axis=1, kind="stable")[:, :k]
        result: list[Any] = []
        for row, order in zip(scores2d, idx, strict=True):
            items = [
                {
                    "label": labels[i] if labels and i < len(labels) else str(i),
                    "index": int(i),
                    "score": _finite(float(row[i])),
                }
                for i in order
            ]
            result.append(items[0] if flat else items)
        return result


@dataclass(frozen=True, slots=True)
class _FlatLane:
    name: str
    width: int
    dtype: Any
    square_limit: float
    """The square of the largest finite value of ``dtype`` (Infinity for float64)."""
    pack_into: Callable[..., None] = field(init=False)
    """Writes ``width`` Python numbers into an array of ``dtype`` at a byte offset: ``struct`` converts a
    JSON row in half the time of ``np.fromiter`` (5 against 10 µs for 784 values) and a batch in 40% of
    ``np.array``'s. It refuses anything but a number (a string, None, a list) with ``struct.error``, and
    a value past the dtype's range with OverflowError; it rounds a float64 to float32 as numpy's cast
    does (to nearest), so the array is the general path's."""
    row_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        code = "f" if self.dtype == np.float32 else "d"
        packer = struct.Struct(f"={self.width}{code}")
        object.__setattr__(self, "pack_into", packer.pack_into)
        object.__setattr__(self, "row_bytes", packer.size)


def _flat_lane(inputs: list[TensorSpec], manifest: Manifest) -> _FlatLane | None:
    """The fast lane of ``prepare``, for a model whose one float input is (N, width), which has no
    preprocessing and refuses NaN: then a JSON batch of rows converts straight to the input array."""
    if len(inputs) != 1 or manifest.preprocess or inputs[0].allow_nan:
        return None
    spec = inputs[0]
    if spec.dtype not in ("float32", "float64") or spec.shape is None or len(spec.shape) != 2 or spec.shape[1] < 1:
        return None
    dtype = NUMPY_DTYPES[spec.dtype]
    largest = float(np.finfo(dtype).max)
    return _FlatLane(spec.name, spec.shape[1], dtype, largest * largest if largest < 1e154 else math.inf)


def _in_range(arr: np.ndarray, lane: _FlatLane) -> bool:
    """True when every value is finite and fits ``lane``'s dtype, by one dot product (BLAS, a third of
    a min and a max): the sum of squares is NaN or Infinity with any NaN or Infinity among the values,
    and below ``limit**2`` only if each value is within ``limit``. False may also mean "too close to
    tell" (huge but valid values, or a sum of squares past the array's own dtype); the general path
    then decides, exactly. (An overflow to Infinity is such a "too close".)

    ``np.vdot`` because it never checks the floating-point flags: ``@`` and ``np.dot`` warn on an
    overflow, and the ``np.errstate`` that silenced them cost more than the product (the check took
    3.3 against 2.1 us for one MNIST image, 4.6 against 2.3 for 32, ``bench/range_check.py``)."""
    return float(np.vdot(arr, arr)) < lane.square_limit


def _list_to_array(spec: TensorSpec, value: list[Any]) -> np.ndarray:
    """A JSON list as an array. Floats convert straight to float64 (a third faster than letting numpy
    infer the type, which matters for large batches); anything else takes the inferring path so that
    a wrong value gets a precise message."""
    if spec.dtype.startswith("float") and isinstance(_first_leaf(value), (int, float)):
        try:
            return np.array(value, dtype=np.float64)  # JSON numbers are float64 already: no overflow
        except (ValueError, TypeError, OverflowError):
            pass  # strings, ragged lists, nested objects: let the generic path say which
    try:
        return np.asarray(value, dtype=np.str_ if spec.dtype == "string" else None)
    except (ValueError, TypeError):
        depth = list_depth(value)  # only here, on the way to a 400: the hot path walks nothing
        if depth > _rank(spec):
            raise _too_deep(spec, depth) from None
        raise InvalidInput(message=f"input {spec.name!r} is not a rectangular array") from None


def _first_leaf(value: list[Any]) -> Any:
    leaf: Any = value
    for _ in range(64):
        if not isinstance(leaf, list) or not leaf:
            return leaf
        leaf = leaf[0]
    return leaf


def list_depth(value: Any) -> int:
    """How deep lists nest along the first elements (orjson parses no deeper than 1024)."""
    depth, node = 0, value
    while isinstance(node, list):
        depth += 1
        node = node[0] if node else None
    return depth


def _rank(spec: TensorSpec) -> int:
    """The rank a batch of this input has (the signature's, else a batch of vectors)."""
    return len(spec.shape) if spec.shape else 2


def _too_deep(spec: TensorSpec, depth: int) -> InvalidInput:
    rank = _rank(spec)
    return InvalidInput(
        message=f"input {spec.name!r} nests {depth} levels deep; shape {_shape_text(spec.shape)} allows {rank} "
        f"(a batch) or {rank - 1} (one example)",
        details={"depth": depth, "expected_shape": spec.shape},
    )


def normalize_array(arr: np.ndarray, mean: float | list[float], std: float | list[float]) -> np.ndarray:
    """(x - mean) / std with scalars, per-channel (dim 1 of N,C,...) or per-feature (last dim) values.

    Training applies its ``normalize`` steps with this same function, so serving sees the same numbers.
    """
    m = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(std, dtype=np.float64)
    if m.ndim == 0 and sd.ndim == 0:
        return (arr - m) / sd
    n = max(m.size, sd.size)
    if m.size not in (1, n) or sd.size not in (1, n):
        raise InvalidInput(message=f"normalize has {m.size} means and {sd.size} stds: give one, or one per channel")
    if arr.ndim > 2 and arr.shape[1] == n:
        shape = (1, n) + (1,) * (arr.ndim - 2)
    elif arr.shape[-1] == n:
        shape = (1,) * (arr.ndim - 1) + (n,)
    else:
        raise InvalidInput(message=f"normalize has {n} means/stds, which fits neither the channels nor features")
    # a single value (scalar or one-element list) applies to every channel; a list of n is reshaped
    return (arr - m.reshape(shape if m.size == n else ())) / sd.reshape(shape if sd.size == n else ())


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    result: np.ndarray = e / np.sum(e, axis=-1, keepdims=True)
    return result


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _jsonable(value: Any) -> Any:
    """Numpy to plain lists; orjson writes NaN/Inf as null, so the response stays valid JSON."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "USO":
            return value.tolist()
        return np.ascontiguousarray(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _jsonable_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in values.items()}
