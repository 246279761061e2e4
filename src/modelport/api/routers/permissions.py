"""/v1/models/{name}/permissions: per-model roles reader, writer, owner."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.routers._json import json_response
from modelport.registry import permissions

router = APIRouter(prefix="/v1/models/{name}/permissions", tags=["permissions"])


class PermissionSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["reader", "writer", "owner"]


@router.get("", summary="Who has which role on a model")
def list_permissions(name: str, ctx: Ctx, who: Caller) -> Response:
    return json_response({"model": name, "permissions": permissions.list_for_model(ctx.db, who, name)})


@router.put("/{principal}", summary="Give a principal a role on a model (owners and admins)")
def set_permission(
    name: str,
    principal: str,
    body: PermissionSet,
    ctx: Ctx,
    who: Caller,
    client: Client,
) -> Response:
    result = permissions.grant(ctx.db, who, name, principal, body.role, client=client)
    ctx.forget_caches()
    return json_response({"model": name, "permissions": result})


@router.delete("/{principal}", summary="Remove a principal's role on a model")
def delete_permission(name: str, principal: str, ctx: Ctx, who: Caller, client: Client) -> Response:
    result = permissions.revoke(ctx.db, who, name, principal, client=client)
    ctx.forget_caches()
    return json_response({"model": name, "permissions": result})
