"""Single-flight: concurrent callers that miss the same cache entry share ONE database lookup.

When a one-second cache entry expires under load, every request in flight misses it at once; without
this, each would hand its own lookup to a worker thread (64 connections: 64 thread hops and 64 queries
per second per key). Here the first caller starts the lookup and the others await the same future.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import anyio.to_thread

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Future[T]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def start(self, key: Hashable, fn: Callable[[], T]) -> None:
        """``fn()`` in a worker thread in the background, unless a lookup for ``key`` is in flight: a
        refresh ahead of an entry's expiry, which no request waits for. A failure is dropped: the old
        entry then expires, and the next caller looks it up itself and gets the error."""
        if key in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self._quietly(key, fn))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, key: Hashable, fn: Callable[[], T]) -> None:
        with contextlib.suppress(Exception):  # see start(): the caller that needs the answer gets the error
            await self.run(key, fn)

    async def run(self, key: Hashable, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread, shared by every caller that asks for ``key`` meanwhile."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await anyio.to_thread.run_sync(fn)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]
