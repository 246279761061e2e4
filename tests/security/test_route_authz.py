"""Every route has an explicit authorization decision, and every route that is not public refuses a
call without a key. A new route that forgets its ``Caller``/``Admin`` dependency fails here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import routing

from modelport.api import deps, fastpath
from modelport.api.middleware import EDGE_ROUTES, PUBLIC_ROUTES
from tests.conftest import error_of

AUTH_DEPENDENCIES: set[Callable[..., Any]] = {deps.principal, deps.admin}
"""The dependencies that decide who may call: the key's principal, or an admin."""
PARAM = re.compile(r"\{[^}]+\}")


def _routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    """(method, path template, dependant or None) of every route the FastAPI side serves."""
    flatten = getattr(routing, "iter_route_contexts", None)  # FastAPI >= 0.16x nests included routers
    for route in flatten(app.api.routes) if flatten else app.api.routes:
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                yield method, route.path, getattr(route, "dependant", None)


def _decides(dependant: Any) -> bool:
    if dependant is None:
        return False
    return any(d.call in AUTH_DEPENDENCIES or _decides(d) for d in dependant.dependencies)


def _filled(path: str) -> str:
    return PARAM.sub("1", path)


def test_every_route_declares_its_authorization(app: Any) -> None:
    routes = list(_routes(app))
    assert len(routes) > 40
    undecided = [(m, p) for m, p, dep in routes if not _decides(dep) and p not in PUBLIC_ROUTES]
    assert not undecided, f"routes with no auth dependency and not in PUBLIC_ROUTES: {undecided}"
    paths = {p for _, p, _ in routes}
    assert paths >= PUBLIC_ROUTES, f"stale PUBLIC_ROUTES entries: {PUBLIC_ROUTES - paths}"
    mislabelled = [p for _, p, dep in routes if p in PUBLIC_ROUTES and _decides(dep)]
    assert not mislabelled, f"public routes that need a key anyway: {mislabelled}"


def test_edge_routes_are_listed_and_mirror_guarded_routes(app: Any) -> None:
    """The fast path answers some routes before FastAPI: each must be in EDGE_ROUTES, and the FastAPI
    route it mirrors (kept for OpenAPI) must itself depend on a key."""
    listed = {(m, p) for m, p, _ in EDGE_ROUTES}
    served_at_edge = [(m, p, dep) for m, p, dep in _routes(app) if fastpath.match(m, _filled(p))]
    assert len(served_at_edge) == 3
    for method, path, dep in served_at_edge:
        assert (method, path) in listed, f"{method} {path} is served by the fast path but not in EDGE_ROUTES"
        assert _decides(dep), path
    assert listed - {(m, p) for m, p, _ in served_at_edge} == {("OPTIONS", "*")}


async def test_every_non_public_route_refuses_a_call_without_a_key(app: Any) -> None:
    calls = [(m, _filled(p)) for m, p, _ in _routes(app) if p not in PUBLIC_ROUTES]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as anon:
        for method, path in calls:
            r = await anon.request(method, path)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert error_of(r)["code"] == "unauthenticated"
            r = await anon.request(
                method, path, headers={"Authorization": "Bearer mp_wrong-0000000000000000000000000000"}
            )
            assert r.status_code == 401, (method, path, r.status_code)


@pytest.mark.parametrize("path", sorted(PUBLIC_ROUTES))
async def test_public_routes_answer_without_a_key(app: Any, path: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as anon:
        r = await anon.get(path)
    assert r.status_code == 200, r.text
