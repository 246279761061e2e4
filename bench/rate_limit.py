"""Cost of one ``RateLimiter.take``: the per-process dict against the table ``serve --workers`` shares.

Times ``N`` takes of one bucket: admitted and refused (a rate of 0.001/s after its one token) for the
dict; for the shared table admitted at 100/s (a burst of 10^9 tokens, so every take locks the table),
admitted at 10^6/s (tokens taken 5 ms ahead, spent without the lock) and refused; then P processes
hammering one bucket at 100/s at once (the lock contended), and P processes each on its own bucket.

    .venv/bin/python bench/rate_limit.py [N] [P]
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from modelport.auth.rate_limit import RateLimiter, SharedRateLimiter, create_table
from modelport.errors import TooManyRequests

HUGE = 10**9


def per_take_us(limiter: RateLimiter, bucket: str, rps: float, n: int) -> float:
    take = limiter.take
    for _ in range(1000):
        try:  # noqa: SIM105 - contextlib.suppress costs about as much as what is measured
            take(bucket, rps)
        except TooManyRequests:
            pass
    started = time.perf_counter()
    for _ in range(n):
        try:  # noqa: SIM105
            take(bucket, rps)
        except TooManyRequests:
            pass
    return (time.perf_counter() - started) / n * 1e6


def _worker(path: str, bucket: str, n: int, start: float, out: multiprocessing.Queue[float]) -> None:
    limiter = SharedRateLimiter(Path(path), default_rps=0.0, burst=HUGE)
    while time.monotonic() < start:
        pass
    out.put(per_take_us(limiter, bucket, 100.0, n))


def contended(path: Path, processes: int, n: int, *, same_bucket: bool) -> float:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[float] = ctx.Queue()
    start = time.monotonic() + 3.0
    procs = [
        ctx.Process(target=_worker, args=(str(path), "hot" if same_bucket else f"key{i}", n, start, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    figures = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    return sum(figures) / len(figures)


def main(n: int, processes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = create_table(Path(tmp) / "rate-limits")
        local = RateLimiter(default_rps=0.0, burst=HUGE)
        shared = SharedRateLimiter(path, default_rps=0.0, burst=HUGE)
        rows = [
            ("dict, admitted", per_take_us(local, "a", 100.0, n)),
            ("dict, refused", per_take_us(RateLimiter(default_rps=0.0), "r", 0.001, n)),
            ("shared table, admitted at 100/s (locks every take)", per_take_us(shared, "a", 100.0, n)),
            ("shared table, admitted at 10^6/s (5 ms of tokens ahead)", per_take_us(shared, "f", 1e6, n)),
            ("shared table, refused", per_take_us(SharedRateLimiter(path, default_rps=0.0), "r", 0.001, n)),
            (
                f"shared table, admitted, {processes} processes on one bucket",
                contended(path, processes, n, same_bucket=True),
            ),
            (
                f"shared table, admitted, {processes} processes, a bucket each",
                contended(path, processes, n, same_bucket=False),
            ),
        ]
        shared.close()
    base = rows[0][1]
    print(f"| take() ({n:,} each) | us per call | x dict admitted |")
    print("| --- | ---: | ---: |")
    for name, us in rows:
        print(f"| {name} | {us:.2f} | {us / base:.1f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
