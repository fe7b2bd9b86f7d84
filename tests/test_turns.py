"""Bookkeeping turns: a burst of async calls is spread over event-loop passes (llmctx._turns)."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import llmctx
from llmctx import Usage, track_call
from llmctx._turns import PER_TICK, _by_loop, take_turn
from llmctx.stores import MemoryStore


def _on_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    # Each test on a fresh asyncio loop of its own.
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class _Passes:
    """Counts event-loop passes: a callback that reschedules itself runs once per pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self.loop = loop
        self.running = True
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        if self.running:
            self.loop.call_soon(self._tick)


@_on_a_loop
async def test_a_burst_takes_at_most_per_tick_turns_per_pass_in_arrival_order() -> None:
    """100 tasks asking at once get through PER_TICK per loop pass, first come first served."""
    passes = _Passes(asyncio.get_running_loop())
    through: list[tuple[int, int]] = []

    async def one(i: int) -> None:
        await take_turn()
        through.append((i, passes.count))

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 5)
    passes.running = False
    assert sorted(i for i, _ in through) == list(range(100))
    per_pass = Counter(p for _, p in through)
    assert max(per_pass.values()) <= PER_TICK
    assert len(per_pass) >= 100 // PER_TICK
    assert [i for i, _ in through] == list(range(100))  # FIFO across the passes


@_on_a_loop
async def test_a_lone_turn_does_not_yield() -> None:
    """With turns left in the pass, take_turn returns without letting another task run."""
    ran = []

    async def other() -> None:
        ran.append(True)

    task = asyncio.ensure_future(other())
    for _ in range(PER_TICK // 2):
        await take_turn()
    assert ran == []
    await task


@_on_a_loop
async def test_a_cancelled_waiter_gives_its_place_on() -> None:
    """Cancelling a task that waits for a turn raises in it; every other waiter still gets in."""
    for _ in range(PER_TICK):
        await take_turn()  # this pass's turns are used up: the next ones wait
    done: list[int] = []

    async def one(i: int) -> None:
        await take_turn()
        done.append(i)

    n = PER_TICK * 3
    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await asyncio.sleep(0)  # the first PER_TICK are through, the others wait
    waiting = n - 2
    assert not tasks[waiting].done()
    tasks[waiting].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert isinstance(results[waiting], asyncio.CancelledError)
    assert sorted(done) == [i for i in range(n) if i != waiting]


@_on_a_loop
async def test_a_burst_of_charged_calls_lets_the_loop_run_between_them() -> None:
    """64 async calls ending together are all charged, and other tasks run while they end."""
    n = 64
    passes = _Passes(asyncio.get_running_loop())
    ended_in: list[int] = []
    release = asyncio.Event()

    async def call() -> None:
        async with track_call(provider="openai", model="gpt-4o-mini", input_tokens=5) as c:
            await release.wait()  # every request answers in the same pass
            await c.afinish(usage=Usage(input_tokens=5, output_tokens=2, requests=1))
        ended_in.append(passes.count)

    async with llmctx.session("burst", store=MemoryStore()) as s:
        tasks = [asyncio.ensure_future(call()) for _ in range(n)]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    passes.running = False
    assert s.usage.input_tokens == 5 * n and len(s.calls) == n
    # The ends were spread over passes (the pass counter ran between them), not all in one.
    assert len(set(ended_in)) >= n // PER_TICK
    assert max(Counter(ended_in).values()) <= PER_TICK


@_on_a_loop
async def test_a_call_cancelled_while_it_waits_to_end_is_still_recorded() -> None:
    """afinish cancelled while it waits for its turn still settles and records the call."""
    async with llmctx.session("cancel-turn", store=MemoryStore()) as s:
        tracker = track_call(provider="openai", model="gpt-4o-mini", input_tokens=5)
        await tracker.astart()
        # Tasks that run first in the next pass take its turns: afinish has to wait in it.
        fillers = [asyncio.ensure_future(take_turn()) for _ in range(PER_TICK)]
        task = asyncio.ensure_future(
            tracker.afinish(usage=Usage(input_tokens=5, output_tokens=1, requests=1))
        )
        await asyncio.sleep(0)
        assert not task.done() and _by_loop[asyncio.get_running_loop()].waiters  # it waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.gather(*fillers)
        assert tracker.record is not None and tracker.record.status == "ok"
        assert [c.id for c in s.calls] == [tracker.record.id]
        assert s.usage.output_tokens == 1
