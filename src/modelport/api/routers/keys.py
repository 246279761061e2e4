"""/v1/keys: create (shown once), list (prefix only), rotate, revoke; /v1/whoami."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from modelport.api.deps import Admin, Caller, Client, Ctx
from modelport.api.routers._json import json_response
from modelport.auth import keys
from modelport.auth.principals import Scope

router = APIRouter(tags=["keys"])

MAX_GRACE_S = 30 * 24 * 3600


class KeyScopes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actions: list[Literal["infer", "read", "write", "admin"]] | None = Field(
        default=None,
        max_length=4,
        description="infer: predict/infer; read: metadata, files, lineage; write: uploads, aliases, "
        "deployments, jobs; admin: admin endpoints (admin keys only). Omitted: all the role allows.",
    )
    models: list[str] | None = Field(
        default=None,
        max_length=100,
        description="model names and name prefixes ending in * (team-a-*); other models do not exist for "
        "the key. Omitted: every model the principal may use.",
    )


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200, description="the principal this key acts as")
    role: Literal["admin", "member"] = "member"
    expires_at: datetime | None = Field(default=None, description="ISO 8601 with a time zone")
    scopes: KeyScopes | None = Field(default=None, description="narrow the key; omitted: the role's full rights")
    service_account: bool = Field(default=False, description="a key for automation (CI), listed as such")
    rate_limit_rps: float | None = Field(
        default=None, gt=0, le=1e9, description="inference requests per second (default: the server's)"
    )
    max_concurrent_jobs: int | None = Field(
        default=None, ge=1, le=100_000, description="queued plus running jobs (default: the server's)"
    )


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: float = Field(
        default=3600, ge=0, le=MAX_GRACE_S, description="seconds the old key keeps working (then it expires)"
    )


@router.post(
    "/v1/keys",
    status_code=201,
    summary="Create an API key; the key is shown only here (admins: any; others: a narrower key for themselves)",
)
def create_key(body: KeyCreate, ctx: Ctx, who: Caller, client: Client) -> Response:
    scope = Scope.parse(body.scopes.actions, body.scopes.models) if body.scopes is not None else None
    spec = keys.KeySpec(
        name=body.name,
        role=body.role,
        expires_at=body.expires_at,
        scope=scope,
        service_account=body.service_account,
        limits=keys.KeyLimits(rate_limit_rps=body.rate_limit_rps, max_concurrent_jobs=body.max_concurrent_jobs),
    )
    info, secret = keys.issue_key(ctx.db, who, spec, client=client)
    return json_response({**_dict(info), "key": secret}, 201)


@router.get("/v1/keys", summary="List API keys (admins); only prefixes, never the keys")
def list_keys(ctx: Ctx, _: Admin, include_revoked: bool = False) -> Response:
    return json_response({"items": [_dict(k) for k in keys.list_keys(ctx.db, include_revoked=include_revoked)]})


@router.post(
    "/v1/keys/{key_id}/rotate",
    status_code=201,
    summary="Rotate a key (admins; or a key itself): a new key with the same rights, shown only here; "
    "the old one works for grace_s more",
)
def rotate_key(key_id: str, ctx: Ctx, who: Caller, client: Client, body: KeyRotate | None = None) -> Response:
    grace_s = body.grace_s if body is not None else KeyRotate().grace_s
    new, old, secret = keys.rotate_key(ctx.db, who, key_id, grace_s=grace_s, client=client)
    ctx.forget_caches()
    return json_response({**_dict(new), "key": secret, "replaces": old.id, "old_expires_at": old.expires_at}, 201)


@router.delete("/v1/keys/{key_id}", summary="Revoke an API key (admins)")
def revoke_key(key_id: str, ctx: Ctx, who: Admin, client: Client) -> Response:
    info = keys.revoke_key(ctx.db, actor=who.name, key_id=key_id, client=client)
    ctx.forget_caches()
    return json_response(_dict(info))


@router.get("/v1/whoami", summary="The principal and role of the calling key, and its scopes")
def whoami(who: Caller) -> Response:
    scopes = who.scope.to_json() if who.scope is not None else None
    return json_response({"principal": who.name, "role": who.role, "key_id": who.key_id, "scopes": scopes})


def _dict(info: keys.KeyInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.principal,
        "role": info.role,
        "prefix": info.prefix,
        "service_account": info.service_account,
        "scopes": info.scopes,
        "rate_limit_rps": info.rate_limit_rps,
        "max_concurrent_jobs": info.max_concurrent_jobs,
        "created_by": info.created_by,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked_at": info.revoked_at,
    }
