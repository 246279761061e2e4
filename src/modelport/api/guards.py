"""The edge's request guards: Host allowlist, cross-origin policy, body media types, slow bodies.

Each guard is built once from Settings (allowlists become sets); ``api/middleware.py`` applies them
in front of everything, the inference fast path included, and remembers which (Host, Content-Type)
pairs passed, so a request like an earlier one costs one set lookup. Why each exists:

- Host: a browser page on ``evil.example`` whose name is made to resolve to 127.0.0.1 (DNS rebinding)
  reaches a server on localhost as same-origin; the Host header still says ``evil.example``. Names
  must be listed; IP addresses are always answered, since rebinding needs a name (and so Kubernetes
  probes, which send the pod's IP, and clients of ``--host 0.0.0.0`` by address work as they are).
- Origin: any page may make a browser *send* a simple cross-origin request (a form post, a ``no-cors``
  fetch) even if it cannot read the answer; refusing foreign origins stops such drive-by writes,
  which matters most for a server run with ``--no-auth``.
- Media types: form posts and ``text/plain`` bodies are what a page can send without a preflight, so a
  JSON route that refuses them cannot be driven by one.
- Slow bodies: a client that trickles its body would otherwise hold a request (and its memory) open
  for as long as it likes.
- JSON depth: a control-plane body is parsed by the standard library (recursive, ~1000 levels before a
  ``RecursionError``) and then walked by pydantic and by the services; ``max_json_depth`` bounds both,
  checked on the bytes before any parser runs. Inference bodies are not scanned: orjson stops at 1024
  levels and their arrays can nest no deeper than the model's signature.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import Any, Final, Literal, NoReturn

import numpy as np
from starlette.types import Message, Receive

from modelport.config import Settings
from modelport.errors import JsonTooDeep, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

RouteKind = Literal["json", "tensor", "upload"]
"""What a route's body is: JSON, an inference body (JSON or a raw tensor), or a multipart upload."""

EXPECTED: Final[dict[RouteKind, str]] = {
    "json": "application/json",
    "tensor": "application/json or application/octet-stream",
    "upload": "multipart/form-data",
}
_ACCEPTS: Final[dict[RouteKind, frozenset[str]]] = {
    "json": frozenset({"json"}),
    "tensor": frozenset({"json", "octet"}),
    "upload": frozenset({"multipart"}),
}
WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH"})


def route_kind(method: str, path: str) -> RouteKind:
    """The body a route takes, from its path alone (the same rule picks its body-size limit)."""
    if method == "POST":
        if path.endswith(("/predict", "/infer")):
            return "tensor"
        if (path.startswith("/v1/models/") and path.endswith("/versions")) or path.rstrip("/") == "/v1/datasets":
            return "upload"
    return "json"


def body_limits(settings: Settings) -> dict[RouteKind, int]:
    return {"json": settings.max_json_bytes, "tensor": settings.max_predict_bytes, "upload": settings.max_upload_bytes}


def depth_limits(settings: Settings) -> dict[RouteKind, int]:
    """The nesting limit each kind of body is scanned for; 0: not scanned (see the module docstring)."""
    return {"json": settings.max_json_depth, "tensor": 0, "upload": 0}


_NOT_KEPT = bytes(b for b in range(256) if b not in b'[]{}"')
_STEPS = np.zeros(256, dtype=np.int8)
_STEPS[[ord("["), ord("{")]] = 1
_STEPS[[ord("]"), ord("}")]] = -1


def json_depth_over(text: bytes, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects deeper than ``limit`` (brackets in strings do
    not count). A text with no more than ``limit`` opening brackets in all costs two ``bytes.count``
    (nearly every body: ~0.4 µs); any other a few passes in C and numpy, without recursion (~10 ms for
    1 MiB). Malformed JSON is left to the parser."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    if b"\\" in text:  # drop escapes: a run of backslashes pairs up left to right, as in JSON strings
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = np.frombuffer(text.translate(None, _NOT_KEPT), dtype=np.uint8)  # brackets and quotes only
    steps = _STEPS[kept]
    quotes = kept == ord('"')
    if quotes.any():
        steps[(np.cumsum(quotes, dtype=np.int32) & 1).astype(bool)] = 0  # inside a string
    return bool(np.cumsum(steps, dtype=np.int32).max() > limit)


def check_json_depth(text: bytes, limit: int, *, what: str = "the JSON body") -> None:
    """JsonTooDeep when ``text`` nests deeper than ``limit``."""
    if json_depth_over(text, limit):
        raise JsonTooDeep(limit=limit, what=what)


def _host_part(value: bytes) -> bytes:
    """``Host`` without its port, lower-case: ``[::1]:8000`` -> ``[::1]``, ``a.b:80`` -> ``a.b``."""
    value = value.strip().lower()
    if value.startswith(b"["):
        end = value.find(b"]")
        return value[: end + 1] if end > 0 else value
    return value.partition(b":")[0].rstrip(b".")


def _is_address(host: bytes) -> bool:
    try:
        ipaddress.ip_address(host.strip(b"[]").decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


class HostGuard:
    """Answers whether a request's ``Host`` is one the server may be reached by: a listed name, or an
    IP address."""

    def __init__(self, settings: Settings) -> None:
        names = list(settings.allowed_hosts)
        self.any = "*" in names
        if settings.host not in ("0.0.0.0", "::", ""):
            names.append(settings.host)
        allowed: set[bytes] = set()
        for name in names:
            name = name.strip().lower()
            if name.count(":") > 1 and not name.startswith("["):
                name = f"[{name}]"  # a bare IPv6 address, as it appears in a Host header
            allowed.add(_host_part(name.encode()))
        self.names = frozenset(allowed)

    def allows(self, host: bytes | None) -> bool:
        """True for an allowed name, and for no Host at all (browsers always send one)."""
        if self.any or host is None:
            return True
        name = _host_part(host)
        return name in self.names or _is_address(name)


PREFLIGHT_METHODS = b"GET, POST, PUT, PATCH, DELETE"
PREFLIGHT_HEADERS = b"authorization, content-type, accept, x-tensor-shape, x-tensor-dtype"
EXPOSED_HEADERS = b"x-request-id, retry-after, x-model, x-model-version, x-tensor-shape, x-tensor-dtype"


class OriginGuard:
    """Cross-origin policy: listed origins get CORS headers (the exact origin, never ``*``, never
    credentials: keys travel in ``Authorization``, not cookies); same-origin requests pass without
    any; every other ``Origin`` is refused."""

    def __init__(self, settings: Settings) -> None:
        self.listed = frozenset(o.encode() for o in settings.cors_origins)

    def verdict(self, origin: bytes, host: bytes | None) -> Literal["listed", "same", "refused"]:
        if origin in self.listed:
            return "listed"
        if host is not None and origin.partition(b"://")[2] == host.lower():
            return "same"
        return "refused"

    @staticmethod
    def response_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
            (b"vary", b"origin"),
        ]

    @staticmethod
    def preflight_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", PREFLIGHT_METHODS),
            (b"access-control-allow-headers", PREFLIGHT_HEADERS),
            (b"access-control-max-age", b"600"),
            (b"vary", b"origin"),
        ]


def _media_class(content_type: bytes) -> str:
    media = content_type.partition(b";")[0].strip().lower()
    if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
        return "json"
    if media == b"application/octet-stream":
        return "octet"
    if media == b"multipart/form-data":
        return "multipart"
    return "other"


def check_media(kind: RouteKind, content_type: bytes | None, has_body: bool) -> None:
    """Raise UnsupportedMediaType unless the body's type is one the route takes (no body and no type
    always passes; predict/infer read an untyped body as JSON, as they always did)."""
    if content_type is None:
        if has_body and kind != "tensor":
            raise UnsupportedMediaType(expected=EXPECTED[kind])
        return
    if _media_class(content_type) not in _ACCEPTS[kind]:
        raise UnsupportedMediaType(expected=EXPECTED[kind])


class BodyWatch:
    """Deadlines for request bodies, enforced by one timer per process instead of one per request.

    A body must be complete ``timeout_s`` after its first read, plus one second per ``min_rate`` bytes
    received so far (a 1 GB upload on a good link is never cut; a 1 byte/s trickle is). A tick every
    ``tick_s`` cancels the reads that wait past their deadline, and the read turns that cancellation
    into RequestTimeout. A body is only cancelled while its route waits for more of it, never while
    the route is busy with what it already has. Per request this costs a set insert and removal and
    one ``current_task`` (~0.8 µs in all, where an ``asyncio.timeout`` per read measured ~4.5 µs).
    """

    def __init__(self, timeout_s: float, min_rate: int) -> None:
        self.timeout_s = timeout_s
        self.min_rate = float(min_rate)
        self.tick_s = min(1.0, timeout_s / 4)
        self.open: set[Body] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def watch(self, body: Body) -> tuple[asyncio.Task[Any], float]:
        """Start watching ``body`` (at its first read): the task reading it, and the loop time now."""
        task, loop = self._current()
        self.open.add(body)
        if self._timer is None or self._timer_loop is not loop:
            self._timer, self._timer_loop = loop.call_later(self.tick_s, self._tick, loop), loop
        return task, loop.time()

    def _current(self) -> tuple[asyncio.Task[Any], asyncio.AbstractEventLoop]:
        # asyncio.get_running_loop() makes a getpid() system call each time; one loop runs per thread
        # at a time, so the loop seen last on this thread is still it while it runs a task.
        loop = self._loop
        if loop is not None and self._thread == threading.get_ident():
            task = asyncio.current_task(loop)
            if task is not None:
                return task, loop
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        task = asyncio.current_task(loop)
        assert task is not None  # ASGI servers call from a task
        return task, loop

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for body in list(self.open):
            if body.reading and not body.expired and now >= body.deadline():
                body.expired = True
                body.task.cancel()
        if self.open:
            self._timer = loop.call_later(self.tick_s, self._tick, loop)


class Body:
    """One request's ``receive``, read through its size limit and its deadline until the body is complete.

    A refusal raised while reading is also put in ``refused``, so the edge can answer with it whatever
    the route made of the exception (FastAPI turns any error while parsing a body into a 400). With a
    ``depth`` limit, the complete body is checked by ``check_json_depth`` before the route sees its end.
    """

    __slots__ = (
        "chunks",
        "depth",
        "done",
        "expired",
        "first_read",
        "limit",
        "reading",
        "receive",
        "received",
        "refused",
        "task",
        "watch",
    )

    def __init__(
        self, watch: BodyWatch, receive: Receive, limit: int, refused: list[Exception], depth: int = 0
    ) -> None:
        self.watch = watch
        self.receive = receive
        self.limit = limit
        self.refused = refused
        self.depth = depth
        self.chunks: list[bytes] = []
        self.received = 0
        self.first_read = -1.0
        self.reading = self.expired = self.done = False
        self.task: asyncio.Task[Any]

    def deadline(self) -> float:
        return self.first_read + self.watch.timeout_s + self.received / self.watch.min_rate

    async def __call__(self) -> Message:
        if self.done:
            return await self.receive()
        if self.first_read < 0:
            self.task, self.first_read = self.watch.watch(self)
        self.reading = True
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            if not self.expired:
                raise
            self.task.uncancel()
            self._refuse(RequestTimeout(seconds=self.watch.timeout_s))
        finally:
            self.reading = False
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self.limit:
                self._refuse(PayloadTooLarge(limit=self.limit))
            if self.depth:
                self._check_depth(chunk, message.get("more_body", False))
            if message.get("more_body", False):
                return message
        self.close()
        return message

    def _check_depth(self, chunk: bytes, more: bool) -> None:
        if more:
            self.chunks.append(chunk)
            return
        text = b"".join((*self.chunks, chunk)) if self.chunks else chunk
        self.chunks = []
        try:
            check_json_depth(text, self.depth)
        except JsonTooDeep as exc:
            self._refuse(exc)

    def _refuse(self, exc: Exception) -> NoReturn:
        self.close()
        self.refused.append(exc)
        raise exc from None

    def close(self) -> None:
        """Stop watching (the body is complete, refused, or the request is over)."""
        self.done = True
        self.watch.open.discard(self)
