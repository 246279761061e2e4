"""POST /v1/models/{ref}/predict: raw examples in, decoded outputs out."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelport.api.deps import Caller, Ctx
from modelport.errors import ModelportError, UnsupportedMediaType
from modelport.serving.protocols import native

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
            }
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
    summary="Predict with name, name:3 or name@alias",
    openapi_extra=PREDICT_BODY,
)
async def predict(ref: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    require_json(request)
    inputs = native.parse_body(await request.body())
    started = time.perf_counter()
    try:
        prediction = await ctx.inference.predict(who, ref, inputs)
    except ModelportError:
        ctx.metrics.predictions.labels(ref.split(":")[0].split("@")[0][:63], "-", "error").inc()
        raise
    body = native.render(prediction)
    ctx.metrics.observe_prediction(
        prediction.target.model,
        prediction.target.version,
        time.perf_counter() - started,
        ok=True,
    )
    return Response(body, media_type="application/json")
