"""Open Inference Protocol V2 (KServe / Triton) request and response codecs."""

from __future__ import annotations

import math
from typing import Any

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


def parse_infer(body: bytes) -> tuple[Tensors, str | None, list[str] | None]:
    """(named arrays, request id, requested output names) from a V2 infer request: float tensors with
    flat data straight into arrays with simdjson (``json_matrix.read_v2``, which answers only where
    its answer is this function's), anything else with orjson."""
    fast = read_v2(body)
    return fast if fast is not None else _parse_general(body)


def _parse_general(body: bytes) -> tuple[Tensors, str | None, list[str] | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting deeper than 1024 levels, without recursion on our side; an input nests
        # only as deep as its signature (checked when it becomes an array), so no depth walk is needed.
        raise InvalidInput(message=invalid_json_message(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not data["inputs"]:
        raise InvalidInput(message='body must be an object with a non-empty "inputs" list')
    arrays: Tensors = {}
    for item in data["inputs"]:
        if not isinstance(item, dict):
            raise InvalidInput(message="each input must be an object with name, shape, datatype, data")
        name, shape, dtype = item.get("name"), item.get("shape"), item.get("datatype")
        # the datatype is looked up only when it is a string: a list or an object is unhashable
        if not (isinstance(name, str) and isinstance(shape, list) and isinstance(dtype, str) and dtype in V2_TO_NUMPY):
            raise InvalidInput(message=f"input needs name, shape and a datatype among {', '.join(V2_TO_NUMPY)}")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) > 8:
            raise InvalidInput(message=f"input {name[:64]!r}: shape must be a list of non-negative integers")
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # 1e300 as FP16 is Infinity: refused later
                arr = np.asarray(item.get("data"), dtype=V2_TO_NUMPY[dtype])
        except (ValueError, TypeError, OverflowError):
            depth = list_depth(item.get("data"))  # only here, on the way to a 400
            if depth > len(shape):
                message = f"input {name[:64]!r}: data nests {depth} levels deep; its shape {shape} has {len(shape)}"
                raise InvalidInput(message=message) from None
            raise InvalidInput(message=f"input {name[:64]!r}: data does not match datatype {dtype}") from None
        if arr.size != math.prod(shape):
            raise InvalidInput(message=f"input {name[:64]!r}: {arr.size} values do not fill shape {shape}")
        arrays[name] = arr.reshape(shape)
    outputs = data.get("outputs")
    wanted = [o["name"] for o in outputs if isinstance(o, dict) and "name" in o] if isinstance(outputs, list) else None
    request_id = data.get("id") if isinstance(data.get("id"), str) else None
    return arrays, request_id, wanted


def render_infer(
    prediction: Prediction, request_id: str | None, wanted: list[str] | None, *, max_bytes: int = MAX_OUTPUT_BYTES
) -> bytes:
    """The V2 answer; NaN and Infinity become null, so it is always valid JSON."""
    check_output_size(prediction, max_bytes)
    tensors, _ = prediction.pipeline.postprocess(prediction.outputs)
    names = list(tensors) if wanted is None else _requested(wanted, list(tensors))
    outputs = []
    for name in names:
        arr = np.asarray(tensors[name])
        flat = arr.reshape(-1)
        outputs.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": _numpy_to_v2(arr),
                "data": flat.tolist() if flat.dtype.kind in "USO" else np.ascontiguousarray(flat),
            }
        )
    body: dict[str, Any] = {
        "model_name": prediction.target.model,
        "model_version": str(prediction.target.version),
        "outputs": outputs,
    }
    if request_id is not None:
        body["id"] = request_id
    return check_answer_size(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), max_bytes)


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
