"""HTTP error JSON -> the same exception classes the server raised (``modelport.errors``).

The server renders every error as ``{"error": {"code", "message", "details"}}`` (``api/errors.py``).
Here the ``code`` picks the class back out of the one hierarchy, so SDK users write
``except ModelNotFound`` against a remote server exactly as against the service layer. Codes this
client does not know (a newer server) fall back to the class for the HTTP status, so ``except NotFound``
still works; anything else is a plain :class:`ModelportError`.

The status table below is the inverse of ``api/errors.py::STATUS``; it is repeated (not imported)
because the SDK must not import FastAPI.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from modelport import errors
from modelport.errors import ModelportError


class ConnectionFailed(ModelportError):
    """The server could not be reached at all (refused, DNS, TLS, timeout): no HTTP answer came back."""

    code = "connection_failed"

    def __init__(self, *, url: str, reason: str) -> None:
        super().__init__(
            message=f"cannot reach Modelport at {url}: {reason}",
            details={"url": url},
        )


STATUS_CLASSES: dict[int, type[ModelportError]] = {
    400: errors.BadRequest,
    401: errors.Unauthenticated,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    408: errors.RequestTimeout,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: errors.ValidationFailed,
    429: errors.TooManyRequests,
    503: errors.Unavailable,
}


def _walk(cls: type[ModelportError]) -> list[type[ModelportError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_walk(sub))
    return found


def classes_by_code() -> dict[str, type[ModelportError]]:
    """Every known error class by its stable ``code`` (computed on use, so late subclasses count)."""
    table: dict[str, type[ModelportError]] = {}
    for cls in _walk(ModelportError):
        table.setdefault(cls.code, cls)
    return table


def build_error(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    status: int | None = None,
) -> ModelportError:
    """An instance of the class for ``code`` (else for ``status``), without its typed constructor.

    The typed ``__init__`` of each class builds a message from fields the JSON no longer carries, so
    the instance is made with ``__new__`` and filled through the base constructor with the server's
    own message and details.
    """
    cls = classes_by_code().get(code) or STATUS_CLASSES.get(status or 0, ModelportError)
    exc = cls.__new__(cls)
    ModelportError.__init__(exc, message=message, details=details)
    exc.status_code = status  # type: ignore[attr-defined]  # extra facts for callers that want them
    exc.remote_code = code  # type: ignore[attr-defined]
    if isinstance(exc, errors.TooManyRequests):
        exc.retry_after = float(exc.details.get("retry_after", 1.0))
    return exc


def error_from_response(response: httpx.Response) -> ModelportError:
    """The exception for an error response; the body must already be read."""
    status = response.status_code
    try:
        body = orjson.loads(response.content)
        error = body["error"]
        if isinstance(error, str):  # the V2 routes' shape: {"error": message, "code", "details"}
            error = {"message": error, "code": body["code"], "details": body.get("details")}
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") or {}
        if not isinstance(details, dict):
            details = {"value": details}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        # Not our error shape (a proxy in between, or an old server): keep a short excerpt.
        excerpt = response.text.strip().replace("\n", " ")[:200]
        code = f"http_{status}"
        message = f"HTTP {status} {response.reason_phrase}" + (f": {excerpt}" if excerpt else "")
        details = {}
    request_id = response.headers.get("x-request-id")
    if request_id and status >= 500:
        details.setdefault("request_id", request_id)
    return build_error(code, message, details, status)


def connection_failed(url: str, exc: httpx.TransportError) -> ConnectionFailed:
    """A ConnectionFailed naming the URL and the transport's reason in plain words."""
    if isinstance(exc, httpx.TimeoutException):
        reason = "timed out"
    elif isinstance(exc, httpx.ConnectError):
        reason = f"connection failed ({exc})" if str(exc) else "connection refused"
    else:
        reason = str(exc) or type(exc).__name__
    return ConnectionFailed(url=url, reason=reason)


__all__ = [
    "STATUS_CLASSES",
    "ConnectionFailed",
    "build_error",
    "classes_by_code",
    "connection_failed",
    "error_from_response",
]
