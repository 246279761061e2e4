"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from modelport.api.deps import Admin, Ctx
from modelport.api.errors import error_response
from modelport.api.routers._json import json_response

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers (no key needed)")
def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: database and store reachable (no key needed)")
def readyz(ctx: Ctx) -> Response:
    checks: dict[str, str] = {}
    try:
        ctx.db.ping()
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means not ready; the reason stays server-side
        checks["database"] = "unreachable"
    try:
        ctx.store.ping()
        checks["store"] = "ok"
    except OSError:
        checks["store"] = "unreachable"
    if ctx.draining:
        checks["server"] = "draining"
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ready", "checks": checks})
    return error_response(503, "unavailable", "not ready", {"checks": checks})


@router.get("/metrics", summary="Prometheus metrics (admin key)")
def metrics(ctx: Ctx, _: Admin) -> Response:
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
