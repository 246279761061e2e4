"""Raw tensors: ``application/octet-stream`` bodies with ``X-Tensor-Shape`` / ``X-Tensor-Dtype`` headers.

The bytes are the C-order, little-endian array; no JSON parsing and no float formatting on either side,
which is what makes large batches cheap. A body whose length disagrees with its declared shape and dtype
is refused before anything is allocated.
"""

from __future__ import annotations

import math

import numpy as np

from modelport.errors import InvalidInput
from modelport.serving.protocols.native import MAX_OUTPUT_BYTES, check_output_size
from modelport.serving.service import Prediction

MEDIA_TYPE = "application/octet-stream"
DTYPES = {
    "float32": "<f4",
    "float64": "<f8",
    "float16": "<f2",
    "int8": "i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "uint8": "u1",
    "bool": "?",
}
MAX_DIMS = 8


def parse(body: bytes, shape_header: str | None, dtype_header: str | None) -> np.ndarray:
    """The array a raw-tensor request carries (a read-only view over the body, no copy)."""
    if not shape_header:
        raise InvalidInput(message="raw tensors need an X-Tensor-Shape header, e.g. '32,784'")
    dtype_name = (dtype_header or "float32").strip().lower()
    if dtype_name not in DTYPES:
        raise InvalidInput(message=f"X-Tensor-Dtype must be one of {', '.join(DTYPES)}")
    try:
        shape = [int(d) for d in shape_header.replace("x", ",").split(",")]
    except ValueError:
        raise InvalidInput(message="X-Tensor-Shape must be comma-separated whole numbers, e.g. '32,784'") from None
    if not 1 <= len(shape) <= MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidInput(message=f"X-Tensor-Shape must have 1 to {MAX_DIMS} non-negative dimensions")
    dtype = np.dtype(DTYPES[dtype_name])
    expected = math.prod(shape) * dtype.itemsize
    if len(body) != expected:
        details = {"expected_bytes": expected, "got_bytes": len(body)}
        if expected >= 2**63:  # declared by the caller: more than JSON's 64-bit integers hold, so only in words
            del details["expected_bytes"]
        raise InvalidInput(
            message=f"body has {len(body)} bytes but shape {shape} of {dtype_name} needs {expected}", details=details
        )
    try:
        return np.frombuffer(body, dtype=dtype).reshape(shape)
    except ValueError:  # an empty body whose other dimensions are past what numpy can index
        raise InvalidInput(message=f"X-Tensor-Shape {shape} is larger than an array can be") from None


def render(prediction: Prediction, *, max_bytes: int = MAX_OUTPUT_BYTES) -> tuple[bytes, dict[str, str]]:
    """The primary output (after softmax/sigmoid) as raw bytes, and the headers that describe it."""
    check_output_size(prediction, max_bytes)
    tensors, _ = prediction.pipeline.postprocess(prediction.outputs)
    name = next(iter(tensors))
    arr = np.asarray(tensors[name])
    if prediction.single:
        arr = arr[0]
    kind = arr.dtype.name
    if kind not in DTYPES:
        raise InvalidInput(message=f"output {name!r} of dtype {kind} has no raw encoding; ask for JSON")
    out = np.ascontiguousarray(arr, dtype=np.dtype(DTYPES[kind]))
    headers = {
        "X-Tensor-Shape": ",".join(str(d) for d in out.shape),
        "X-Tensor-Dtype": kind,
        "X-Tensor-Name": name,
        "X-Model": prediction.target.model,
        "X-Model-Version": str(prediction.target.version),
    }
    return out.tobytes(), headers
