"""uvicorn as ``modelport serve`` runs it: TLS, the limits against slow clients, draining on SIGTERM.

Both ``serve`` (one process) and ``serve --workers N`` (each child) build their uvicorn config here, so
the two cannot drift apart. What uvicorn does not do by itself, and this module adds:

- a deadline for a request's line and headers (uvicorn waits forever for a connection that sends
  nothing, or a header a second: slowloris), and a cap on their size with httptools (uvicorn applies
  ``h11_max_incomplete_event_size`` to h11 only);
- on the first stop signal, the app is told to drain: requests already admitted finish, new ones get
  503 (uvicorn stops accepting connections, and closes idle ones, at the same moment);
- a response's headers and a small body leave in one write (``CorkedTransport``);
- inference requests the app's lane claims (``api/lane.py``) are answered without an ASGI cycle: the
  protocol collects the body (to a deadline of its own) and writes the lane's answer in one write.

The body of a request the ASGI app reads has its own deadline in the app (``api/guards.py::BodyWatch``),
which knows when the route is waiting for the client rather than busy, and covers any ASGI server.
"""

from __future__ import annotations

import asyncio
import socket
import time
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

import typer
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from modelport.api.lane import Lane, LaneAnswer, LaneRequest
    from modelport.config import Settings

CONTINUE = b"HTTP/1.1 100 "
"""An interim answer the client waits for before sending its body: never held."""
COALESCE_BYTES = 64 * 1024
"""Bodies up to this size are joined to their held headers (a copy); larger ones follow them."""
STATUS_LINES = {408: b"HTTP/1.1 408 Request Timeout", 431: b"HTTP/1.1 431 Request Header Fields Too Large"}


class Deadlines:
    """Connections waiting on their client (for a request's headers, or the body of a request the lane
    claimed), and until when: one timer per server checks them all (a timer per request would cost
    ~2 µs on every request of every kept-alive connection)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        """The time allowed for a request's line and headers."""
        self.tick_s = min(1.0, timeout_s / 4)
        self.waiting: dict[GuardedHttp, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, conn: GuardedHttp, seconds: float | None = None) -> None:
        """Give ``conn`` ``seconds`` from now (default: the headers' time) for what it must send next."""
        self.waiting[conn] = conn.loop.time() + (self.timeout_s if seconds is None else seconds)
        if self._timer is None:
            self._timer = conn.loop.call_later(self.tick_s, self._tick, conn.loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for conn, deadline in list(self.waiting.items()):
            if deadline <= now:
                conn.too_slow()
        if self.waiting:
            self._timer = loop.call_later(self.tick_s, self._tick, loop)


class IdlePoll:
    """Keeps the event loop polling for a while after an answer at low load instead of sleeping in the
    kernel.

    At low load the server answers and goes to sleep in ``epoll_wait``; the next request then pays the
    wake-up: the scheduler, and on a virtual machine the exit from the idle vCPU, with caches cooled
    meanwhile (~20-40 µs of a one-connection round trip of ~240 µs here). A chain of ``call_soon``
    callbacks keeps the loop turning (each turn polls the sockets with a zero timeout) for ``seconds``
    after the answer, like ONNX Runtime's spinning worker threads. Bounded: it stops ``seconds`` after
    the last answer that started it. While it turns, a worker thread waiting for the GIL may wait until
    it stops (at most ``seconds``).

    Only an answer that looks like low load starts or extends it: no other lane request in flight
    (``busy``), and the previous answer at least ``quiet`` ago. Under load the loop must sleep between
    bursts instead: the wake-up is what lets a burst's requests arrive together, to be parsed in one
    turn and gathered into one model call; an unguarded poll took each as it came (A@64 -8 to -15%
    here). A burst's first answers have company in flight, and its last follows the one before by
    microseconds, so neither polls; at one connection every answer is alone, a round trip after the
    previous. Off unless configured (``Settings.idle_poll_us``).
    """

    __slots__ = ("busy", "last", "quiet", "running", "seconds", "until")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.quiet = seconds / 4
        """The least gap since the previous answer for an answer to count as low load."""
        self.busy = 0
        """Lane requests taken in and not yet answered (counted by the protocol)."""
        self.last = 0.0
        self.until = 0.0
        self.running = False

    def answered(self, loop: asyncio.AbstractEventLoop) -> None:
        """An answer left: at low load, keep the loop polling until ``seconds`` from now."""
        if self.seconds:
            now = time.perf_counter()  # uvloop's loop.time() counts milliseconds
            previous, self.last = self.last, now
            if self.busy or now - previous < self.quiet:
                return
            self.until = now + self.seconds
            if not self.running:
                self.running = True
                loop.call_soon(self._turn, loop)

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        if time.perf_counter() < self.until:
            loop.call_soon(self._turn, loop)
        else:
            self.running = False


class _NoEvent:
    def set(self) -> None:
        """uvicorn wakes a cycle's reader on disconnect; a lane request has none."""


class LaneExchange:
    """A request the lane claimed, as uvicorn's protocol code sees a request's cycle: whether its answer
    is complete, whether the client left, whether the connection stays open after it. While it is not
    complete, uvicorn queues a pipelined next request behind it, as behind any cycle."""

    __slots__ = ("chunks", "disconnected", "keep_alive", "message_event", "request", "response_complete")

    def __init__(self, request: LaneRequest, keep_alive: bool) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []
        self.response_complete = False
        self.disconnected = False
        self.message_event = _NO_EVENT


_NO_EVENT = _NoEvent()


class CorkedTransport:
    """A connection's transport as uvicorn's response cycles see it: a response's status line and
    headers are held until its first body write and leave with it, so a small answer costs one system
    call instead of two (uvloop writes at once on every ``write``). One per connection: its responses
    are written one after another, and ``release()`` at each response's end re-arms the hold."""

    __slots__ = ("armed", "held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held = b""
        self.armed = True

    def write(self, data: bytes) -> None:
        if self.armed:
            self.armed = False
            if data.startswith(b"HTTP/") and not data.startswith(CONTINUE):
                self.held = data
                return
        if self.held:
            held, self.held = self.held, b""
            if len(data) <= COALESCE_BYTES:
                data = held + data
            else:
                self.transport.write(held)
        self.transport.write(data)

    def release(self) -> None:
        """The response is complete (maybe without a body write: HEAD): send what is held, re-arm."""
        if self.held:
            held, self.held = self.held, b""
            self.transport.write(held)
        self.armed = True

    def close(self) -> None:
        self.release()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for request headers and a cap on their size, and
    the inference lane."""

    max_header_bytes: ClassVar[int] = 32 * 1024
    deadlines: ClassVar[Deadlines] = Deadlines(10.0)
    idle_poll: ClassVar[IdlePoll] = IdlePoll(0.0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._awaiting_headers = True
        self._corked: CorkedTransport | None = None
        # the app's lane; uvicorn wraps the app (and it has none) only with trace logging or proxy headers
        self._lane: Lane | None = getattr(self.app, "lane", None)
        self._reading: LaneExchange | None = None
        """The lane request whose body is arriving."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self._corked = CorkedTransport(transport)
        self.deadlines.start(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.waiting.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
            if self not in self.deadlines.waiting:  # first byte of the next request on a kept-alive connection
                self.deadlines.start(self)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(431)

    def on_headers_complete(self) -> None:
        self.deadlines.waiting.pop(self, None)
        self._awaiting_headers = False
        self._header_bytes = 0
        if self._lane is not None and (self.cycle is None or self.cycle.response_complete):
            exchange = self._claim(self._lane)
            if exchange is not None:
                self.cycle = exchange  # type: ignore[assignment]  # what uvicorn reads of a cycle, see LaneExchange
                self._reading = exchange
                self.deadlines.start(self, self._lane.body_seconds(exchange.request))
                return
        super().on_headers_complete()
        if self.cycle is not None and self._corked is not None:
            self.cycle.transport = self._corked  # type: ignore[assignment]  # write, close, is_closing

    def _claim(self, lane: Lane) -> LaneExchange | None:
        """The request as a lane exchange, when the lane takes it (not with Expect: 100-continue, whose
        interim answer the ASGI cycle writes, nor HTTP/1.0 or an upgrade)."""
        parser = self.parser
        if self.expect_100_continue or parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
            return None
        if parser.should_upgrade():
            return None
        request = lane.claim(self.url, self.headers)
        return None if request is None else LaneExchange(request, parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self._reading is not None:
            self._reading.chunks.append(body)  # at most LANE_MAX_BODY in all: the lane claimed its length
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        exchange = self._reading
        if exchange is None:
            super().on_message_complete()
            return
        self._reading = None
        self.deadlines.waiting.pop(self, None)
        chunks, exchange.chunks = exchange.chunks, []
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        assert self._lane is not None
        task = self._lane.start(self.loop, exchange.request, body, self.client, partial(self._write_lane, exchange))
        self.idle_poll.busy += 1
        self.tasks.add(task)  # a graceful shutdown waits for these, as for uvicorn's own
        task.add_done_callback(self.tasks.discard)

    def _write_lane(self, exchange: LaneExchange, answer: LaneAnswer) -> None:
        """Write a lane answer in one piece (the server's default headers first, as uvicorn does), close
        the connection when the request or the answer asks, and start what is pipelined behind it."""
        exchange.response_complete = True
        self.idle_poll.busy -= 1
        if not exchange.disconnected and not self.transport.is_closing():
            keep = exchange.keep_alive and not answer.close
            lines = [STATUS_LINE[answer.status]]
            # header values are the server's own (sizes, media types, ids, error codes), never the client's
            lines += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
            lines += [b"%s: %s\r\n" % pair for pair in answer.headers]
            if not keep and not answer.close:
                lines.append(b"connection: close\r\n")
            lines.append(b"\r\n")
            if len(answer.body) <= COALESCE_BYTES:
                lines.append(answer.body)
                self.transport.write(b"".join(lines))
            else:
                self.transport.write(b"".join(lines))
                self.transport.write(answer.body)
            if not keep:
                self.transport.close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        self._awaiting_headers = True
        self.idle_poll.answered(self.loop)
        if self._corked is not None:
            self._corked.release()
        super().on_response_complete()

    def too_slow(self) -> None:
        """Past the deadline of what this connection must send: a lane body, or a request's headers."""
        exchange = self._reading
        if exchange is not None and self._lane is not None:
            self._reading = None
            self.deadlines.waiting.pop(self, None)
            self.idle_poll.busy += 1  # answered without a task: counted as taken in, as _write_lane uncounts
            self._write_lane(exchange, self._lane.too_slow(exchange.request))
            return
        if self._header_bytes:
            self._refuse(408)
            return
        self.deadlines.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()  # connected and sent nothing: nothing to answer

    def _refuse(self, status: int) -> None:
        self.deadlines.waiting.pop(self, None)
        self._awaiting_headers = False
        if self.transport.is_closing():
            return
        self.transport.write(STATUS_LINES[status] + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()


def guarded_http(settings: Settings) -> type[GuardedHttp]:
    """The protocol class for uvicorn's ``http=`` option: the header limits of ``settings``, a deadline
    watch and an idle poll of its own (one per server, so one event loop)."""
    limits = {
        "max_header_bytes": settings.max_header_bytes,
        "deadlines": Deadlines(settings.request_header_timeout_s),
        "idle_poll": IdlePoll(settings.idle_poll_us / 1e6),
    }
    return type("GuardedHttp", (GuardedHttp,), limits)


def uvicorn_config(settings: Settings, app: Any, *, bind: bool = True) -> uvicorn.Config:
    """The uvicorn config of ``modelport serve``; ``bind=False`` for a child given a bound socket."""
    where: dict[str, Any] = {"host": settings.host, "port": settings.port} if bind else {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        where.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
    return uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,  # audit records the peer address; X-Forwarded-For is not trusted
        timeout_graceful_shutdown=settings.graceful_timeout,
        lifespan="on",
        http=guarded_http(settings),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **where,
    )


class Server(uvicorn.Server):
    """uvicorn's server, telling the app to drain at the first stop signal; with ``announce``, it
    prints the bound address (the real port when 0 was asked)."""

    announce: ClassVar[bool] = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = getattr(self.config.app, "drain", None)
        if callable(drain):
            drain()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.announce and self.started and not self.should_exit:
            host, port = self.config.host, self.config.port
            if self.servers and self.servers[0].sockets:
                port = self.servers[0].sockets[0].getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            scheme = "https" if self.config.ssl_certfile else "http"
            typer.echo(f"Modelport listening on {scheme}://{shown}:{port}")


class AnnouncingServer(Server):
    announce = True
