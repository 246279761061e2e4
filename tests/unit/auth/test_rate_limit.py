"""The rate limiter: the per-process dict, and the table ``serve --workers`` shares, hammered from two
real processes at once."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from modelport.auth.rate_limit import (
    CREDIT_S,
    GROUP,
    HEADER_SIZE,
    RateLimiter,
    SharedRateLimiter,
    create_table,
)
from modelport.config import Settings
from modelport.errors import TooManyRequests

WINDOW_S = 1.0


def _hammer(path: str, rps: float, burst: int, ready: Barrier, out: multiprocessing.Queue[int]) -> None:
    """Take from one bucket as fast as possible for WINDOW_S once both processes are ready."""
    limiter = SharedRateLimiter(Path(path), default_rps=0.0, burst=burst)
    ready.wait(timeout=60)
    admitted = 0
    end = time.monotonic() + WINDOW_S
    while time.monotonic() < end:
        try:
            limiter.take("hot-key", rps)
        except TooManyRequests:
            continue
        admitted += 1
    out.put(admitted)


def _two_processes(path: Path, rps: float, burst: int) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = ctx.Queue()
    ready = ctx.Barrier(2)
    procs = [ctx.Process(target=_hammer, args=(str(path), rps, burst, ready, out)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        counts = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    return counts


@pytest.mark.parametrize(
    ("rps", "burst"),
    [(200.0, 10), (2_000.0, 50)],  # every take under the lock; tokens taken 5 ms ahead (10 at a time)
)
def test_two_processes_on_one_bucket_share_its_rate(tmp_path: Path, rps: float, burst: int) -> None:
    counts = _two_processes(create_table(tmp_path / "rate-limits"), rps, burst)
    allowed = burst + rps * WINDOW_S
    ahead = 2 * max(0.0, rps * CREDIT_S - 1)  # the most both can hold taken ahead and not yet spent
    assert sum(counts) <= allowed + ahead + 2, counts  # two dicts would have let in twice as many
    assert sum(counts) > burst, counts  # and the bucket refilled (how much depends on the CPU they got)


def test_a_refusal_is_the_same_as_the_dicts_and_needs_no_lock(tmp_path: Path) -> None:
    shared = SharedRateLimiter(create_table(tmp_path / "t"), default_rps=0.0, burst=3)
    local = RateLimiter(default_rps=0.0, burst=3)
    for limiter in (shared, local):
        for _ in range(3):
            limiter.take("k", 0.01)
        with pytest.raises(TooManyRequests) as caught:
            limiter.take("k", 0.01)
        assert caught.value.retry_after == 100
        assert "0.01 inference requests per second (bursts of 3)" in caught.value.message
    assert "k" in shared._due  # the next refusals are answered from the process's own memory
    shared.close()


def test_buckets_are_shared_between_limiters_and_kept_apart_by_id(tmp_path: Path) -> None:
    path = create_table(tmp_path / "t")
    one, two = (SharedRateLimiter(path, default_rps=0.0, burst=2) for _ in range(2))
    one.take("a", 0.01)
    two.take("a", 0.01)
    with pytest.raises(TooManyRequests):
        one.take("a", 0.01)
    two.take("b", 0.01)  # another key: its own bucket
    one.close()
    two.close()


def test_a_full_group_gives_the_slot_idle_longest_to_a_new_bucket(tmp_path: Path) -> None:
    path = create_table(tmp_path / "t", groups=1)  # one group: 8 slots for every bucket
    limiter = SharedRateLimiter(path, default_rps=0.0, burst=1)
    for i in range(8):
        limiter.take(f"k{i}", 0.01)
    limiter.take("k8", 0.01)  # evicts k0, the one idle longest
    fresh = SharedRateLimiter(path, default_rps=0.0, burst=1)  # no memory of its own
    fresh.take("k0", 0.01)  # k0 forgot its taken token: it starts full
    for i in range(2, 9):
        with pytest.raises(TooManyRequests):
            fresh.take(f"k{i}", 0.01)
    limiter.close()
    fresh.close()


def test_a_file_that_is_no_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\0" * (HEADER_SIZE + GROUP.size))
    with pytest.raises(ValueError, match="not a rate limit table"):
        SharedRateLimiter(path, default_rps=0.0)
    table = create_table(tmp_path / "t", groups=2)
    with table.open("r+b") as f:
        f.truncate(HEADER_SIZE + GROUP.size)  # one group short
    with pytest.raises(ValueError, match="not a rate limit table"):
        SharedRateLimiter(table, default_rps=0.0)


def test_settings_choose_the_table_or_the_dict(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, rate_limit_rps=5)
    assert type(RateLimiter.for_settings(settings)) is RateLimiter
    table = create_table(tmp_path / "run" / "rate-limits-1")
    shared = RateLimiter.for_settings(settings.model_copy(update={"rate_limit_table": table}))
    assert isinstance(shared, SharedRateLimiter) and shared.default_rps == 5
    shared.close()
