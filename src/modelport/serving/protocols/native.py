"""The native /v1 predict body: ``{"inputs": ...}`` in, ``{"model", "version", "outputs", ...}`` out."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from modelport.errors import InvalidInput, PayloadTooLarge
from modelport.serving.json_matrix import read_matrix
from modelport.serving.service import Prediction

MAX_OUTPUT_BYTES = 64 * 1024 * 1024
"""Default of ``Settings.max_output_bytes``: the largest answer a prediction may produce."""


ORJSON_MAX_DEPTH = 1024


def invalid_json_message(exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a body orjson refused: nesting past its fixed limit, or the JSON itself."""
    if str(exc).startswith("depth limit exceeded"):
        return f"body nests arrays or objects deeper than {ORJSON_MAX_DEPTH} levels"
    return "body is not valid JSON"


def parse_body(body: bytes) -> Any:
    """The ``inputs`` value of a predict body, or InvalidInput saying what is wrong. A rectangular
    array of numbers comes as a JsonMatrix (read without a Python object per number), which the
    pipeline takes as the same inputs."""
    if not body:
        raise InvalidInput(message='empty body: send {"inputs": [...]}')
    matrix = read_matrix(body)
    if matrix is not None:
        return matrix
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting deeper than 1024 levels, without recursion on our side; an input nests
        # only as deep as its signature (checked when it becomes an array), so no depth walk is needed.
        raise InvalidInput(message=invalid_json_message(exc) + '; send {"inputs": [...]}') from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise InvalidInput(message='body must be a JSON object with an "inputs" field')
    return data["inputs"]


def check_output_size(prediction: Prediction, max_bytes: int) -> None:
    """413 before any post-processing or encoding when the model's tensors pass ``max_bytes``."""
    if sum(np.asarray(v).nbytes for v in prediction.outputs.values()) > max_bytes:
        raise PayloadTooLarge(limit=max_bytes, what="the model's output")


def check_answer_size(body: bytes, max_bytes: int) -> bytes:
    """The encoded answer, or 413 when it passes ``max_bytes`` (JSON text can be 4x the tensors)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(limit=max_bytes, what="the encoded answer")
    return body


def render(prediction: Prediction, *, max_bytes: int = MAX_OUTPUT_BYTES) -> bytes:
    """JSON answer; NaN and Infinity become null, so it is always valid JSON."""
    check_output_size(prediction, max_bytes)
    outputs, predictions = prediction.pipeline.decode(prediction.outputs, single=prediction.single)
    body: dict[str, Any] = {
        "model": prediction.target.model,
        "version": prediction.target.version,
        "outputs": outputs,
    }
    if predictions is not None:
        body["predictions"] = predictions
    return check_answer_size(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), max_bytes)
