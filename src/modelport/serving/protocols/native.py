"""The native /v1 predict body: ``{"inputs": ...}`` in, ``{"model", "version", "outputs", ...}`` out."""

from __future__ import annotations

from typing import Any

import orjson

from modelport.errors import InvalidInput
from modelport.serving.service import Prediction


def parse_body(body: bytes) -> Any:
    """The ``inputs`` value of a predict body, or InvalidInput saying what is wrong."""
    if not body:
        raise InvalidInput(message='empty body: send {"inputs": [...]}')
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson also refuses nesting deeper than 1024 levels here, without recursion on our side.
        raise InvalidInput(message='body is not valid JSON (or nested too deep); send {"inputs": [...]}') from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise InvalidInput(message='body must be a JSON object with an "inputs" field')
    return data["inputs"]


def render(prediction: Prediction) -> bytes:
    outputs, predictions = prediction.pipeline.decode(prediction.outputs, single=prediction.single)
    body: dict[str, Any] = {
        "model": prediction.target.model,
        "version": prediction.target.version,
        "outputs": outputs,
    }
    if predictions is not None:
        body["predictions"] = predictions
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
