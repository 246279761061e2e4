"""Request dependencies: the app context, the calling principal, the client address."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request

from modelport.api.context import AppContext
from modelport.auth.principals import ANONYMOUS_ADMIN, Principal, require_admin


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
    """Who is calling: from the bearer key, or the anonymous admin when auth is turned off; carries the
    storage quota in force (``Settings.max_storage_bytes_per_principal``) for the registry to check."""
    ctx = context(request)
    who = ctx.keys.authenticate(bearer_key(request)) if ctx.settings.auth else ANONYMOUS_ADMIN
    quota = ctx.settings.max_storage_bytes_per_principal
    if quota and who.max_storage_bytes is None:
        who = replace(who, max_storage_bytes=quota)
    return who


def admin(request: Request) -> Principal:
    """The caller if it may use admin endpoints: an admin key whose scope includes ``admin``."""
    return require_admin(principal(request))


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
Client = Annotated[str | None, Depends(client_address)]
