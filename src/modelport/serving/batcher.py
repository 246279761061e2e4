"""Dynamic batching that costs nothing at low load.

When the model is idle a request runs at once (no fixed wait: every fixed-wait batcher measured in
RSW-1 fell to 70-155 requests/s at one connection). Requests that arrive while the model is busy queue
up; when the call in flight returns, everything queued (up to ``max_batch`` examples with the same
per-example shapes and dtypes) is merged into ONE call and the outputs are split back. Under load the
batch size therefore grows by itself with the arrival rate, and one model call runs at a time per
version, so threads never oversubscribe the cores.

    batcher = Batcher(pipeline.run, max_batch=256, max_wait_s=0.0, queue_limit=4096, timeout_s=30)
    outputs = await batcher(arrays)     # arrays: {input name: (n, ...) array}

A queue over ``queue_limit`` examples answers TooManyRequests (429 + Retry-After); a request that has
not been answered within ``timeout_s`` gets Unavailable (503) and is dropped from the queue.

A model cheap enough to run on the event loop (``inline_below_s``) is never "busy" from the loop's
point of view: each request would run alone, one model call each, however many arrived together. So
when others are on their way in the same turn of the loop (``Arrivals``, counted by the protocol lane),
an idle batcher gathers: the requests of this turn queue up and one callback, next turn, runs them as
one call (or as few as fit ``max_batch`` and the inline budget). One request alone still runs at once.
When that callback finds a single request gathered while more are still on their way (many models
sharing one loop: each turn's arrivals spread thin over them), it waits for them, up to
``GATHER_TURNS`` turns, so that one model call answers several requests instead of each its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio.to_thread
import numpy as np

from modelport.errors import TooManyRequests, Unavailable
from modelport.formats.base import Tensors

RunFn = Callable[[Tensors], Tensors]
SAMPLE_EVERY = 16
"""Model calls per measurement of their cost (the estimate behind ``inline_below_s``)."""
GATHER_TURNS = 2
"""Turns of the event loop a gathered call that holds one request waits while others are on their way.

With 20 models on one loop at 64 connections, 11-22 requests arrive per turn, so most models get one
or two: a call each, on weights that have left the core's cache (~20 us a call in the server against 7
hot in a loop). Waiting up to two turns (1-2 ms each at 64 connections) took it from 1.8-1.9 to 2.6-3.0
examples a call in bench/serving/many_models.py. It never applies when nothing else is on its way: a
request alone still runs at once."""


class Arrivals:
    """How many requests are on their way to a batcher in this turn of the event loop: the protocol
    lane counts one when it creates a request's task and uncounts it when the task starts. While it
    is above zero, an idle batcher gathers instead of running at once."""

    __slots__ = ("coming",)

    def __init__(self) -> None:
        self.coming = 0


def _rows(arrays: Tensors) -> int:
    return int(next(iter(arrays.values())).shape[0])


def _key(arrays: Tensors) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """Requests merge only when every input has the same per-example shape and dtype."""
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in arrays.items())


@dataclass(eq=False)
class _Item:
    arrays: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    key: tuple[tuple[str, tuple[int, ...], str], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key = _key(self.arrays)


class Batcher:
    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int,
        max_wait_s: float = 0.0,
        queue_limit: int = 4096,
        timeout_s: float = 30.0,
        on_batch: Callable[[int], None] | None = None,
        inline_below_s: float = 0.0,
        arrivals: Arrivals | None = None,
    ) -> None:
        self.run = run
        self.inline_below_s = inline_below_s
        self.arrivals = arrivals
        self._gathering: asyncio.AbstractEventLoop | None = None
        """The loop a gathered call will run on (next turn), while requests gather for it."""
        self._waited = 0
        """Turns the gathered call has waited for company (see ``GATHER_TURNS``)."""
        self._row_s: float | None = None
        self._calls = 0
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        self._busy = False
        self._alone = False
        """Set by the first merged call whose outputs did not split back (``_follows``): from then on
        every request is a call of its own."""

    @property
    def queue_depth(self) -> int:
        """Examples waiting (not counting the call in flight)."""
        return self._queued_rows

    @property
    def busy(self) -> bool:
        return self._busy or bool(self._pending)

    async def __call__(self, arrays: Tensors) -> Tensors:
        rows = _rows(arrays)
        if self._gathering is not None and self._inline_ok(rows):
            return await self._join(self._gathering, arrays, rows)
        if not self._busy and not self._pending and self.max_wait_s == 0:
            if self._inline_ok(rows):
                if self.arrivals is not None and self.arrivals.coming:
                    loop = self._gathering = asyncio.get_running_loop()
                    self._busy = True
                    loop.call_soon(self._flush)
                    return await self._join(loop, arrays, rows)
                return self._run_inline(arrays, rows)
            return await self._run_now(arrays, rows)
        self._check_room(rows)
        item = _Item(arrays, rows, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._queued_rows += rows
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.timeout_s)
        except TimeoutError:
            item.future.cancel()
            raise Unavailable(message=f"no answer within {self.timeout_s:g} s; the model is overloaded") from None

    async def _join(self, loop: asyncio.AbstractEventLoop, arrays: Tensors, rows: int) -> Tensors:
        """Queue for the gathered call, which runs next turn on the loop (so no timeout is needed)."""
        self._check_room(rows)
        item = _Item(arrays, rows, loop.create_future())
        self._pending.append(item)
        self._queued_rows += rows
        return await item.future

    def _check_room(self, rows: int) -> None:
        """TooManyRequests when ``rows`` more examples would pass the queue limit."""
        if self._queued_rows + rows > self.queue_limit:
            raise TooManyRequests(
                message=f"this model has {self._queued_rows} examples queued (limit {self.queue_limit}); retry soon",
                retry_after=1.0,
            )

    def _flush(self) -> None:
        """The gathered call(s), on the event loop: what gathered, merged into calls that each stay
        within ``inline_below_s`` (and ``max_batch``). A large request that queued meanwhile (too slow
        for the loop alone) goes to the worker thread, with whatever is behind it."""
        loop = self._gathering
        coming = self.arrivals is not None and self.arrivals.coming > 0
        if loop is not None and coming and len(self._pending) == 1 and self._waited < GATHER_TURNS:
            self._waited += 1
            loop.call_soon(self._flush)  # still gathering: what starts this turn joins
            return
        self._waited = 0
        self._gathering = None
        handed_over = False
        fits = self.max_batch
        if self._row_s:
            fits = max(1, min(fits, int(self.inline_below_s / self._row_s)))
        try:
            while self._pending:
                batch = self._take(fits)
                if not batch:
                    continue
                if len(batch) == 1 and loop is not None and not self._inline_ok(batch[0].rows):
                    self._pending.appendleft(batch[0])
                    self._queued_rows += batch[0].rows
                    loop.create_task(self._drain())  # busy until the drain ends
                    handed_over = True
                    return
                self._run_batch_inline(batch)
        finally:
            if not handed_over:
                self._busy = False  # (anything left queued after an error starts the next drain)

    def _inline_ok(self, rows: int) -> bool:
        return self._row_s is not None and self._row_s * rows < self.inline_below_s

    def _run_batch_inline(self, batch: list[_Item]) -> None:
        outputs: Tensors | None = None
        failure: Exception | None = None
        try:
            outputs = self._timed(_merged(batch))
        except Exception as exc:  # noqa: BLE001 - isolate: one bad request must not fail its neighbours
            failure = exc
        if not self._settled(batch, outputs, failure):
            for item in batch:
                self._run_batch_inline([item])

    async def _run_now(self, arrays: Tensors, rows: int) -> Tensors:
        """Idle path for a model too slow to run on the loop: call it in a worker thread at once; then
        serve whatever queued meanwhile."""
        self._busy = True
        try:
            result = await anyio.to_thread.run_sync(self._timed, arrays)
            if self.on_batch is not None:
                self.on_batch(rows)
            return result
        finally:
            if self._pending:
                asyncio.get_running_loop().create_task(self._drain())
            else:
                self._busy = False

    def _run_inline(self, arrays: Tensors, rows: int) -> Tensors:
        """A call measured to take less than ``inline_below_s`` runs on the event loop itself.

        Handing a 10-microsecond model call to a worker thread costs more than the call: the queue and
        wake-up, then the GIL hand-back, which can wait for the interpreter's 5 ms switch interval while
        the loop is busy parsing other requests. Such calls block the loop for less time than parsing
        the request's JSON did; slower models always run in the worker thread.
        """
        result = self._timed(arrays)
        if self.on_batch is not None:
            self.on_batch(rows)
        return result

    def _timed(self, arrays: Tensors) -> Tensors:
        # CPU time of this thread, not wall time: in a worker thread the wall time includes waiting to
        # get the GIL back from the busy event loop (up to the 5 ms switch interval), which would make
        # a 10-microsecond model look slow and keep it off the inline path for good. Measured on one
        # call in SAMPLE_EVERY once an estimate exists: the clock is a system call, ~1 us each way.
        self._calls += 1
        if self._row_s is not None and self._calls % SAMPLE_EVERY:
            return self.run(arrays)
        started = time.thread_time()
        result = self.run(arrays)
        per_row = (time.thread_time() - started) / max(1, _rows(arrays))
        # moving average of the cost per example: a batch's cost is predicted as rows x this
        self._row_s = per_row if self._row_s is None else 0.8 * self._row_s + 0.2 * per_row
        return result

    async def _drain(self) -> None:
        self._busy = True
        try:
            if self.max_wait_s > 0 and self._queued_rows < self.max_batch:
                await asyncio.sleep(self.max_wait_s)  # let others join an idle model's first batch
            while self._pending:
                batch = self._take()
                if batch:
                    await self._run_batch(batch)
        finally:
            self._busy = False

    def _take(self, limit: int = 0) -> list[_Item]:
        """Up to ``limit`` (default max_batch) examples from the front of the queue that can merge with
        the first (which is taken whatever its size)."""
        limit = limit or self.max_batch
        taken: list[_Item] = []
        kept: deque[_Item] = deque()
        rows = 0
        key = None
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():  # timed out while queued
                self._queued_rows -= item.rows
                continue
            fits = key is None or (not self._alone and item.key == key and rows + item.rows <= limit)
            if fits:
                key = item.key
                taken.append(item)
                rows += item.rows
                self._queued_rows -= item.rows
            else:
                kept.append(item)
        self._pending = kept
        return taken

    async def _run_batch(self, batch: list[_Item]) -> None:
        outputs: Tensors | None = None
        failure: Exception | None = None
        try:
            outputs = await anyio.to_thread.run_sync(self._timed, _merged(batch))
        except Exception as exc:  # noqa: BLE001 - isolate: one bad request must not fail its neighbours
            failure = exc
        if not self._settled(batch, outputs, failure):
            for item in batch:
                await self._run_batch([item])

    def _settled(self, batch: list[_Item], outputs: Tensors | None, failure: Exception | None) -> bool:
        """Answer ``batch`` from its call (``outputs``, or the ``failure`` it raised), the same on the
        loop and in the worker thread. False when each request must run again alone: the merged call
        failed (one bad request must not fail its neighbours), or its outputs do not split back."""
        if failure is not None:
            if len(batch) > 1:
                return False
            _settle(batch[0].future, exc=failure)
            return True
        assert outputs is not None  # the call returned
        if len(batch) > 1 and not self._follows(batch, outputs):
            return False
        self._answer(batch, outputs)
        return True

    def _follows(self, batch: list[_Item], outputs: Tensors) -> bool:
        """Whether a merged call's outputs split back by rows: every output's first dimension is the
        call's examples. A model whose outputs do not follow its batch (one row whatever the batch, a
        sum over it) would answer each caller with a slice computed from the others' inputs, or an
        empty one; from the first such call on, every request is a call of its own."""
        rows = sum(item.rows for item in batch)
        if all(np.ndim(out) > 0 and len(out) == rows for out in outputs.values()):
            return True
        self._alone = True
        return False

    def _answer(self, batch: list[_Item], outputs: Tensors) -> None:
        """Count the call and hand each request its rows of ``outputs``."""
        if self.on_batch is not None:
            self.on_batch(sum(it.rows for it in batch))
        if len(batch) == 1:
            _settle(batch[0].future, result=outputs)
            return
        start = 0
        for item in batch:
            end = start + item.rows
            _settle(item.future, result={name: out[start:end] for name, out in outputs.items()})
            start = end


def _merged(batch: list[_Item]) -> Tensors:
    if len(batch) == 1:
        return batch[0].arrays
    return {name: np.concatenate([it.arrays[name] for it in batch]) for name in batch[0].arrays}


def _settle(future: asyncio.Future[Tensors], *, result: Tensors | None = None, exc: Exception | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    elif result is not None:
        future.set_result(result)
