"""The outermost ASGI layer: request ids, body-size limits, access log, metrics, last-resort 500.

It never re-raises: an unexpected exception becomes a generic 500 with a request id, and the log line
names only the exception type (the traceback is logged at debug level only, since tracebacks carry
server paths).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api import fastpath
from modelport.api.errors import error_response
from modelport.api.fastpath import FastPath
from modelport.api.metrics import Metrics
from modelport.errors import PayloadTooLarge

log = logging.getLogger("modelport.access")
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count()
"""Request ids: a random per-process prefix and a counter (unique, and cheaper than uuid4 per request)."""
errlog = logging.getLogger("modelport.api")


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        limit_for: Callable[[str, str], int],
        access_log: bool = False,
        fast: FastPath | None = None,
    ) -> None:
        self.app = app
        self.fast = fast
        self.access_log = access_log
        self.metrics = metrics
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{_PREFIX}{next(_COUNTER):08x}"
        scope.setdefault("state", {})["request_id"] = request_id
        method, path = scope["method"], scope["path"]
        limit = self.limit_for(method, path)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            exc = PayloadTooLarge(limit=limit)
            await error_response(413, exc.code, exc.message, exc.details)(scope, receive, send_wrapper)
            self._finish(scope, method, status, started, request_id)
            return

        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit=limit)
            return message

        fast_template = fastpath.match(method, path) if self.fast is not None else None
        await self._dispatch(scope, receive_limited, send_wrapper, request_id, fast_template, lambda: response_started)
        self._finish(scope, method, status, started, request_id, fast_template)

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        fast_template: str | None,
        started_response: Callable[[], bool],
    ) -> None:
        try:
            if fast_template is not None and self.fast is not None:
                await self.fast(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no trace leaves the server
            errlog.error("request %s failed: internal error (%s)", request_id, type(exc).__name__)
            errlog.debug("request %s traceback", request_id, exc_info=True)
            if not started_response():
                body = error_response(500, "internal", "internal error", {"request_id": request_id})
                await body(scope, receive, send)

    def _finish(
        self, scope: Scope, method: str, status: int, started: float, request_id: str, template: str | None = None
    ) -> None:
        elapsed = time.perf_counter() - started
        if template is None:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe_request(template, method, status, elapsed)
        if self.access_log:
            log.info("%s %s %s %d %.1fms", request_id, method, template, status, elapsed * 1000)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
