"""/v1/keys: create (shown once), list (prefix only), revoke; /v1/whoami."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from modelport.api.deps import Admin, Caller, Client, Ctx
from modelport.api.routers._json import json_response
from modelport.auth import keys

router = APIRouter(tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200, description="the principal this key acts as")
    role: Literal["admin", "member"] = "member"
    expires_at: datetime | None = Field(default=None, description="ISO 8601 with a time zone")


@router.post(
    "/v1/keys",
    status_code=201,
    summary="Create an API key (admins); the key is shown only here",
)
def create_key(body: KeyCreate, ctx: Ctx, who: Admin, client: Client) -> Response:
    info, secret = keys.create_key(
        ctx.db,
        actor=who.name,
        name=body.name,
        role=body.role,
        expires_at=body.expires_at,
        client=client,
    )
    return json_response({**_dict(info), "key": secret}, 201)


@router.get("/v1/keys", summary="List API keys (admins); only prefixes, never the keys")
def list_keys(ctx: Ctx, _: Admin, include_revoked: bool = False) -> Response:
    return json_response({"items": [_dict(k) for k in keys.list_keys(ctx.db, include_revoked=include_revoked)]})


@router.delete("/v1/keys/{key_id}", summary="Revoke an API key (admins)")
def revoke_key(key_id: str, ctx: Ctx, who: Admin, client: Client) -> Response:
    info = keys.revoke_key(ctx.db, actor=who.name, key_id=key_id, client=client)
    ctx.forget_caches()
    return json_response(_dict(info))


@router.get("/v1/whoami", summary="The principal and role of the calling key")
def whoami(who: Caller) -> Response:
    return json_response({"principal": who.name, "role": who.role, "key_id": who.key_id})


def _dict(info: keys.KeyInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.principal,
        "role": info.role,
        "prefix": info.prefix,
        "created_by": info.created_by,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked_at": info.revoked_at,
    }
