"""The inference lane: predict and infer requests answered at the HTTP protocol level, without an ASGI
cycle per request.

uvicorn gives every request a scope dict, an ``asyncio.Event``, a response cycle, receive and send
messages and a check of every response header: about 20 µs of one core per request (a bare ASGI app
under uvicorn answered 33k requests/s here, the same app as a plain asyncio protocol 85k), as much as
the model's run and the JSON parse of RSW-1 request A together. So the server's protocol
(``cli/server.py::GuardedHttp``) offers every request's head to ``Lane.claim``; a claimed request's
body is collected by the protocol, and ``Lane.serve`` answers it with the SAME ``FastPath.respond`` as
the ASGI edge (key, rate limit, permission, schema, the model), the same error bodies, metrics, access
log and audit of denials.

The lane claims only what the edge would pass untouched: a POST to an inference route, with a
Content-Length of at most ``LANE_MAX_BODY``, whose (Host, Content-Type) pair the edge has already seen
pass its checks, and no Origin, Expect or Transfer-Encoding header, no query string or escapes in the
path, while the server is not draining. Everything else (the first request of a new Host, a browser
request, a chunked or large body) goes through the ASGI app, whose edge refuses or answers it, so
every refusal still has one home (``api/middleware.py``). The protocol holds a claimed body to a
deadline of its own, the edge's rule for bodies (``request_body_timeout_s`` plus one second per
``request_body_min_rate`` bytes declared).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from modelport.api import fastpath
from modelport.api.errors import internal_error
from modelport.api.fastpath import FastPath, Reply
from modelport.api.middleware import EdgeMiddleware, fast_params, new_request_id, refusal_response
from modelport.errors import RequestTimeout

LANE_MAX_BODY = 1 << 20
"""Largest body the lane takes (1 MiB: RSW-1's batch of 32 images is 100 kB raw, 165 kB as JSON);
larger ones go through the ASGI app, where a request's fixed cost no longer matters."""
METHOD = "POST"


@dataclass(slots=True)
class LaneRequest:
    """A request the lane claimed: its path, route template, headers and declared body length."""

    path: str
    template: str
    headers: dict[bytes, bytes]
    declared: int


class LaneAnswer(NamedTuple):
    """An answer for the protocol to write: status, headers (the server's own are added), body; with
    ``close``, the connection closes after it (and ``headers`` already say so)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    close: bool = False


class Lane:
    def __init__(self, edge: EdgeMiddleware, fast: FastPath) -> None:
        self.edge = edge
        self.fast = fast
        self.limit = min(edge.limits["tensor"], LANE_MAX_BODY)
        self.arrivals = edge.ctx.runtime.arrivals

    def claim(self, url: bytes, raw_headers: list[tuple[bytes, bytes]]) -> LaneRequest | None:
        """The request as the lane will answer it, or None to leave it to the ASGI app. ``url`` is the
        request target as sent, ``raw_headers`` the headers with lower-case names."""
        if b"?" in url or b"%" in url or not url.isascii():
            return None
        path = url.decode("ascii")
        template = fastpath.match(METHOD, path)
        if template is None:
            return None
        headers = dict(raw_headers)
        length = headers.get(b"content-length")
        if length is None or b"origin" in headers or b"transfer-encoding" in headers or b"expect" in headers:
            return None
        declared = int(length) if len(length) <= 12 and length.isdigit() else 0
        if not 0 < declared <= self.limit or self.edge.ctx.draining:
            return None
        if not self.edge.passed(headers.get(b"host"), headers.get(b"content-type"), "tensor"):
            return None
        return LaneRequest(path, template, headers, declared)

    def body_seconds(self, request: LaneRequest) -> float:
        """How long the client may take to send the body of ``request`` (the edge's rule for bodies)."""
        bodies = self.edge.bodies
        return bodies.timeout_s + request.declared / bodies.min_rate

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        request: LaneRequest,
        body: bytes,
        client: tuple[str, int] | None,
        write: Callable[[LaneAnswer], None],
    ) -> asyncio.Task[None]:
        """The task that answers ``request``, counted among the arrivals of this turn until it starts, so
        that the batcher of a cheap model gathers the requests that came in together into one call. (A
        task cancelled before it ever ran leaves its count: at worst, idle requests then gather, which
        costs a turn of the loop, not an answer.)"""
        self.arrivals.coming += 1
        return loop.create_task(self.serve(request, body, client, write))

    async def serve(
        self,
        request: LaneRequest,
        body: bytes,
        client: tuple[str, int] | None,
        write: Callable[[LaneAnswer], None],
    ) -> None:
        """Answer ``request`` through ``write`` (called once), then audit a denial and count it."""
        self.arrivals.coming -= 1
        request_id = new_request_id()
        started = time.perf_counter()
        try:
            reply = await self.fast.respond(request.path, request.headers, body)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no trace leaves the server
            reply = internal_error(request_id, exc)
        rid = request_id.encode()
        self.edge.metrics.lane_requests += 1
        if isinstance(reply, Reply):
            status = 200
            size = b"%d" % len(reply.body)
            headers = [(b"content-type", reply.media_type), (b"content-length", size), *reply.headers]
            headers.append((b"x-request-id", rid))
            write(LaneAnswer(200, headers, reply.body))
        else:
            status = reply.status_code
            write(LaneAnswer(status, [*reply.raw_headers, (b"x-request-id", rid)], bytes(reply.body)))
        if status == 403:
            params = fast_params(request.path)
            await self.edge.audit_denial(METHOD, request.template, params, request.headers, client, request_id)
        self.edge.finish(request.template, METHOD, status, started, request_id)

    def too_slow(self, request: LaneRequest) -> LaneAnswer:
        """The answer to a claimed body that missed its deadline: 408, and the connection closes."""
        request_id = new_request_id()
        refusal = refusal_response(RequestTimeout(seconds=self.edge.bodies.timeout_s))
        self.edge.finish(request.template, METHOD, refusal.status_code, time.perf_counter(), request_id)
        headers = [*refusal.raw_headers, (b"x-request-id", request_id.encode())]
        return LaneAnswer(refusal.status_code, headers, bytes(refusal.body), close=True)
