"""The outermost ASGI layer: request ids, body-size limits, access log, metrics, last-resort 500.

It never re-raises: an unexpected exception becomes a generic 500 with a request id, and the log line
names only the exception type (the traceback is logged at debug level only, since tracebacks carry
server paths).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.errors import error_response
from modelport.api.metrics import Metrics
from modelport.errors import PayloadTooLarge

log = logging.getLogger("modelport.access")
errlog = logging.getLogger("modelport.api")


class EdgeMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, limit_for: Callable[[str, str], int], access_log: bool = False
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
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

        try:
            await self.app(scope, receive_limited, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no trace leaves the server
            errlog.error("request %s failed: internal error (%s)", request_id, type(exc).__name__)
            errlog.debug("request %s traceback", request_id, exc_info=True)
            if not response_started:
                body = error_response(500, "internal", "internal error", {"request_id": request_id})
                await body(scope, receive, send_wrapper)
        self._finish(scope, method, status, started, request_id)

    def _finish(self, scope: Scope, method: str, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
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
