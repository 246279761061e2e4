"""Request dependencies: the app context, the calling principal, the client address."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.api.context import AppContext
from modelport.auth.principals import ANONYMOUS_ADMIN, Principal
from modelport.errors import PermissionDenied


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def principal(request: Request) -> Principal:
    """Who is calling: from the bearer key, or the anonymous admin when auth is turned off."""
    ctx = context(request)
    if not ctx.settings.auth:
        return ANONYMOUS_ADMIN
    return ctx.keys.authenticate(bearer_key(request))


def admin(request: Request) -> Principal:
    who = principal(request)
    if not who.is_admin:
        raise PermissionDenied(action="use", target="this endpoint (admins only)")
    return who


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
Client = Annotated[str | None, Depends(client_address)]
