"""The inference hot path, served without FastAPI's per-request machinery.

FastAPI resolves dependencies per request and runs sync ones in a thread pool; on a model that answers in
microseconds that machinery costs more than the model (measured: ~15% of the server's CPU in
``solve_dependencies`` alone). ``FastPath`` serves exactly the inference routes (``POST
/v1/models/{ref}/predict`` and ``POST /v2/models/{name}[/versions/{v}]/infer``) straight from the edge
middleware, with the SAME checks in the same order (body limit, key, ``infer`` permission and key scope,
schema), by calling the same ``answer`` functions as the FastAPI routes, which stay registered for the
OpenAPI description. Keys and reference resolution come from the one-second caches; a cache miss goes to
the database in a worker thread, never on the event loop.

The per-key rate limit (``auth/rate_limit.py``) is checked here, right after the key, and only here: the
edge middleware sends every inference request this way; the buckets are the process's own, or shared by
the processes of ``serve --workers``.
"""

from __future__ import annotations

import re

from starlette.responses import Response
from starlette.types import Message, Receive

from modelport.api.context import AppContext
from modelport.api.errors import error_response, status_of
from modelport.api.routers.predict import Answer, answer
from modelport.api.routers.v2 import answer_infer
from modelport.auth.keys import REFRESH_AFTER_S
from modelport.auth.principals import ANONYMOUS_ADMIN, Principal
from modelport.auth.rate_limit import RateLimiter
from modelport.errors import ModelportError, TooManyRequests, Unauthenticated
from modelport.serving.protocols import v2 as v2_codec
from modelport.serving.singleflight import SingleFlight

PREDICT = re.compile(r"^/v1/models/([^/]+)/predict$")
INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
PREDICT_TEMPLATE = "/v1/models/{ref}/predict"
INFER_TEMPLATE = "/v2/models/{name}/infer"


def match(method: str, path: str) -> str | None:
    """The route template this fast path serves for ``method path``, or None."""
    if method != "POST":
        return None
    if PREDICT.match(path):
        return PREDICT_TEMPLATE
    if INFER.match(path):
        return INFER_TEMPLATE
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FastPath:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._keys: SingleFlight[Principal] = SingleFlight()
        self.limiter = RateLimiter.for_settings(ctx.settings)

    async def principal(self, authorization: str | None) -> Principal:
        if not self.ctx.settings.auth:
            return ANONYMOUS_ADMIN
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else None
        if not key:
            raise Unauthenticated()
        authenticate = self.ctx.keys.authenticate
        cached = self.ctx.keys.cached(key)
        if cached is None:
            return await self._keys.run(key, lambda: authenticate(key))
        principal, due = cached
        if due:  # looked up again in the background, before any request must wait for it
            self._keys.start(key, lambda: authenticate(key, max_age=REFRESH_AFTER_S))
        return principal

    async def respond(self, path: str, headers: dict[bytes, bytes], body: bytes | Receive) -> Reply | Response:
        """The answer to one inference request: a 200's body and headers, which the caller writes itself
        (with the request id), or an error Response. ``headers`` is a dict of the request's; ``body``
        its bytes (the protocol lane has them all) or the ASGI receive to read it from, which happens
        only after the key and the rate limit passed."""
        try:
            who = await self.principal(_text(headers.get(b"authorization")))
            rps = who.rate_limit_rps or self.limiter.default_rps
            if rps and who.rate_bucket is not None:  # off (the default): these two tests are all it costs
                self.limiter.take(who.rate_bucket, rps)
            if not isinstance(body, bytes):
                body = await _read_body(body)
            predict = PREDICT.match(path)
            if predict is not None:
                result = await answer(
                    self.ctx,
                    who,
                    predict.group(1),
                    body,
                    content_type=_text(headers.get(b"content-type")),
                    accept=_text(headers.get(b"accept")),
                    tensor_shape=_text(headers.get(b"x-tensor-shape")),
                    tensor_dtype=_text(headers.get(b"x-tensor-dtype")),
                )
                return _reply(result)
            infer = INFER.match(path)
            assert infer is not None
            result = await answer_infer(
                self.ctx,
                who,
                infer.group(1),
                infer.group(2),
                body,
                _text(headers.get(b"content-type")),
                _text(headers.get(_BINARY_HEADER)),
            )
            return _reply(result)
        except ModelportError as exc:
            err_headers: dict[str, str] | None = None
            if isinstance(exc, TooManyRequests):
                err_headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
            elif isinstance(exc, Unauthenticated):
                err_headers = {"WWW-Authenticate": "Bearer"}
            v2 = path.startswith("/v2/")
            response = error_response(status_of(exc), exc.code, exc.message, exc.details, err_headers, v2=v2)
            exc.__traceback__ = None  # an idle worker thread may keep the error; its frames hold the body
            return response


def _reply(result: Answer) -> Reply:
    reply = Reply(result.body, _MEDIA.get(result.media_type) or result.media_type.encode())
    if result.headers:
        reply.headers = [(k.lower().encode(), v.encode()) for k, v in result.headers.items()]
    return reply


class Reply:
    """A 200 from the fast path: body, media type, and any extra response headers."""

    __slots__ = ("body", "headers", "media_type")

    def __init__(self, body: bytes, media_type: bytes) -> None:
        self.body = body
        self.media_type = media_type
        self.headers: list[tuple[bytes, bytes]] = []


_BINARY_HEADER = v2_codec.BINARY_HEADER.encode()
_MEDIA = {"application/json": b"application/json", "application/octet-stream": b"application/octet-stream"}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
