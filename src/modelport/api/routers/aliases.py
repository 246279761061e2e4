"""/v1/models/{name}/aliases: set, move and delete aliases atomically; their history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.routers._json import json_response
from modelport.registry import aliases

router = APIRouter(prefix="/v1/models/{name}/aliases", tags=["aliases"])


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)


@router.get("", summary="List a model's aliases")
def list_aliases(name: str, ctx: Ctx, who: Caller) -> Response:
    return json_response({"items": aliases.list_aliases(ctx.db, who, name)})


@router.put("/{alias}", summary="Point an alias at a version (create or move, atomically)")
def set_alias(name: str, alias: str, body: AliasSet, ctx: Ctx, who: Caller, client: Client) -> Response:
    view = aliases.set_alias(ctx.db, who, name, alias, body.version, client=client)
    ctx.forget_caches()
    return json_response(view)


@router.delete("/{alias}", status_code=204, summary="Delete an alias")
def delete_alias(name: str, alias: str, ctx: Ctx, who: Caller, client: Client) -> Response:
    aliases.delete_alias(ctx.db, who, name, alias, client=client)
    ctx.forget_caches()
    return Response(status_code=204)


@router.get("/{alias}/history", summary="Every move of an alias, or (with ?at=) the version it pointed to then")
def alias_history(
    name: str,
    alias: str,
    ctx: Ctx,
    who: Caller,
    at: Annotated[datetime | None, Query(description="an ISO 8601 time; without a zone, UTC")] = None,
) -> Response:
    if at is None:
        return json_response({"items": aliases.alias_history(ctx.db, who, name, alias)})
    when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    move = aliases.alias_at(ctx.db, who, name, alias, when)
    return json_response(
        {"model": name, "alias": alias, "at": when, "version": move.version, "since": move.at, "by": move.by}
    )
