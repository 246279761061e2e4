"""Inference rate limits: one token bucket per API key (per rate bucket), kept in each API process.

A bucket holds up to ``burst`` tokens and refills at ``rps`` per second; a request takes one token, or is
refused with TooManyRequests (429) and a Retry-After of the whole seconds until a token is back. State is
per process: with ``modelport serve --workers N`` a key may reach N times its rate in total.

No lock: buckets are read and written only on the process's event loop (the inference fast path), and a
check is one dict lookup and a few float operations.
"""

from __future__ import annotations

import math
from time import monotonic

from modelport.errors import TooManyRequests

MAX_BUCKETS = 100_000
"""Past this many buckets the table starts over (every bucket full again) rather than grow."""


class RateLimiter:
    def __init__(self, *, default_rps: float, burst: int = 0) -> None:
        self.default_rps = default_rps
        """Requests per second of a key without its own limit; 0: such keys are not limited."""
        self.burst = float(burst)
        """Most tokens a bucket holds; 0: one second's worth, at least 1."""
        self._buckets: dict[str, list[float]] = {}

    def take(self, bucket: str, rps: float) -> None:
        """Take one token from ``bucket`` (refilling at ``rps``), or raise TooManyRequests."""
        now = monotonic()
        state = self._buckets.get(bucket)
        burst = self.burst or (rps if rps > 1.0 else 1.0)
        if state is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.clear()
            self._buckets[bucket] = [burst - 1.0, now]
            return
        tokens = state[0] + (now - state[1]) * rps
        if tokens > burst:
            tokens = burst
        state[1] = now
        if tokens < 1.0:
            state[0] = tokens
            raise TooManyRequests(
                message=f"rate limit exceeded: this API key may make {rps:g} inference requests per second "
                f"(bursts of {burst:g}); retry later",
                retry_after=math.ceil((1.0 - tokens) / rps),
            )
        state[0] = tokens - 1.0
