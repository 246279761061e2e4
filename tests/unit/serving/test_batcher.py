"""The dynamic batcher: idle requests run at once; concurrent ones merge; limits answer 429/503."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from modelport.errors import TooManyRequests, Unavailable
from modelport.formats.base import Tensors
from modelport.serving.batcher import Batcher


class Recorder:
    """A real model call (y = 2x) that records the batch sizes it saw; optionally slow."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        with self.lock:
            self.calls.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise ValueError("bad value")
        return {"y": x * 2}


def batch(value: float, rows: int = 1) -> Tensors:
    return {"x": np.full((rows, 3), value, dtype=np.float32)}


async def test_idle_request_runs_at_once_without_waiting() -> None:
    model = Recorder()
    b = Batcher(model, max_batch=64, max_wait_s=0.0)
    started = time.perf_counter()
    out = await b(batch(1.0))
    assert time.perf_counter() - started < 0.05
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 2.0))
    assert model.calls == [1]


async def test_requests_arriving_while_busy_merge_and_split_back() -> None:
    model = Recorder(delay=0.05)
    b = Batcher(model, max_batch=64)
    results = await asyncio.gather(*[b(batch(float(i), rows=1 + i % 3)) for i in range(20)])
    for i, out in enumerate(results):
        assert out["y"].shape == (1 + i % 3, 3)
        assert (out["y"] == 2.0 * i).all()
    assert model.calls[0] == 1  # the first ran alone, at once
    assert len(model.calls) == 2 and sum(model.calls) == sum(1 + i % 3 for i in range(20))


async def test_max_batch_caps_each_call() -> None:
    model = Recorder(delay=0.02)
    b = Batcher(model, max_batch=4)
    await asyncio.gather(*[b(batch(1.0)) for _ in range(13)])
    assert max(model.calls) <= 4 and sum(model.calls) == 13


async def test_different_shapes_are_not_merged() -> None:
    model = Recorder(delay=0.02)
    b = Batcher(model, max_batch=64)
    wide = {"x": np.ones((1, 5), dtype=np.float32)}
    outs = await asyncio.gather(b(batch(1.0)), b(batch(1.0)), b(wide), b(batch(1.0)))
    assert outs[2]["y"].shape == (1, 5)
    assert sorted(model.calls) == [1, 1, 2]


async def test_queue_limit_answers_too_many_requests() -> None:
    b = Batcher(Recorder(delay=0.1), max_batch=64, queue_limit=3)
    tasks = [asyncio.create_task(b(batch(1.0))) for _ in range(5)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, TooManyRequests)]
    assert len(refused) == 1 and refused[0].retry_after >= 1


async def test_timeout_answers_unavailable_and_drops_the_request() -> None:
    model = Recorder(delay=0.2)
    b = Batcher(model, max_batch=64, timeout_s=0.05)
    first = asyncio.create_task(b(batch(1.0)))
    await asyncio.sleep(0.01)
    with pytest.raises(Unavailable):
        await b(batch(2.0))
    await first
    await asyncio.sleep(0.25)
    assert sum(model.calls) == 1  # the timed-out request never reached the model


async def test_a_failing_request_does_not_fail_its_neighbours() -> None:
    model = Recorder(delay=0.02, fail_on=13.0)
    b = Batcher(model, max_batch=64)
    results = await asyncio.gather(b(batch(0.0)), b(batch(1.0)), b(batch(13.0)), b(batch(2.0)), return_exceptions=True)
    assert isinstance(results[2], ValueError)
    assert [float(r["y"][0, 0]) for i, r in enumerate(results) if i != 2] == [0.0, 2.0, 4.0]  # type: ignore[index]


async def test_max_wait_lets_an_idle_batch_fill() -> None:
    model = Recorder()
    b = Batcher(model, max_batch=64, max_wait_s=0.03)
    await asyncio.gather(*[b(batch(1.0)) for _ in range(6)])
    assert model.calls == [6]
