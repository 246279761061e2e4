"""ModelportError -> HTTP status and ``{"error": {"code", "message", "details"}}``: the ONE mapping."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelport import errors

log = logging.getLogger("modelport.api")


STATUS: dict[type[errors.ModelportError], int] = {
    errors.BadRequest: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.RequestTimeout: 408,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.ValidationFailed: 422,
    errors.TooManyRequests: 429,
    errors.IntegrityError: 500,
    errors.Unavailable: 503,
}
HTTP_CODES = {
    404: "route_not_found",
    405: "method_not_allowed",
    400: "bad_request",
    413: "payload_too_large",
}


def status_of(exc: errors.ModelportError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
    *,
    v2: bool = False,
) -> Response:
    """The error answer. With ``v2`` (the Open Inference Protocol's routes), the protocol's own shape:
    ``{"error": "<message>"}``, which KServe and Triton clients read (tritonclient fails on an object
    there), with ``code`` and ``details`` beside it."""
    if v2:
        body = orjson.dumps({"error": message, "code": code, "details": details or {}})
    else:
        body = orjson.dumps({"error": {"code": code, "message": message, "details": details or {}}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _modelport_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ModelportError)
    status = status_of(exc)
    headers = None
    if isinstance(exc, errors.TooManyRequests):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, errors.Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    if status >= 500:
        log.error("request %s failed: %s", getattr(request.state, "request_id", "-"), exc.code)
    v2 = request.url.path.startswith("/v2/")
    response = error_response(status, exc.code, exc.message, exc.details, headers, v2=v2)
    exc.__traceback__ = None  # an idle worker thread may keep the error; its frames hold the request body
    return response


def log_internal_error(request_id: str, exc: BaseException) -> None:
    """An unexpected exception in the log: its type only; the traceback, which carries server paths,
    at debug level."""
    log.error("request %s failed: internal error (%s)", request_id, type(exc).__name__)
    log.debug("request %s traceback", request_id, exc_info=exc)


def internal_error(request_id: str, exc: BaseException) -> Response:
    """The generic 500 for an unexpected exception (logged): the one JSON error shape with the request id."""
    log_internal_error(request_id, exc)
    return error_response(500, "internal", "internal error", {"request_id": request_id})


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Any other exception in a FastAPI route."""
    return internal_error(getattr(request.state, "request_id", "-"), exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append({"field": loc or "(body)", "problem": str(err.get("msg", "invalid"))})
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems) or "invalid request"
    return error_response(422, "validation_failed", message, {"problems": problems})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = "no such endpoint; see /docs for the API" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ModelportError, _modelport_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
