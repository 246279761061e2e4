"""The server's idle poll (``cli/server.py::IdlePoll``): the event loop keeps turning for a bounded
window after an answer at low load, then sleeps; under load (company in flight, answers in a burst) it
never starts; a window of 0 never turns it."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelport.cli.server import IdlePoll
from modelport.config import Settings


async def test_the_loop_turns_for_the_window_after_an_answer_then_stops() -> None:
    loop = asyncio.get_running_loop()
    poll = IdlePoll(0.01)
    started = time.perf_counter()
    poll.answered(loop)
    turns = 0
    while poll.running:
        await asyncio.sleep(0)  # each turn of ours is a turn of the loop, with the poll's callback in it
        turns += 1
        assert time.perf_counter() - started < 1.0, "the poll did not stop"
    assert time.perf_counter() - started >= 0.01
    assert turns > 10


async def test_a_new_answer_extends_the_window_without_a_second_chain() -> None:
    loop = asyncio.get_running_loop()
    poll = IdlePoll(0.02)
    poll.answered(loop)
    first = poll.until
    await asyncio.sleep(0.008)  # past the quiet gap (a quarter of the window)
    poll.answered(loop)
    assert poll.running and poll.until > first
    await asyncio.sleep(0.05)
    assert not poll.running


async def test_an_answer_with_requests_still_in_flight_does_not_poll() -> None:
    poll = IdlePoll(0.02)
    poll.busy = 3
    poll.answered(asyncio.get_running_loop())
    assert not poll.running


async def test_answers_in_a_burst_do_not_extend_the_window() -> None:
    """The last answer of a burst has nothing in flight, but follows the previous by microseconds."""
    loop = asyncio.get_running_loop()
    poll = IdlePoll(0.02)
    poll.answered(loop)  # a first answer after a quiet gap: polls
    assert poll.running
    first = poll.until
    poll.answered(loop)  # at once after it
    assert poll.until == first
    await asyncio.sleep(0.05)
    assert not poll.running
    poll.last = time.perf_counter()  # a burst just ended
    poll.answered(loop)
    assert not poll.running


async def test_a_zero_window_never_polls() -> None:
    poll = IdlePoll(0.0)
    poll.answered(asyncio.get_running_loop())
    assert not poll.running


def test_the_setting_is_bounded() -> None:
    assert Settings(idle_poll_us=0).idle_poll_us == 0
    with pytest.raises(ValueError, match="idle_poll_us"):
        Settings(idle_poll_us=-1)
    with pytest.raises(ValueError, match="idle_poll_us"):
        Settings(idle_poll_us=1e6)
