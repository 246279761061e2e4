"""Open Inference Protocol V2 (KServe / Triton) request and response codecs."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import orjson

from modelport.errors import InvalidInput
from modelport.formats.base import Tensors
from modelport.serving.json_matrix import V2_FLOATS, read_v2
from modelport.serving.pipeline import list_depth
from modelport.serving.protocols.native import (
    MAX_OUTPUT_BYTES,
    check_answer_size,
    check_output_size,
    invalid_json_message,
)
from modelport.serving.service import Prediction
from modelport.store.bundle import TensorSpec

V2_TO_NUMPY: dict[str, Any] = {
    **V2_FLOATS,  # FP32, FP64, FP16: the ones the simdjson read takes too
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "BYTES": np.str_,
}
DTYPE_TO_V2 = {
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
    "string": "BYTES",
}


def _numpy_to_v2(arr: np.ndarray) -> str:
    if arr.dtype.kind in "USO":
        return "BYTES"
    return DTYPE_TO_V2.get(arr.dtype.name, "FP64")


BINARY_HEADER = "inference-header-content-length"
"""The binary tensor data extension: the body is this many bytes of JSON, then the tensors' bytes."""
BINARY_MEDIA_TYPE = "application/octet-stream"
Binary = bool | frozenset[str]
"""Which outputs go back as binary data: all (True), none (False), or those named."""


class InferRequest(NamedTuple):
    arrays: Tensors
    request_id: str | None
    wanted: list[str] | None
    """The outputs asked for by name; None: all."""
    binary: Binary = False


def parse_infer(body: bytes, header_length: str | None = None) -> InferRequest:
    """A V2 infer request: float tensors with flat data straight into arrays with simdjson
    (``json_matrix.read_v2``, which answers only where its answer is this function's), anything else
    with orjson. With ``header_length`` (the ``Inference-Header-Content-Length`` header), the binary
    tensor data extension (what tritonclient sends by default): that many bytes of JSON, then the raw
    little-endian bytes of each input whose ``parameters.binary_data_size`` says how many."""
    if header_length is not None:
        return _parse_binary(body, header_length)
    fast = read_v2(body)
    return InferRequest(*fast) if fast is not None else _parse_general(body)


def _parse_binary(body: bytes, header_length: str) -> InferRequest:
    size = int(header_length) if header_length.isdigit() and len(header_length) <= 12 else -1
    if not 0 < size <= len(body):
        message = f"Inference-Header-Content-Length must be a whole number of bytes from 1 to the body's {len(body)}"
        raise InvalidInput(message=message)
    return _parse_general(body[:size], memoryview(body)[size:])


def _parse_general(body: bytes, binary: bytes | memoryview = b"") -> InferRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting deeper than 1024 levels, without recursion on our side; an input nests
        # only as deep as its signature (checked when it becomes an array), so no depth walk is needed.
        raise InvalidInput(message=invalid_json_message(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not data["inputs"]:
        raise InvalidInput(message='body must be an object with a non-empty "inputs" list')
    arrays: Tensors = {}
    offset = 0
    for item in data["inputs"]:
        if not isinstance(item, dict):
            raise InvalidInput(message="each input must be an object with name, shape, datatype, data")
        name, shape, dtype = item.get("name"), item.get("shape"), item.get("datatype")
        # the datatype is looked up only when it is a string: a list or an object is unhashable
        if not (isinstance(name, str) and isinstance(shape, list) and isinstance(dtype, str) and dtype in V2_TO_NUMPY):
            raise InvalidInput(message=f"input needs name, shape and a datatype among {', '.join(V2_TO_NUMPY)}")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) > 8:
            raise InvalidInput(message=f"input {name[:64]!r}: shape must be a list of non-negative integers")
        size = _binary_size(item, name)
        if size is not None:
            arrays[name] = _binary_input(binary[offset : offset + size], name, shape, dtype)
            offset += size
            continue
        arrays[name] = _json_input(item.get("data"), name, shape, dtype)
    if offset != len(binary):
        raise InvalidInput(message=f"the body has {len(binary) - offset} bytes after the inputs' binary data")
    outputs = data.get("outputs")
    wanted = [o["name"] for o in outputs if isinstance(o, dict) and "name" in o] if isinstance(outputs, list) else None
    request_id = data.get("id") if isinstance(data.get("id"), str) else None
    return InferRequest(arrays, request_id, wanted, _binary_outputs(data, outputs))


def _json_input(data: Any, name: str, shape: list[int], dtype: str) -> np.ndarray:
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # 1e300 as FP16 is Infinity: refused later
            arr = np.asarray(data, dtype=V2_TO_NUMPY[dtype])
    except (ValueError, TypeError, OverflowError):
        depth = list_depth(data)  # only here, on the way to a 400
        if depth > len(shape):
            message = f"input {name[:64]!r}: data nests {depth} levels deep; its shape {shape} has {len(shape)}"
            raise InvalidInput(message=message) from None
        raise InvalidInput(message=f"input {name[:64]!r}: data does not match datatype {dtype}") from None
    if arr.size != math.prod(shape):
        raise InvalidInput(message=f"input {name[:64]!r}: {arr.size} values do not fill shape {shape}")
    return arr.reshape(shape)


def _binary_size(item: dict[str, Any], name: str) -> int | None:
    params = item.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(message=f"input {name[:64]!r}: binary_data_size must be a whole number of bytes")
    return size


def _binary_input(data: bytes | memoryview, name: str, shape: list[int], dtype: str) -> np.ndarray:
    if dtype == "BYTES":
        raise InvalidInput(message=f"input {name[:64]!r}: BYTES tensors are taken as JSON data only")
    kind = np.dtype(V2_TO_NUMPY[dtype]).newbyteorder("<")
    needed = math.prod(shape) * kind.itemsize
    if len(data) != needed:
        message = f"input {name[:64]!r}: {len(data)} bytes of binary data, but shape {shape} of {dtype} needs {needed}"
        raise InvalidInput(message=message)
    return np.frombuffer(data, dtype=kind).reshape(shape)


def _binary_outputs(data: dict[str, Any], outputs: Any) -> Binary:
    params = data.get("parameters")
    if isinstance(params, dict) and params.get("binary_data_output") is True:
        return True
    if not isinstance(outputs, list):
        return False
    named = frozenset(
        o["name"]
        for o in outputs
        if isinstance(o, dict)
        and isinstance(o.get("name"), str)
        and isinstance(o.get("parameters"), dict)
        and o["parameters"].get("binary_data") is True
    )
    return named or False


def render_infer(
    prediction: Prediction,
    request_id: str | None,
    wanted: list[str] | None,
    binary: Binary = False,
    *,
    max_bytes: int = MAX_OUTPUT_BYTES,
) -> tuple[bytes, int | None]:
    """The V2 answer, and with binary outputs the length of its JSON part (the rest is their bytes, for
    the ``Inference-Header-Content-Length`` header), else None. In JSON, NaN and Infinity become null,
    so it is always valid JSON."""
    check_output_size(prediction, max_bytes)
    tensors, _ = prediction.pipeline.postprocess(prediction.outputs)
    names = list(tensors) if wanted is None else _requested(wanted, list(tensors))
    outputs = []
    tails: list[bytes] = []
    for name in names:
        arr = np.asarray(tensors[name])
        flat = arr.reshape(-1)
        out: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": _numpy_to_v2(arr)}
        if (binary is True or (binary and name in binary)) and flat.dtype.kind not in "USO":
            raw = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("<")).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            out["data"] = flat.tolist() if flat.dtype.kind in "USO" else np.ascontiguousarray(flat)
        outputs.append(out)
    body: dict[str, Any] = {
        "model_name": prediction.target.model,
        "model_version": str(prediction.target.version),
        "outputs": outputs,
    }
    if request_id is not None:
        body["id"] = request_id
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tails:
        return check_answer_size(head, max_bytes), None
    return check_answer_size(b"".join([head, *tails]), max_bytes), len(head)


def _requested(wanted: list[str], names: list[str]) -> list[str]:
    """The outputs a request named, in the model's order; a name the model lacks is a 400 (as Triton),
    not a silently empty answer."""
    for name in wanted:
        if name not in names:
            raise InvalidInput(
                message=f"unknown output {name[:64]!r}: this model's outputs are {', '.join(names)}",
                details={"outputs": names},
            )
    return [n for n in names if n in wanted]


def tensor_metadata(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": DTYPE_TO_V2[s.dtype], "shape": s.shape or [-1]} for s in specs]
