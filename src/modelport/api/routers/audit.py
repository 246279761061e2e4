"""/v1/audit: the append-only log of writes (admins; a key with model patterns sees rows about those models)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from modelport.api.deps import Admin, Ctx
from modelport.api.routers._json import json_response
from modelport.registry import acl, audit

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", summary="Audit records, newest first (page with before_id)")
def list_audit(
    ctx: Ctx,
    who: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    actor: Annotated[str | None, Query(max_length=63)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=255)] = None,
) -> Response:
    with ctx.db.read() as s:
        items = audit.list_entries(
            s,
            limit=limit,
            before_id=before_id,
            actor=actor,
            action=action,
            target_prefix=target,
            within=acl.model_patterns(who),
        )
    return json_response({"items": items})
