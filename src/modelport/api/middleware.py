"""The outermost ASGI layer: request ids, the edge guards, body limits and deadlines, access log,
metrics, the audit of denials, and the last-resort 500.

Every request, the inference fast path included, passes here in this order: Host allowlist (400),
draining (503), cross-origin policy (403, or a preflight's 204), declared body size (413), body media
type (415); then the route, reading its body through the size limit and the slow-body deadline (413 /
408 with the connection closed, whatever the route made of the error). A 403 from a route is written
to the audit log after its response has gone out.

It never re-raises: an unexpected exception becomes a generic 500 with a request id, and the log line
names only the exception type (the traceback is logged at debug level only, since tracebacks carry
server paths).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Mapping
from functools import partial

import anyio.to_thread
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api import fastpath
from modelport.api.context import AppContext
from modelport.api.errors import error_response, internal_error, log_internal_error, status_of
from modelport.api.fastpath import FastPath
from modelport.api.guards import (
    WITH_BODY,
    Body,
    BodyWatch,
    HostGuard,
    OriginGuard,
    RouteKind,
    body_limits,
    check_media,
    depth_limits,
    route_kind,
)
from modelport.api.metrics import Metrics
from modelport.auth.principals import ANONYMOUS_ADMIN
from modelport.errors import ModelportError, PayloadTooLarge, UnsupportedMediaType
from modelport.registry import audit

log = logging.getLogger("modelport.access")
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count()
"""Request ids: a random per-process prefix and a counter (unique, and cheaper than uuid4 per request)."""


def new_request_id() -> str:
    return f"{_PREFIX}{next(_COUNTER):08x}"


errlog = logging.getLogger("modelport.api")

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
"""Still answered while draining: probes must see the process alive and (``/readyz``) not ready."""
HOST_REFUSED = "Host not allowed; add it to MODELPORT_ALLOWED_HOSTS"
CLOSE = {"Connection": "close"}
PASSED_MAX = 4096

PUBLIC_ROUTES: frozenset[str] = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
"""The routes answered without a key: probes and the API's own description, which hold no data. Every
other route decides with a dependency (``deps.principal``, or ``deps.admin`` for admins only), and
``tests/security/test_route_authz.py`` fails on a route that does neither."""

EDGE_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", fastpath.PREDICT_TEMPLATE, "API key (FastPath.principal), then read permission in the service"),
    ("POST", fastpath.INFER_TEMPLATE, "API key (FastPath.principal), then read permission in the service"),
    ("POST", "/v2/models/{name}/versions/{version}/infer", "as the infer route above"),
    ("OPTIONS", "*", "CORS preflight: public; answers only for MODELPORT_CORS_ORIGINS, and returns no data"),
)
"""Routes answered here instead of (or before) FastAPI, with their authorization decision;
``tests/security/test_route_authz.py`` checks this list against the app."""


def refusal_response(exc: ModelportError) -> Response:
    """The answer to a body refused mid-read: the rest of it is never read, so the connection closes."""
    return error_response(status_of(exc), exc.code, exc.message, exc.details, CLOSE)


class _Exchange:
    """One request at the edge: its response status, the headers the edge adds, and a refusal (size or
    deadline) raised while its body was read, which is answered instead of whatever the route answers."""

    __slots__ = (
        "extra",
        "receive",
        "refused",
        "replaced",
        "replacing",
        "request_id",
        "scope",
        "send_raw",
        "started",
        "status",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send_raw = send
        self.request_id = request_id
        self.status = 500
        self.started = self.replaced = self.replacing = False
        self.extra: list[tuple[bytes, bytes]] = []
        self.refused: list[Exception] = []

    async def send(self, message: Message) -> None:
        if self.refused and not self.replacing:
            await self._instead(message)
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            message["headers"] = self._stamped(list(message.get("headers", [])))
        await self.send_raw(message)

    def _stamped(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``headers`` with what the edge adds to every answer: the request id, and CORS headers."""
        headers.append((b"x-request-id", self.request_id.encode()))
        if self.extra:
            headers += self.extra
        return headers

    async def send_ok(self, body: bytes, media_type: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A 200 with ``body``, written straight to the server (the inference fast path's answer)."""
        self.status = 200
        self.started = True
        start = self._stamped([(b"content-type", media_type), (b"content-length", b"%d" % len(body)), *headers])
        await self.send_raw({"type": "http.response.start", "status": 200, "headers": start})
        await self.send_raw({"type": "http.response.body", "body": body})

    async def _instead(self, message: Message) -> None:
        if self.replaced:
            return  # the route's own answer to the error, after ours went out
        if self.started:
            await self.send_raw(message)  # the answer began before the refusal: let it end
            return
        if message["type"] == "http.response.start":
            await self.answer_refusal()

    async def answer_refusal(self) -> None:
        refusal = self.refused[0]
        assert isinstance(refusal, ModelportError)
        self.replaced = self.replacing = True
        await self.answer(refusal_response(refusal))
        self.replacing = False

    async def answer(self, response: Response) -> None:
        await response(self.scope, self.receive, self.send)


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        ctx: AppContext,
        metrics: Metrics,
        access_log: bool = False,
        fast: FastPath | None = None,
    ) -> None:
        self.app = app
        self.ctx = ctx
        self.fast = fast
        self.access_log = access_log
        self.metrics = metrics
        settings = ctx.settings
        self.limits = body_limits(settings)
        self.depths = depth_limits(settings)
        self.hosts = HostGuard(settings)
        self.origins = OriginGuard(settings)
        self.bodies = BodyWatch(settings.request_body_timeout_s, settings.request_body_min_rate)
        self._passed: set[tuple[bytes | None, bytes | None, RouteKind, bool]] = set()
        """(Host, Content-Type, route kind, has a body) seen to pass the Host and media-type checks: a
        request like one before costs one set lookup (senders repeat the same few)."""

    def passed(self, host: bytes | None, content_type: bytes | None, kind: RouteKind) -> bool:
        """Whether a request with a body, this Host and this Content-Type, to a route of this kind, was
        seen to pass the Host and media-type checks (the protocol lane takes only such requests)."""
        return (host, content_type, kind, True) in self._passed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        method, path = scope["method"], scope["path"]
        started = time.perf_counter()
        headers = dict(scope["headers"])
        ex = _Exchange(scope, receive, send, request_id)
        kind = route_kind(method, path)
        length = headers.get(b"content-length")
        declared = _content_length(length) if length is not None else None
        has_body = (declared is not None and declared > 0) or (length is None and b"transfer-encoding" in headers)
        typed = has_body or method in WITH_BODY
        seen = (headers.get(b"host"), headers.get(b"content-type") if typed else None, kind, has_body)
        if (
            seen not in self._passed
            or b"origin" in headers
            or self.ctx.draining
            or (declared is not None and declared > self.limits[kind])
        ):
            refusal = self._admit(ex, method, path, headers) or self._check_body(method, kind, headers, declared, typed)
            if refusal is not None:
                if has_body:  # unread: closing beats reading (maybe gigabytes of) it only to drop it
                    refusal.headers["connection"] = "close"
                await ex.answer(refusal)
                self.finish(_template(scope, None), method, ex.status, started, request_id)
                return
            if len(self._passed) < PASSED_MAX:
                self._passed.add(seen)
        fast_template = fastpath.match(method, path) if self.fast is not None else None
        if has_body:
            body = Body(self.bodies, receive, self.limits[kind], ex.refused, self.depths[kind])
            await self._dispatch(ex, body, fast_template, headers)
            body.close()  # a route that answered without reading all of it
        else:
            await self._dispatch(ex, receive, fast_template, headers)
        template = _template(scope, fast_template)
        if ex.status == 403 and not ex.replaced:
            params = scope.get("path_params") or fast_params(path)
            await self.audit_denial(method, template, params, headers, scope.get("client"), request_id)
        self.finish(template, method, ex.status, started, request_id)

    def _admit(self, ex: _Exchange, method: str, path: str, headers: dict[bytes, bytes]) -> Response | None:
        """Host, draining and Origin: the answer that refuses the request, or None to go on."""
        host = headers.get(b"host")
        if not self.hosts.allows(host):
            return error_response(400, "bad_request", HOST_REFUSED)
        if self.ctx.draining and path not in HEALTH_PATHS:
            message = "the server is shutting down; retry (another instance will answer)"
            return error_response(503, "unavailable", message, None, {**CLOSE, "Retry-After": "1"})
        origin = headers.get(b"origin")
        if origin is None:
            return None
        verdict = self.origins.verdict(origin, host)
        if verdict == "refused":
            shown = origin[:100].decode("latin-1")
            message = f"cross-origin request from {shown!r} refused; list the origin in MODELPORT_CORS_ORIGINS"
            return error_response(403, "permission_denied", message)
        if verdict == "listed":
            if method == "OPTIONS" and b"access-control-request-method" in headers:
                ex.extra = self.origins.preflight_headers(origin)
                return Response(status_code=204)
            ex.extra = self.origins.response_headers(origin)
        return None

    def _check_body(
        self, method: str, kind: RouteKind, headers: dict[bytes, bytes], declared: int | None, typed: bool
    ) -> Response | None:
        """Declared size and media type, before any route runs."""
        limit = self.limits[kind]
        if declared is not None and declared > limit:
            too_large = PayloadTooLarge(limit=limit)
            return error_response(413, too_large.code, too_large.message, too_large.details, CLOSE)
        if typed:
            has_body = (declared or 0) > 0 or (declared is None and b"transfer-encoding" in headers)
            try:
                check_media(kind, headers.get(b"content-type"), has_body)
            except UnsupportedMediaType as exc:
                return error_response(415, exc.code, exc.message, exc.details)
        return None

    async def _dispatch(
        self, ex: _Exchange, receive: Receive, fast_template: str | None, headers: dict[bytes, bytes]
    ) -> None:
        try:
            if fast_template is not None and self.fast is not None:
                reply = await self.fast.respond(ex.scope["path"], headers, receive)
                if isinstance(reply, Response):
                    await ex.answer(reply)  # (a refusal raised while reading the body answers instead)
                else:
                    await ex.send_ok(reply.body, reply.media_type, reply.headers)
            else:
                await self.app(ex.scope, receive, ex.send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no trace leaves the server
            if ex.refused and not ex.started:
                await ex.answer_refusal()
                return
            if ex.started:
                log_internal_error(ex.request_id, exc)
            else:
                await ex.answer(internal_error(ex.request_id, exc))

    async def audit_denial(
        self,
        method: str,
        template: str,
        params: Mapping[str, object],
        headers: dict[bytes, bytes],
        client: tuple[str, int] | None,
        request_id: str,
    ) -> None:
        """Append a ``denied`` audit row for a route's 403: who, what (method and route template), from where."""
        record = partial(
            _record_denial,
            self.ctx,
            headers.get(b"authorization"),
            method,
            template,
            {k: str(v) for k, v in params.items()},
            client[0] if client else None,
        )
        try:
            await anyio.to_thread.run_sync(record)
        except Exception as exc:  # noqa: BLE001 - the answer is sent; a failed audit write is logged, not raised
            errlog.error("request %s: could not audit a denial (%s)", request_id, type(exc).__name__)

    def finish(self, template: str, method: str, status: int, started: float, request_id: str) -> None:
        """Count the request in the metrics (and the access log, when on)."""
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(template, method, status, elapsed)
        if self.access_log:
            log.info("%s %s %s %d %.1fms", request_id, method, template, status, elapsed * 1000)


def _template(scope: Scope, fast_template: str | None) -> str:
    """The route template a request is counted under (its matched route; "unmatched" for none)."""
    return fast_template or getattr(scope.get("route"), "path", None) or "unmatched"


def _record_denial(
    ctx: AppContext,
    authorization: bytes | None,
    method: str,
    route: str,
    params: dict[str, str],
    client: str | None,
) -> None:
    actor = ANONYMOUS_ADMIN.name
    if ctx.settings.auth:
        scheme, _, key = (authorization or b"").decode("latin-1").partition(" ")
        try:
            actor = ctx.keys.authenticate(key.strip() if scheme.lower() == "bearer" else None).name
        except ModelportError:
            actor = "(unknown key)"  # revoked between the answer and this record
    audit.record_denial(ctx.db, actor=actor, method=method, route=route, params=params, client=client)


def fast_params(path: str) -> dict[str, str]:
    match = fastpath.PREDICT.match(path)
    if match is not None:
        return {"ref": match.group(1)}
    match = fastpath.INFER.match(path)
    if match is not None:
        return {"name": match.group(1), **({"version": match.group(2)} if match.group(2) else {})}
    return {}


def _content_length(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
