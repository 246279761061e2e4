"""POST /v1/models/{ref}/predict: raw examples in (JSON or raw tensors), decoded outputs out.

``answer()`` is the whole request after authentication; the FastAPI route below (which documents the
endpoint in OpenAPI) and the lean fast path in ``api/fastpath.py`` (which serves it) both call it.
"""

from __future__ import annotations

from typing import NamedTuple

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelport.api.context import AppContext
from modelport.api.deps import Caller, Ctx
from modelport.auth.principals import Principal
from modelport.errors import UnsupportedMediaType
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


class Answer(NamedTuple):
    body: bytes
    media_type: str
    headers: dict[str, str]


def require_json(content_type: str | None) -> None:
    if content_type is not None and not content_type.startswith("application/json"):
        raise UnsupportedMediaType(expected="application/json")


async def answer(
    ctx: AppContext,
    who: Principal,
    ref: str,
    body: bytes,
    *,
    content_type: str | None,
    accept: str | None,
    tensor_shape: str | None,
    tensor_dtype: str | None,
) -> Answer:
    """Parse (JSON or raw), predict through the service, and encode the answer the caller asked for."""
    content_type = content_type or "application/json"
    is_raw = content_type.startswith(raw.MEDIA_TYPE)
    if not is_raw and not content_type.startswith("application/json"):
        raise UnsupportedMediaType(expected="application/json or application/octet-stream")
    # parsed straight into predict, with no name here: predict drops the JSON once it is arrays
    prediction = await ctx.inference.predict(
        who, ref, raw.parse(body, tensor_shape, tensor_dtype) if is_raw else native.parse_body(body)
    )
    if accept is not None and raw.MEDIA_TYPE in accept:
        payload, headers = raw.render(prediction, max_bytes=ctx.settings.max_output_bytes)
        return Answer(payload, raw.MEDIA_TYPE, headers)
    return Answer(native.render(prediction, max_bytes=ctx.settings.max_output_bytes), "application/json", {})


@router.post(
    "/v1/models/{ref}/predict",
    summary="Predict with name, name:3 or name@alias (JSON or raw tensors)",
    openapi_extra=PREDICT_BODY,
)
async def predict(ref: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    headers = request.headers
    result = await answer(
        ctx,
        who,
        ref,
        await request.body(),
        content_type=headers.get("content-type"),
        accept=headers.get("accept"),
        tensor_shape=headers.get("x-tensor-shape"),
        tensor_dtype=headers.get("x-tensor-dtype"),
    )
    return Response(result.body, media_type=result.media_type, headers=result.headers)
