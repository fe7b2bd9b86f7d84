"""What RateLimiter and ResourcePool share: their errors, timeout checks and queued waiters.

A waiter is one caller queued on a limiter or a pool. Its owner (the limiter or the pool) hands
it what it waited for *under the owner's lock* (``grant``) and then wakes it, so a woken waiter
can always proceed: nobody is woken just to re-check and go back to sleep.

When the head of a queue must wait for *time* rather than for a release (a rate limit refills
at a known instant, a shared Redis pool is polled), the owner calls :meth:`_Waiter.schedule`:
an asyncio waiter gets a timer on its own event loop that runs the owner's dispatch there,
without waking the task; a thread waiter is told when to run the dispatch itself (a thread has
no event loop to run callbacks on).

A waiter has one wake-up for its whole wait: a future created once (asyncio) or a
``threading.Event`` (threads). Wakes from other threads go through ``call_soon_threadsafe``, so
one owner serves threads and several event loops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from typing import Any, Protocol

from ._exceptions import ConfigError, LLMCtxError

# The running loop of this thread or None, without raising: "are we on the waiter's loop?"
_get_running_loop = asyncio._get_running_loop

__all__ = ["AcquireTimeout", "WouldBlock"]


class WouldBlock(LLMCtxError):
    """``acquire_nowait`` could not proceed without waiting; nothing was taken.

    Attributes:
        retry_after: seconds until the request could be admitted if nothing else changes,
            or None when that is not known (another caller is queued first, or the pool
            waits for a release).
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AcquireTimeout(LLMCtxError, TimeoutError):
    """A rate limiter or pool could not admit the caller before its ``timeout``; nothing was taken.

    It is also a ``TimeoutError``, so ``except TimeoutError`` catches it.
    """


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigError(f"timeout={timeout!r} must be a number of seconds >= 0, or None")
    if math.isnan(timeout) or timeout < 0:
        raise ConfigError(
            f"timeout={timeout!r} is negative or NaN; pass seconds >= 0 (0 = do not wait), "
            "or None to wait as long as needed"
        )
    return float(timeout)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Owner(Protocol):
    """A limiter or pool, as its waiters see it."""

    def _on_due(self, waiter: _Waiter) -> None:
        """The head's planned instant came: look at the queue again (takes the lock)."""

    def _on_expire(self, waiter: _Waiter) -> None:
        """``waiter``'s deadline passed: unless granted, it leaves the queue (takes the lock)."""


class _Waiter:
    """One queued caller: what it asks for, what it was granted, and how to wake it.

    The owner sets ``_grant`` (or ``_error``) with its lock held and then calls :meth:`wake`.
    The owner's ``_on_due`` ("look at the head of the queue again") and ``_on_expire`` ("this
    waiter's deadline passed": it leaves the queue unless already granted, and sets
    ``_expired``) are called without the owner's lock and take it themselves. Deciding the
    timeout under the lock means a task is never resumed by its deadline with a grant that a
    task ahead of it got first.
    """

    __slots__ = (
        "_due",
        "_error",
        "_event",
        "_expired",
        "_fut",
        "_grant",
        "_loop",
        "_owner",
        "_start",
        "_timer",
        "amount",
    )

    def __init__(self, amount: int, loop: asyncio.AbstractEventLoop | None, owner: _Owner) -> None:
        self.amount = amount
        self._begin_wait(loop, owner)

    def _begin_wait(self, loop: asyncio.AbstractEventLoop | None, owner: _Owner) -> None:
        """Make this object ready to queue (a subclass that is also the grant calls this)."""
        self._loop = loop
        self._owner = owner
        self._grant: Any = None
        self._error: Exception | None = None
        self._expired = False
        # When the wait began (monotonic seconds), for wait-time statistics.
        self._start = time.monotonic()
        # monotonic seconds at which the owner wants the head re-examined (None: not planned)
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fut: asyncio.Future[None] | None = None
        self._event: threading.Event | None = None
        if loop is None:
            self._event = threading.Event()
        else:
            self._fut = loop.create_future()

    # -------------------------------------------------------------- owner side (lock held)
    def wake(self) -> bool:
        """Wake the waiter after a grant; False if its event loop is closed (it never runs)."""
        if self._loop is None:
            assert self._event is not None
            self._event.set()
            return True
        fut = self._fut
        assert fut is not None
        if _get_running_loop() is self._loop:
            if not fut.done():  # a cancelled task cancelled its future
                fut.set_result(None)
            return True
        try:
            self._loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def schedule(self, delay: float) -> None:
        """Have the owner's dispatch run for this (head) waiter ``delay`` seconds from now."""
        self._due = time.monotonic() + delay
        if self._loop is None:
            # The thread may be asleep with no deadline: make it pick up the new one (if it
            # is the thread calling, it clears the event before it next sleeps).
            assert self._event is not None
            self._event.set()
            return
        if _get_running_loop() is self._loop:
            self._arm()
        else:
            # A closed loop raises RuntimeError: its task never runs again anyway.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._arm)

    # -------------------------------------------------------------- waiter side
    def _arm(self) -> None:
        """In the waiter's event loop: (re)start the timer that runs the owner's ``_on_due``."""
        due = self._due
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is None or self._fut is None or self._fut.done():
            return
        self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._due = None
        self._owner._on_due(self)

    def cancel_timer(self) -> None:
        """In the waiter's event loop: drop a pending re-examination (the wait is over)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_async(self, deadline: float | None) -> None:
        """Return once granted, failed, or expired at ``deadline`` (monotonic seconds)."""
        fut = self._fut
        loop = self._loop
        assert fut is not None
        assert loop is not None
        if deadline is None:
            await fut
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        handle = loop.call_later(remaining, self._expire)
        try:
            await fut
        finally:
            handle.cancel()

    def _expire(self) -> None:
        self._owner._on_expire(self)
        if self._fut is not None:
            _resolve(self._fut)

    def wait_sync(self, lock: threading.Lock, deadline: float | None) -> bool:
        """Block the thread until granted (True) or ``deadline`` passes (False).

        Runs the owner's ``_on_due`` itself when the owner scheduled a re-examination.
        """
        event = self._event
        assert event is not None
        while True:
            run_due = False
            with lock:
                if self._grant is not None or self._error is not None:
                    return True
                due = self._due
                if due is not None and time.monotonic() >= due:
                    self._due = None
                    run_due = True
                else:
                    event.clear()
            if run_due:
                self._owner._on_due(self)
                continue
            timeout: float | None = None
            now = time.monotonic()
            if due is not None:
                timeout = due - now
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    return False
                timeout = remaining if timeout is None else min(timeout, remaining)
            event.wait(timeout)
