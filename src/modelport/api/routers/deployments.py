"""/v1/models/{name}/deployment: split the default reference between versions; mirror to a shadow."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.routers._json import json_response
from modelport.errors import BadRequest
from modelport.registry import deployments
from modelport.registry.deployments import DeploymentConfig
from modelport.serving import devices

router = APIRouter(prefix="/v1/models/{name}/deployment", tags=["deployments"])


@router.get("", summary="How the model's default reference is served")
def get_deployment(name: str, ctx: Ctx, who: Caller) -> Response:
    return json_response(deployments.get_deployment(ctx.db, who, name).model_dump())


@router.put(
    "",
    summary="Split traffic by weight, e.g. {routes: [{version: 1, weight: 90}, {version: 2, weight: 10}], "
    "shadow: {version: 3, percent: 100}}; device: cpu or cuda",
)
def set_deployment(name: str, body: DeploymentConfig, ctx: Ctx, who: Caller, client: Client) -> Response:
    reason = devices.why_not(body.device)
    if reason is not None:  # this process serves what it is told to: refuse what it cannot
        raise BadRequest(message=f"device {body.device!r}: {reason}", details={"device": body.device})
    config = deployments.set_deployment(ctx.db, who, name, body, client=client)
    ctx.forget_caches()
    return json_response(config.model_dump())


@router.delete("", status_code=204, summary="Back to the production alias / latest version")
def delete_deployment(name: str, ctx: Ctx, who: Caller, client: Client) -> Response:
    deployments.delete_deployment(ctx.db, who, name, client=client)
    ctx.forget_caches()
    return Response(status_code=204)
