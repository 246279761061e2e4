"""Open Inference Protocol V2 (KServe, Triton clients): health, metadata, infer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelport import __version__
from modelport.api.context import AppContext
from modelport.api.deps import Caller, Ctx
from modelport.api.routers._json import json_response
from modelport.api.routers.predict import Answer, require_json
from modelport.auth.principals import Principal
from modelport.refs import check_name, parse_version
from modelport.registry import versions
from modelport.serving.protocols import v2

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])


@router.get("", summary="Server metadata")
def server_metadata(_: Caller) -> Response:
    return json_response({"name": "modelport", "version": __version__, "extensions": []})


@router.get("/health/live", summary="Server live")
def live(_: Caller) -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="Server ready")
def ready(ctx: Ctx, _: Caller) -> Response:
    ctx.db.ping()
    return json_response({"ready": True})


def _ref(name: str, version: str | None) -> str:
    check_name(name)
    return f"{name}:{parse_version(version)}" if version is not None else name


def _metadata(ctx: Ctx, who: Principal, name: str, version: str | None) -> Response:
    target = ctx.router.resolve(who, _ref(name, version))
    items, _ = versions.list_versions(ctx.db, who, name, limit=500)
    sig = target.manifest.signature
    return json_response(
        {
            "name": target.model,
            "versions": [str(v.version) for v in items if v.status == "ready"],
            "platform": target.manifest.format,
            "inputs": v2.tensor_metadata(sig.inputs),
            "outputs": v2.tensor_metadata(sig.outputs),
        }
    )


@router.get("/models/{name}", summary="Model metadata (default version)")
def model_metadata(name: str, ctx: Ctx, who: Caller) -> Response:
    return _metadata(ctx, who, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
def version_metadata(name: str, version: str, ctx: Ctx, who: Caller) -> Response:
    return _metadata(ctx, who, name, version)


async def _ready(ctx: Ctx, who: Principal, name: str, version: str | None) -> Response:
    target = ctx.router.resolve(who, _ref(name, version))
    await ctx.inference.load(target)
    return json_response({"name": target.model, "ready": True})


@router.get("/models/{name}/ready", summary="Model ready (loads it if needed)")
async def model_ready(name: str, ctx: Ctx, who: Caller) -> Response:
    return await _ready(ctx, who, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
async def version_ready(name: str, version: str, ctx: Ctx, who: Caller) -> Response:
    return await _ready(ctx, who, name, version)


async def answer_infer(
    ctx: AppContext,
    who: Principal,
    name: str,
    version: str | None,
    body: bytes,
    content_type: str | None,
    header_length: str | None = None,
) -> Answer:
    """A whole V2 infer request after authentication (shared with the fast path). ``header_length`` is
    the binary tensor data extension's ``Inference-Header-Content-Length``: JSON, then raw bytes."""
    if header_length is None or content_type is None or not content_type.startswith(v2.BINARY_MEDIA_TYPE):
        require_json(content_type)
    request = v2.parse_infer(body, header_length)
    prediction = await ctx.inference.predict(who, _ref(name, version), request.arrays)
    payload, json_length = v2.render_infer(
        prediction, request.request_id, request.wanted, request.binary, max_bytes=ctx.settings.max_output_bytes
    )
    if json_length is None:
        return Answer(payload, "application/json", {})
    return Answer(payload, v2.BINARY_MEDIA_TYPE, {"Inference-Header-Content-Length": str(json_length)})


async def _infer(ctx: Ctx, who: Principal, request: Request, name: str, version: str | None) -> Response:
    headers = request.headers
    body = await request.body()
    answer = await answer_infer(
        ctx, who, name, version, body, headers.get("content-type"), headers.get(v2.BINARY_HEADER)
    )
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)


@router.post("/models/{name}/infer", summary="Infer with the default version")
async def infer(name: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    return await _infer(ctx, who, request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Infer with a given version")
async def infer_version(name: str, version: str, request: Request, ctx: Ctx, who: Caller) -> Response:
    return await _infer(ctx, who, request, name, version)
