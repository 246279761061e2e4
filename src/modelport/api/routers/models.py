"""/v1/models: create, list, get, update, delete registered models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from modelport.api.deps import Caller, Client, Ctx
from modelport.api.routers._json import json_response, page
from modelport.registry import models

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200, description="^[a-z0-9][a-z0-9._-]{0,62}$")
    description: str = Field(default="", max_length=10_000)
    tags: list[str] = Field(default_factory=list, max_length=32)


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=10_000)
    tags: list[str] | None = Field(default=None, max_length=32)


@router.post("", status_code=201, summary="Create a model (the caller becomes its owner)")
def create_model(body: ModelCreate, ctx: Ctx, who: Caller, client: Client) -> Response:
    view = models.create_model(
        ctx.db,
        who,
        name=body.name,
        description=body.description,
        tags=body.tags,
        client=client,
    )
    ctx.forget_caches()
    return json_response(view, 201)


@router.get("", summary="List the models you may read (filter by name prefix and tag)")
def list_models(
    ctx: Ctx,
    who: Caller,
    prefix: Annotated[str | None, Query(max_length=63)] = None,
    tag: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    items, total = models.list_models(ctx.db, who, prefix=prefix, tag=tag, limit=limit, offset=offset)
    return json_response(page(items, total, limit, offset))


@router.get("/{name}", summary="Get a model with its latest version and aliases")
def get_model(name: str, ctx: Ctx, who: Caller) -> Response:
    return json_response(models.get_model(ctx.db, who, name))


@router.patch("/{name}", summary="Update a model's description or tags")
def update_model(name: str, body: ModelUpdate, ctx: Ctx, who: Caller, client: Client) -> Response:
    view = models.update_model(ctx.db, who, name, description=body.description, tags=body.tags, client=client)
    return json_response(view)


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete a model (no aliases left, or force=true as owner)",
)
def delete_model(name: str, ctx: Ctx, who: Caller, client: Client, force: bool = False) -> Response:
    for version_id in models.delete_model(ctx.db, who, name, force=force, client=client):
        ctx.runtime.unload(version_id)
    ctx.forget_caches()
    return Response(status_code=204)
