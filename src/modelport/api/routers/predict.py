"""POST /v1/models/{ref}/predict: raw examples in (JSON or raw tensors), decoded outputs out."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelport.api.deps import Caller, Ctx
from modelport.errors import ModelportError, UnsupportedMediaType
from modelport.serving.protocols import native, raw

router = APIRouter(tags=["inference"])

PREDICT_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"inputs": {"description": "one example, a batch, or {name: array}"}},
                    "required": ["inputs"],
                },
                "example": {"inputs": [[0.0, 0.5, 1.0]]},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "C-order little-endian tensor; headers X-Tensor-Shape (e.g. 32,784) and "
                "X-Tensor-Dtype (default float32). Send Accept: application/octet-stream for a raw answer.",
            },
        },
        "required": True,
    }
}


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json")
    if not content_type.startswith("application/json"):
        raise UnsupportedMediaType(expected="application/json")


@router.post(
    "/v1/models/{ref}/predict",
    summary="Predict with name, name:3 or name@alias (JSON or raw tensors)",
    openapi_extra=PREDICT_BODY,
)
async def predict(ref: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    content_type = request.headers.get("content-type", "application/json")
    is_raw = content_type.startswith(raw.MEDIA_TYPE)
    if not is_raw and not content_type.startswith("application/json"):
        raise UnsupportedMediaType(expected="application/json or application/octet-stream")
    body = await request.body()
    if is_raw:
        inputs = raw.parse(body, request.headers.get("x-tensor-shape"), request.headers.get("x-tensor-dtype"))
    else:
        inputs = native.parse_body(body)
    started = time.perf_counter()
    try:
        prediction = await ctx.inference.predict(who, ref, inputs)
    except ModelportError:
        ctx.metrics.predictions.labels(ref.split(":")[0].split("@")[0][:63], "-", "error").inc()
        raise
    if raw.MEDIA_TYPE in request.headers.get("accept", ""):
        payload, headers = raw.render(prediction)
        response = Response(payload, media_type=raw.MEDIA_TYPE, headers=headers)
    else:
        response = Response(native.render(prediction), media_type="application/json")
    ctx.metrics.observe_prediction(
        prediction.target.model, prediction.target.version, time.perf_counter() - started, ok=True
    )
    return response
