"""The dynamic batcher: idle requests run at once; concurrent ones merge; limits answer 429/503."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from modelport.errors import TooManyRequests, Unavailable
from modelport.formats.base import Tensors
from modelport.serving.batcher import GATHER_TURNS, Arrivals, Batcher


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


async def _warm(b: Batcher) -> None:
    """One call, so the batcher has measured the model (an unmeasured model runs in a thread)."""
    await b(batch(0.0))


async def _arriving(arrivals: Arrivals, b: Batcher, request: Tensors) -> Tensors:
    """A request as the protocol lane starts it: counted while on its way, uncounted when it starts."""
    arrivals.coming -= 1
    return await b(request)


async def _together(arrivals: Arrivals, b: Batcher, requests: list[Tensors]) -> list[Tensors | BaseException]:
    arrivals.coming += len(requests)
    return await asyncio.gather(*[_arriving(arrivals, b, r) for r in requests], return_exceptions=True)


async def test_a_cheap_model_gathers_the_requests_that_arrive_together() -> None:
    model, arrivals = Recorder(), Arrivals()
    b = Batcher(model, max_batch=64, inline_below_s=1.0, arrivals=arrivals)
    await _warm(b)
    results = await _together(arrivals, b, [batch(float(i), rows=1 + i % 3) for i in range(8)])
    assert model.calls[1:] == [sum(1 + i % 3 for i in range(8))]  # one call for all eight
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException)
        np.testing.assert_array_equal(result["y"], np.full((1 + i % 3, 3), 2.0 * i))
    assert arrivals.coming == 0 and not b.busy
    assert (await b(batch(5.0)))["y"][0, 0] == 10.0 and model.calls[-1] == 1  # alone: at once, by itself


async def test_a_lone_gathered_request_waits_for_the_ones_on_their_way() -> None:
    """Many models on one loop: a turn's arrivals spread thin, so a model's gathered call often holds
    one request. While more are on their way it waits (up to GATHER_TURNS turns) and answers them in
    the same call."""
    model, arrivals = Recorder(), Arrivals()
    b = Batcher(model, max_batch=64, inline_below_s=1.0, arrivals=arrivals)
    await _warm(b)
    arrivals.coming += 2  # two requests read from the sockets; the second starts two turns later
    first = asyncio.ensure_future(_arriving(arrivals, b, batch(1.0)))
    await asyncio.sleep(0)  # the first starts and gathers
    await asyncio.sleep(0)  # its call is due: alone, with one on its way, it waits
    second = asyncio.ensure_future(_arriving(arrivals, b, batch(2.0)))
    results = await asyncio.gather(first, second)
    assert model.calls[1:] == [2]  # one call answered both
    assert [float(r["y"][0, 0]) for r in results] == [2.0, 4.0]
    assert arrivals.coming == 0 and not b.busy


async def test_a_gathered_request_waits_at_most_gather_turns() -> None:
    """A count of requests on their way that never arrive (or go to other models) delays a lone
    request by GATHER_TURNS turns of the loop, no more."""
    model, arrivals = Recorder(), Arrivals()
    b = Batcher(model, max_batch=64, inline_below_s=1.0, arrivals=arrivals)
    await _warm(b)
    arrivals.coming = 1000  # requests for other models, started by other tasks
    answer = asyncio.ensure_future(b(batch(3.0)))
    turns = 0
    while not answer.done() and turns < 50:
        await asyncio.sleep(0)
        turns += 1
    assert answer.done(), "the lone request kept waiting"
    assert answer.result()["y"][0, 0] == 6.0 and model.calls[1:] == [1]
    assert turns <= GATHER_TURNS + 3  # the start (which gathers), the waits, the call, the answer back
    arrivals.coming = 0
    assert not b.busy


async def test_gathered_calls_keep_their_limits_and_isolate_a_failure() -> None:
    model, arrivals = Recorder(fail_on=13.0), Arrivals()
    b = Batcher(model, max_batch=4, inline_below_s=1.0, arrivals=arrivals)
    await _warm(b)
    requests = [batch(1.0), batch(13.0), batch(2.0), {"x": np.ones((1, 5), dtype=np.float32)}, batch(3.0, rows=3)]
    results = await _together(arrivals, b, requests)
    assert isinstance(results[1], ValueError)
    assert [float(r["y"][0, 0]) for r in results if not isinstance(r, BaseException)] == [2.0, 4.0, 2.0, 6.0]
    # the three single rows (the 3-row one would pass max_batch 4), then each alone after the failure;
    # the odd shape by itself; then the 3-row request
    assert model.calls[1:] == [3, 1, 1, 1, 1, 3] and not b.busy


async def test_a_large_request_is_not_gathered_and_runs_in_the_worker_thread() -> None:
    model, arrivals = Recorder(), Arrivals()
    b = Batcher(model, max_batch=1024, inline_below_s=1e-3, arrivals=arrivals)
    await _warm(b)
    b._row_s = 1e-5  # the measured cost per example, fixed here: 100 examples or more leave the loop
    loop_thread = threading.get_ident()
    ran_in: list[int] = []
    inner = model.__call__

    def recording(inputs: Tensors) -> Tensors:
        ran_in.append(threading.get_ident())
        return inner(inputs)

    b.run = recording
    results = await _together(arrivals, b, [batch(1.0), batch(2.0, rows=200), batch(3.0)])
    assert [r["y"].shape[0] for r in results if not isinstance(r, BaseException)] == [1, 200, 1]
    assert model.calls[1:] == [2, 200]  # the two small ones in one call on the loop
    assert ran_in.count(loop_thread) == len(ran_in) - 1  # only the large one ran off the loop
    assert not b.busy


class BatchSum:
    """A real model whose output does not follow its batch: one row, the sum over the batch (as a
    graph that reduces over axis 0 would give). Records the batch sizes it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay

    def __call__(self, inputs: Tensors) -> Tensors:
        self.calls.append(len(inputs["x"]))
        if self.delay:
            time.sleep(self.delay)
        return {"y": inputs["x"].sum(axis=0, keepdims=True)}


async def test_a_model_whose_outputs_do_not_follow_the_batch_is_never_merged_again() -> None:
    """Merged, such a model would answer each caller with a slice computed from the others' inputs
    (or an empty one). The merged call's outputs are checked; on a mismatch each request runs alone,
    and so does every request after it, on the loop and in the worker thread alike."""
    model, arrivals = BatchSum(), Arrivals()
    b = Batcher(model, max_batch=64, inline_below_s=1.0, arrivals=arrivals)
    await _warm(b)
    results = await _together(arrivals, b, [batch(float(i)) for i in range(1, 6)])
    assert [r["y"].tolist() for r in results] == [[[float(i)] * 3] for i in range(1, 6)]  # type: ignore[index]
    assert model.calls[1:] == [5, 1, 1, 1, 1, 1]  # the merged call, then each alone
    results = await _together(arrivals, b, [batch(7.0), batch(8.0, rows=2)])
    assert [r["y"].tolist() for r in results] == [[[7.0] * 3], [[16.0] * 3]]  # type: ignore[index]
    assert model.calls[7:] == [1, 2]  # not merged again

    slow = BatchSum(delay=0.02)
    b = Batcher(slow, max_batch=64)  # no inline budget: calls run in the worker thread
    results = await asyncio.gather(*[b(batch(float(i))) for i in range(1, 5)])
    assert [r["y"].tolist() for r in results] == [[[float(i)] * 3] for i in range(1, 5)]
    assert slow.calls == [1, 3, 1, 1, 1]  # the first at once; three merged while it ran, then each alone
    results = await asyncio.gather(*[b(batch(float(i))) for i in range(1, 4)])
    assert slow.calls[5:] == [1, 1, 1]
