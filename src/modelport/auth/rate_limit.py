"""Inference rate limits: one token bucket per API key (per rate bucket), held for the whole server.

A bucket holds up to ``burst`` tokens and refills at ``rps`` per second; a request takes one token, or is
refused with TooManyRequests (429) and a Retry-After of the whole seconds until a token is back. Only
the inference fast path (``api/fastpath.py``) takes tokens, on the event loop, and only when a limit is
configured.

Where the buckets live:

- one API process (``modelport serve``): a dict in the process (``RateLimiter``): one lookup and a few
  float operations, no lock (only the event loop touches it).
- ``serve --workers N``: a table the N processes share (``SharedRateLimiter``), so a key's rate holds
  across all of them however the kernel spreads its connections. The parent creates a fixed-size file
  under ``<home>/run/`` (``create_table``) and names it in the children's Settings
  (``rate_limit_table``); each child maps it into memory. No network service, nothing to run.

The shared table: a 64-byte header (magic, version, group count), then groups of 8 slots of 32 bytes,
each ``(id hash: u64, tokens: f64, last refill: f64, unused)``. A bucket id hashes (blake2b, 64 bits, the
same in every process; 0 marks a free slot) to one group, and ``fcntl.lockf`` on the group's bytes
serializes the read-modify-write of its slots across processes (the kernel releases a lock whose
process dies, so no crash can wedge a bucket). In its group a bucket takes the slot with its hash, else
a free one, else the one idle longest: a bucket idle for ``burst / rps`` seconds is full again, so
evicting it forgets nothing; only a table full of busy keys forgets one, which then starts full.
CLOCK_MONOTONIC is one clock for every process of the machine.

Two things keep the lock off most takes. A refusal is remembered in the process until the bucket's
next token is due (tokens only come back with time, and other processes only take them), so a key
hammering past its limit costs no lock. And a process takes up to ``CREDIT_S`` (5 ms) of a fast
bucket's tokens per lock and spends them locally: a key with a rate past 400/s that stays under it
locks about once per 5 ms of its traffic. Tokens taken ahead are already gone from the table, so the
processes together admit at most ``burst + rps * t`` plus what they hold ahead (under 5 ms of the
rate each); unspent ones lapse.

Cost per ``take`` (``bench/rate_limit.py``, docs/benchmarks.md): the dict ~0.4 µs; the shared table
~7 µs when it locks (two ``fcntl`` system calls), ~0.4 µs spending tokens taken ahead; a refusal costs
building the 429 (~4 µs) either way.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING

from modelport.errors import TooManyRequests

if TYPE_CHECKING:
    from modelport.config import Settings

MAX_BUCKETS = 100_000
"""Past this many buckets a process's table (or its caches of the shared one) starts over rather than grow."""
MAGIC = b"MPRL"
VERSION = 1
HEADER = struct.Struct("<4sII")
HEADER_SIZE = 64
SLOTS_PER_GROUP = 8
SLOT = struct.Struct("<Qdd8x")
GROUP = struct.Struct("<" + "Qdd8x" * SLOTS_PER_GROUP)
DEFAULT_GROUPS = 8192
"""65,536 buckets in 2 MiB."""
CREDIT_S = 0.005
"""A process takes up to this many seconds' worth of a fast bucket's tokens at once (only past 400 per
second: 2 tokens or more), spending them without the lock until they lapse after as long."""


class RateLimiter:
    """The buckets of one process, in a dict."""

    def __init__(self, *, default_rps: float, burst: int = 0) -> None:
        self.default_rps = default_rps
        """Requests per second of a key without its own limit; 0: such keys are not limited."""
        self.burst = float(burst)
        """Most tokens a bucket holds; 0: one second's worth, at least 1."""
        self._buckets: dict[str, list[float]] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> RateLimiter:
        """The shared table named by ``settings.rate_limit_table`` (``serve --workers``), else a dict."""
        if settings.rate_limit_table is not None:
            return SharedRateLimiter(
                settings.rate_limit_table, default_rps=settings.rate_limit_rps, burst=settings.rate_limit_burst
            )
        return cls(default_rps=settings.rate_limit_rps, burst=settings.rate_limit_burst)

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
            raise refused(rps, burst, (1.0 - tokens) / rps)
        state[0] = tokens - 1.0


def refused(rps: float, burst: float, wait_s: float) -> TooManyRequests:
    """The 429 for a key whose next token is ``wait_s`` seconds away."""
    return TooManyRequests(
        message=f"rate limit exceeded: this API key may make {rps:g} inference requests per second "
        f"(bursts of {burst:g}); retry later",
        retry_after=math.ceil(wait_s),
    )


def create_table(path: Path, *, groups: int = DEFAULT_GROUPS) -> Path:
    """A fresh shared table at ``path``, every bucket free (replacing one an earlier server left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".new")
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, HEADER.pack(MAGIC, VERSION, groups).ljust(HEADER_SIZE, b"\0"))
        os.ftruncate(fd, HEADER_SIZE + groups * GROUP.size)  # sparse: zeros are free slots
    finally:
        os.close(fd)
    os.replace(staging, path)
    return path


def bucket_hash(bucket: str) -> int:
    """The 64-bit id of ``bucket`` in the shared table: the same in every process, never 0."""
    return int.from_bytes(hashlib.blake2b(bucket.encode(), digest_size=8).digest(), "little") or 1


class SharedRateLimiter(RateLimiter):
    """The buckets of every process of one server, in the table at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, *, default_rps: float, burst: int = 0) -> None:
        super().__init__(default_rps=default_rps, burst=burst)
        self._fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(self._fd).st_size
            self._map = mmap.mmap(self._fd, size)
            magic, version, groups = HEADER.unpack_from(self._map, 0)
        except (OSError, ValueError, struct.error):
            os.close(self._fd)
            raise
        if magic != MAGIC or version != VERSION or size != HEADER_SIZE + groups * GROUP.size or groups < 1:
            self.close()
            raise ValueError(f"{path} is not a rate limit table of this version")
        self._groups = groups
        self._where: dict[str, tuple[int, int, int]] = {}
        """Bucket id -> (its group's offset, its hash, the offset of the slot it had last)."""
        self._due: dict[str, float] = {}
        """Refused bucket id -> when its next token is due (monotonic seconds)."""
        self._credit: dict[str, list[float]] = {}
        """Bucket id -> [tokens this process took ahead, monotonic time they lapse]."""

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def take(self, bucket: str, rps: float) -> None:
        now = monotonic()
        credit = self._credit.get(bucket)
        if credit is not None and credit[0] >= 1.0 and now < credit[1]:
            credit[0] -= 1.0
            return
        burst = self.burst or (rps if rps > 1.0 else 1.0)
        due = self._due.get(bucket)
        if due is not None and now < due:
            raise refused(rps, burst, due - now)
        where = self._where.get(bucket)
        if where is None:
            if len(self._where) >= MAX_BUCKETS:
                self._where.clear()
                self._due.clear()
                self._credit.clear()
            key = bucket_hash(bucket)
            group = HEADER_SIZE + ((key >> 16) % self._groups) * GROUP.size
            where = (group, key, group)
        group, key, hint = where
        want = rps * CREDIT_S
        fcntl.lockf(self._fd, fcntl.LOCK_EX, GROUP.size, group)
        try:
            now = monotonic()  # read under the lock: the slot's last refill is never later than now
            slot, tokens = self._refill(group, key, hint, now, rps, burst)
            grant = float(min(int(want), int(tokens))) if want >= 2.0 and tokens >= 2.0 else 1.0
            admitted = tokens >= 1.0
            SLOT.pack_into(self._map, slot, key, tokens - grant if admitted else tokens, now)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, GROUP.size, group)
        if slot != hint:
            self._where[bucket] = (group, key, slot)
        if not admitted:
            wait = (1.0 - tokens) / rps
            self._due[bucket] = now + wait
            raise refused(rps, burst, wait)
        if grant > 1.0:
            self._credit[bucket] = [grant - 1.0, now + CREDIT_S]

    def _refill(self, group: int, key: int, hint: int, now: float, rps: float, burst: float) -> tuple[int, float]:
        """(offset of the bucket's slot, tokens it holds now); a new bucket starts full. Under the lock."""
        found, tokens, last = SLOT.unpack_from(self._map, hint)
        if found != key:
            hint = self._slot_in(group, key)
            found, tokens, last = SLOT.unpack_from(self._map, hint)
            if found != key:
                return hint, burst
        tokens += (now - last) * rps
        return hint, burst if tokens > burst else tokens

    def _slot_in(self, group: int, key: int) -> int:
        """The slot of ``key`` in its group, else a free one, else the one idle longest."""
        values = GROUP.unpack_from(self._map, group)
        free = stalest = -1
        oldest = math.inf
        for i in range(SLOTS_PER_GROUP):
            found, last = values[3 * i], values[3 * i + 2]
            if found == key:
                return group + i * SLOT.size
            if found == 0:
                if free < 0:
                    free = i
            elif last < oldest:
                stalest, oldest = i, last
        return group + (free if free >= 0 else stalest) * SLOT.size
