"""Bookkeeping turns: at most a few charge-path steps per event-loop iteration.

A burst of async calls that end together (300 requests answered in the same millisecond)
would otherwise do all their bookkeeping (build and price the record, send the settle, queue
the write) in one pass of the event loop, and every other task, a ticker, a health check, a
web request, would wait for all of it: 300 x 30 us is a 9 ms stall. :func:`take_turn` lets
:data:`PER_TICK` steps through per loop iteration and queues the rest, first come first
served, for the next iterations, so a burst is spread over several passes with the loop's
other work in between. The same total work, never a long pass.

How an iteration is told apart: a callback given to ``loop.call_soon`` during one pass of an
asyncio loop runs in the next pass (``BaseEventLoop._run_once`` runs only the callbacks that
were ready when the pass began), so the first turn of a pass schedules a reset that marks the
next one. On a loop that is not asyncio's (trio through anyio), a turn is free.
"""

from __future__ import annotations

import asyncio
from collections import deque
from weakref import WeakKeyDictionary

__all__ = ["PER_TICK", "take_turn"]

#: How many bookkeeping steps one event-loop iteration runs before the rest wait for the next.
#: A step costs 10-40 us and each one sets off a few more (its reply, its write), so a pass
#: spends well under a millisecond on bookkeeping. In bench_loop_lag (300 calls charged into
#: PostgreSQL and Redis, one quiet run each): 4 gave a p99 lag of 2.9-4.8 ms and 230-250 ms
#: for the burst, 8 and 16 about 7.8 ms and 195 ms: a burst takes a quarter longer so that the
#: loop's other work never waits for more than a few of its steps.
PER_TICK = 4


class _Turns:
    """One loop's turns: how many this pass has used, and who waits for the next pass."""

    __slots__ = ("loop", "scheduled", "used", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.used = 0
        self.scheduled = False
        self.waiters: deque[asyncio.Future[None]] = deque()

    def next_pass(self) -> None:
        # Runs at the start of the pass after the one that scheduled it: a fresh quota, handed
        # first to those who waited (they run in the pass after this one), and one more reset
        # while anyone used or waits for a turn.
        self.used = 0
        waiters = self.waiters
        while waiters and self.used < PER_TICK:
            waiter = waiters.popleft()
            if not waiter.done():  # a waiter cancelled meanwhile gives its place on
                waiter.set_result(None)
                self.used += 1
        if waiters or self.used:
            self.loop.call_soon(self.next_pass)
        else:
            self.scheduled = False


_by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = WeakKeyDictionary()


async def take_turn() -> None:
    """Wait, if this loop iteration already ran :data:`PER_TICK` steps, for a later one.

    Returns at once (without yielding) while the iteration has turns left, so a lone call pays
    a counter. Cancellation while it waits raises as usual and gives the turn to the next
    waiter.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): no turns to take
        return
    turns = _by_loop.get(loop)
    if turns is None:
        try:
            turns = _by_loop[loop] = _Turns(loop)
        except TypeError:  # a loop class without weak references: no turns on it
            return
    if not turns.scheduled:
        turns.scheduled = True
        loop.call_soon(turns.next_pass)
    if turns.used < PER_TICK and not turns.waiters:
        turns.used += 1
        return
    waiter: asyncio.Future[None] = loop.create_future()
    turns.waiters.append(waiter)
    await waiter
