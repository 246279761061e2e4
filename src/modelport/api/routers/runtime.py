"""Admin control of what this process keeps loaded: load (and pin), unload, and the memory picture.

Each server process has its own runtime; with ``--workers N`` these act on the process that answers.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from modelport.api.deps import Admin, Ctx
from modelport.api.routers._json import json_response

router = APIRouter(tags=["runtime"])


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: bool = False


@router.post("/v1/models/{ref}/load", summary="Load a version now (admins); pinned versions are never evicted")
async def load(ref: str, ctx: Ctx, who: Admin, body: LoadRequest | None = None) -> Response:
    target = ctx.router.resolve(who, ref)
    pin = body.pin if body is not None else False
    ctx.runtime.pin(target.version_id, pin)
    loaded = await ctx.inference.load(target)
    return json_response(loaded.info())


@router.post("/v1/models/{ref}/unload", summary="Unload a version from this process (admins)")
def unload(ref: str, ctx: Ctx, who: Admin) -> Response:
    target = ctx.router.resolve(who, ref)
    was_loaded = ctx.runtime.unload(target.version_id)
    return json_response({"model": target.model, "version": target.version, "unloaded": was_loaded})


@router.get("/v1/runtime", summary="Loaded versions, their memory and the budget (admins)")
def runtime(ctx: Ctx, _: Admin) -> Response:
    return json_response(
        {
            "loaded": ctx.runtime.loaded(),
            "used_bytes": ctx.runtime.used_bytes,
            "budget_bytes": ctx.runtime.memory_budget,
            "queues": [{"model": m, "version": v, "queued": b.queue_depth} for m, v, b in ctx.runtime.batchers()],
        }
    )
