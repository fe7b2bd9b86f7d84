"""Ctrl-C safety of RateLimiter and ResourcePool: an interrupt at every traced line, and storms.

A ``KeyboardInterrupt`` may land wherever the interpreter checks for signals. The first tests
put one at every line (and function entry) of the limiter and pool modules in turn, through
the SIGINT handler a real Ctrl-C reaches (``signal.getsignal(SIGINT)(SIGINT, frame)`` is what
the interpreter does when the signal arrives: :mod:`llmctx._interrupt` raises it in
unprotected code and defers it in protected code). The storms then deliver real ones
(``_thread.interrupt_main()`` from a SIGALRM handler re-armed at random 20-500 us intervals)
while acquires and releases loop. Every run must leave no unit borrowed, no reservation in
flight, no waiter queued, the internal lock free, and the next acquire must succeed at once.

One kind of point is skipped, in unprotected frames only: on CPython 3.11+ a with-block's exit
is reported as a 'line' event before ``__exit__`` is called, at an instruction where the
interpreter never delivers a signal (three ``LOAD_CONST None``, then the call, found from the
bytecode at ``frame.f_lasti``); raising there would skip ``__exit__``, a leak no real Ctrl-C
can cause. Every point in protected frames is kept.

``LLMCTX_STORM=N`` runs each storm for N interrupts instead of CI's 1,000.
"""

from __future__ import annotations

import _thread
import asyncio
import dis
import gc
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any

import pytest

from alarms import AlarmStorm, alarm_storm
from llmctx import _interrupt, _limits, _pool, _waiting
from llmctx._limits import RateLimiter
from llmctx._pool import ResourcePool
from llmctx._redis import _client as _redis_client_module
from llmctx._redis import _script as _script_module
from llmctx._redis import lease as _lease_module
from llmctx._redis import rate as _rate_module

# The limiter and pool modules, and the Redis code they call (the client wrapper and the script
# runner: where an interrupt lands between Redis's reply and the object that records it).
_MODULES = (_waiting, _pool, _limits, _lease_module, _rate_module, _script_module)
TRACED = {str(module.__file__) for module in (*_MODULES, _redis_client_module)}
STORM = int(os.environ.get("LLMCTX_STORM", "1000"))

Limited = ResourcePool[str] | RateLimiter


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap() -> Iterator[None]:
    """Freeze what earlier tests left on the heap out of the collections these tests run.

    They collect after every interrupted point; in a whole-suite run the heap holds every
    framework the suite imported, and a full collection of it costs a quarter of a second.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


# The settrace cases' limiters read this clock: it moves only when the checks move it.
_NOW = [1000.0]

# --------------------------------------------------------------------------- checks


def _assert_clean(x: Limited) -> None:
    """Nothing an interrupted run could leave behind is left, and the next acquire goes at once.

    The fake clock moves on first: a reservation that kept its estimate (a block left with
    it open) is spent, not leaked, and the bucket refills.
    """
    _NOW[0] += 10.0
    gc.collect()  # an interrupted task's coroutines give back what they held when closed
    stats = x.statistics()
    assert stats.waiting == 0, f"{stats.waiting} waiter(s) left queued"
    if isinstance(x, ResourcePool):
        assert stats.borrowed == 0, f"{stats.borrowed} unit(s) left borrowed"
    else:
        assert stats.in_flight == 0, f"{stats.in_flight} reservation(s) left in flight"
    assert x._lock.acquire(timeout=0), "the internal lock is held"
    x._lock.release()
    x.acquire_nowait().release()
    stats = x.statistics()
    assert stats.waiting == 0
    if isinstance(x, ResourcePool):
        assert stats.borrowed == 0
    else:
        assert stats.in_flight == 0


@contextmanager
def _default_sigint() -> Iterator[None]:
    """Python's default SIGINT handler around the test, so the deferring one can be armed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _take_owed() -> None:
    """Let an interrupt deferred by protected code be re-delivered here, before the checks."""
    deadline = time.monotonic() + 2.0
    handler = _interrupt._handler
    while handler.pending and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not handler.pending, "a deferred interrupt was never re-delivered"


# --------------------------------------------------------------------------- settrace
_with_exits: dict[CodeType, frozenset[int]] = {}


def _with_exit_offsets(code: CodeType) -> frozenset[int]:
    """Offsets where CPython 3.11+ reports a with-block's exit line, before ``__exit__`` runs.

    There (three ``LOAD_CONST None``, then the call) the interpreter never delivers a signal;
    a real one lands inside ``__exit__``. A trace function raising on that line event skips
    ``__exit__``, a leak no Ctrl-C can cause, so those points are skipped in unprotected frames.
    """
    found = _with_exits.get(code)
    if found is None:
        ins = list(dis.get_instructions(code))
        found = frozenset(
            ins[i].offset
            for i in range(len(ins) - 3)
            if all(
                ins[i + j].opname == "LOAD_CONST" and ins[i + j].argval is None for j in range(3)
            )
            and ins[i + 3].opname in ("PRECALL", "CALL")
        )
        _with_exits[code] = found
    return found


def _interrupt_at(k: int) -> tuple[Callable[[FrameType, str, Any], Any], list[int]]:
    """A trace function that delivers SIGINT at the k-th traced point; ``[points seen]``."""
    seen = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event not in ("line", "call"):
            return local
        if (
            event == "line"
            and frame.f_lasti in _with_exit_offsets(frame.f_code)
            and not _interrupt.is_protected(frame)
        ):
            return local
        seen[0] += 1
        if seen[0] == k:
            # What the interpreter does when SIGINT arrives: call the installed handler.
            signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)  # type: ignore[operator]
        return local

    def hook(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename in TRACED:
            return local(frame, event, arg)
        return None

    return hook, seen


class _Case:
    """One operation to interrupt: a fresh limiter or pool, and a thread that contends for it."""

    def __init__(
        self,
        make: Callable[[], Limited],
        contended: bool,
        run_async: bool,
        timeout: float | None = None,
    ) -> None:
        self.make = make
        self.contended = contended
        self.run_async = run_async
        self.timeout = timeout
        self.x: Any = None
        self._held: Any = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def setup(self) -> None:
        """A fresh object; when contended, its only unit held by another thread."""
        self.x = self.make()
        if not self.contended:
            return
        self._held = self.x.acquire_nowait()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._release_when_queued, daemon=True)
        self._thread.start()

    def _release_when_queued(self) -> None:
        # The holder gives its unit back once the main thread queues (or gave up before).
        while not self._done.is_set() and self.x.statistics().waiting == 0:
            time.sleep(0.0002)
        self._held.release()

    def operation(self) -> None:
        """The acquire and release a user writes, sync or async."""
        if self.run_async:
            _run_to_end(self._async_operation())
        else:
            with self.x.acquire(timeout=self.timeout):
                pass

    @_interrupt.unprotected
    async def _async_operation(self) -> None:
        async with self.x.acquire(timeout=self.timeout):
            pass

    def teardown(self) -> None:
        """Wait for the contending thread (its release must be in before the checks)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive()
            self._thread = None


@_interrupt.protected
def _run_to_end(coro: Coroutine[Any, Any, None]) -> None:
    """Run the user's coroutine in a new event loop, whose own code this frame protects.

    The user's coroutine is marked unprotected, as a user's is. asyncio's machinery is not
    interrupt-safe (``asyncio.run`` interrupted in its cleanup leaves the loop unclosed), and
    it is not what is tested here.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


def _every_point(case: _Case) -> tuple[int, int]:
    """Interrupt ``case`` at each traced point in turn; (points, points deferred)."""
    k = 0
    deferred_before = _interrupt._handler.deferred
    while True:
        k += 1
        hook, seen = _interrupt_at(k)
        case.setup()
        interrupted = False
        try:
            with _interrupt.deferring() as armed:
                assert armed
                sys.settrace(hook)
                try:
                    case.operation()
                finally:
                    sys.settrace(None)
                _take_owed()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        case.teardown()
        _assert_clean(case.x)
        if seen[0] < k:  # the run ended before the k-th point: every point was tried
            assert not interrupted, "an interrupt with no point to land on"
            return k - 1, _interrupt._handler.deferred - deferred_before
        assert interrupted, f"the interrupt at point {k} was lost (never raised)"


def _pool() -> ResourcePool[str]:
    return ResourcePool(["gpu0"], capacity=1)


def _checked_pool() -> ResourcePool[str]:
    return ResourcePool(["gpu0", "gpu1"], health_check=bool)


def _limiter() -> RateLimiter:
    # One request's room (a unit another thread can hold); a fake clock that stands still
    # during a run, so only a release makes room again.
    return RateLimiter(rpm=60, tpm=60_000, burst=1.0, clock=lambda: _NOW[0])


CASES: dict[str, tuple[Callable[[], Limited], bool, bool, float | None]] = {
    "pool": (_pool, False, False, None),
    "pool contended": (_pool, True, False, None),
    "pool contended, timeout": (_pool, True, False, 30.0),
    "pool async": (_pool, False, True, None),
    "pool async contended": (_pool, True, True, None),
    "pool async contended, timeout": (_pool, True, True, 30.0),
    "pool health-checked": (_checked_pool, False, False, None),
    "pool health-checked async": (_checked_pool, False, True, None),
    "limiter": (_limiter, False, False, None),
    "limiter contended": (_limiter, True, False, None),
    "limiter contended, timeout": (_limiter, True, False, 30.0),
    "limiter async": (_limiter, False, True, None),
    "limiter async contended": (_limiter, True, True, None),
    "limiter async contended, timeout": (_limiter, True, True, 30.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_interrupt_at_any_point_of_an_acquire_leaves_nothing_behind(name: str) -> None:
    """A Ctrl-C at any line of an acquire, its wait or its release leaks no unit, place or lock."""
    case = _Case(*CASES[name])
    with _default_sigint():
        points, deferred = _every_point(case)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert points > 20, f"only {points} points traced"
    assert deferred > 0, "no interrupt landed in protected code"


# --------------------------------------------------------------------------- Redis
@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A redis-py client on the test server."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["pool", "limiter"])
def test_an_interrupt_at_any_point_of_a_redis_acquire_leaves_nothing_behind(
    kind: str, redis_client: Any, unique: str
) -> None:
    """A Ctrl-C anywhere in a Redis-backed acquire or release leaves no lease in Redis."""
    from llmctx._redis import RedisLeaseStore, RedisRateStore

    name = f"test-ki-{unique}"
    stores: list[Any] = []

    def make() -> Limited:
        if kind == "pool":
            store: Any = RedisLeaseStore(redis_client, name, poll_interval=0.01)
            stores.append(store)
            return ResourcePool(["gpu0"], capacity=1, store=store)
        rate = RedisRateStore(redis_client, name)
        rate.clear()  # a fresh, full bucket for each run
        return RateLimiter(rpm=60_000, store=rate)

    case = _Case(make, contended=False, run_async=False)
    try:
        with _default_sigint():
            points, _ = _every_point(case)
            if kind == "pool":
                assert redis_client.zcard(f"{{llmctx:pool:{name}}}:leases") == 0
                assert all(not s._renewal._held for s in stores), "a lease still renewed"
        assert points > 20
    finally:
        for store in stores:
            store.close()
        redis_client.delete(f"{{llmctx:pool:{name}}}:leases", f"{{llmctx:rl:{name}}}:gcra")


# --------------------------------------------------------------------------- storms
@_interrupt.unprotected
def _loop_sync(op: Callable[[], None]) -> None:
    """The user's loop of acquires: where a storm's interrupts are raised."""
    while True:
        op()


@_interrupt.unprotected
async def _loop_async(op: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The user's loop of async acquires: where a storm's interrupts are raised."""
    while True:
        await op()


@_interrupt.protected
def _storm(storm: AlarmStorm, n: int, op: Callable[[], None]) -> int:
    """Catch ``n`` interrupts raised in the user's loop (this bookkeeping defers them)."""
    caught = 0
    try:
        while caught < n:
            storm.keep_going()
            try:
                _loop_sync(op)
            except KeyboardInterrupt:
                caught += 1
    finally:
        storm.stop()
    return caught


@_interrupt.protected
async def _storm_async(
    storm: AlarmStorm, n: int, op: Callable[[], Coroutine[Any, Any, None]]
) -> int:
    """:func:`_storm` in one task, so no task dies per interrupt.

    (A task's death runs a weakref callback in asyncio's task set, where an interrupt would be
    swallowed as "unraisable": asyncio's own limit, not the pool's.)
    """
    caught = 0
    try:
        while caught < n:
            storm.keep_going()
            try:
                await _loop_async(op)
            except KeyboardInterrupt:
                caught += 1
    finally:
        storm.stop()
    return caught


@_interrupt.protected
def _storm_in_loop(storm: AlarmStorm, n: int, op: Any) -> int:
    """Run :func:`_storm_async` in a new event loop (whose code this frame protects)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_storm_async(storm, n, op))
    finally:
        loop.close()


def _run_storm(x: Limited, mode: str) -> int:
    """Storm a loop of acquire/release on ``x``; a thread contends in "contended" mode."""
    rng = random.Random(1234)
    stop = threading.Event()

    # Each block gives its unit back itself (a reservation released: the request was never
    # sent), so a limiter with one request's room behaves as a lock the two sides contend for.
    def contend() -> None:
        while not stop.is_set():
            with x.acquire() as held:
                time.sleep(0.0001)
                held.release()

    def pair() -> None:
        with x.acquire() as held:
            held.release()

    async def apair() -> None:
        async with x.acquire() as held:
            held.release()

    helper = threading.Thread(target=contend, daemon=True) if mode == "contended" else None
    caught = 0
    # Each alarm is a real SIGINT delivery at a random point.
    storm_alarms = alarm_storm(rng, 20e-6, 500e-6, _thread.interrupt_main)
    try:
        with storm_alarms as storm, _default_sigint(), _interrupt.deferring() as armed:
            assert armed
            if helper is not None:
                helper.start()
            storm.start()
            if mode == "async":
                caught = _storm_in_loop(storm, STORM, apair)
            else:
                caught = _storm(storm, STORM, pair)
            # The last alarms' interrupts, deferred or tripped, land here.
            for _ in range(5):
                try:
                    _take_owed()
                    time.sleep(0.005)
                except KeyboardInterrupt:
                    pass
    finally:
        stop.set()
        if helper is not None:
            helper.join(10)
            assert not helper.is_alive()
    return caught


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer (POSIX)")
@pytest.mark.parametrize("mode", ["sync", "contended", "async"])
@pytest.mark.parametrize("kind", ["pool", "limiter"])
def test_a_storm_of_interrupts_leaves_nothing_behind(kind: str, mode: str) -> None:
    """1,000 Ctrl-Cs at random instants of a loop of acquires leak no unit, reservation or lock."""
    x: Limited
    if kind == "pool":
        x = ResourcePool(["gpu0"], capacity=1)
    elif mode == "contended":
        # One request's room, given back by every release: the helper and the test contend.
        x = RateLimiter(rpm=60, burst=1.0)
    else:
        x = RateLimiter(rpm=6e8, tpm=6e10)
    caught = _run_storm(x, mode)
    assert caught >= STORM
    _assert_clean(x)


# --------------------------------------------------------------------------- blocked waits
@pytest.mark.parametrize("armed", [True, False], ids=["deferring handler", "default handler"])
@pytest.mark.parametrize("kind", ["pool", "limiter"])
def test_a_blocked_acquire_is_interrupted_promptly(kind: str, armed: bool) -> None:
    """A Ctrl-C while waiting for a unit another thread holds raises at once; the queue empties."""
    x: Limited = ResourcePool(["gpu0"]) if kind == "pool" else RateLimiter(rpm=1)
    held = x.acquire_nowait()  # the only unit (a limiter at rpm=1 has one request's room)
    timer = threading.Timer(0.1, _thread.interrupt_main)
    with _default_sigint():
        with _interrupt.deferring() if armed else _nothing():
            started = time.monotonic()
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                with x.acquire():
                    pytest.fail("granted while the unit was held")
            elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 1.0, f"interrupted only after {elapsed:.2f} s"
    stats = x.statistics()
    assert stats.waiting == 0
    assert stats.cancellations == 1
    held.release()
    _assert_clean(x)


@contextmanager
def _nothing() -> Iterator[None]:
    """No deferring handler: Python's default one raises the interrupt wherever it lands."""
    yield


# --------------------------------------------------------------------------- health checks
def test_an_interrupted_health_check_leaks_no_unit() -> None:
    """A KeyboardInterrupt in a health check gives the lease back: all 4 of 4 units stay free."""
    interrupts = [3]  # the next checks that raise KeyboardInterrupt

    def check(resource: str) -> bool:
        if interrupts[0] > 0:
            interrupts[0] -= 1
            raise KeyboardInterrupt
        return True

    pool = ResourcePool(["a", "b"], capacity=2, health_check=check)

    async def enter_async() -> None:
        async with pool.acquire(2):
            pytest.fail("granted after an interrupted check")

    with pytest.raises(KeyboardInterrupt):
        with pool.acquire(2):
            pytest.fail("granted after an interrupted check")
    with pytest.raises(KeyboardInterrupt):
        pool.acquire_nowait(2)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(enter_async())
    stats = pool.statistics()
    assert (stats.borrowed, stats.available, stats.quarantined) == (0, 4, 0)

    # A queued caller granted on a release, interrupted in its check, passes the units on.
    first, second = pool.acquire_nowait(2), pool.acquire_nowait(2)
    interrupts[0] = 1
    timer = threading.Timer(0.05, first.release)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        with pool.acquire(2, timeout=5):
            pytest.fail("granted after an interrupted check")
    timer.join()
    assert pool.statistics().borrowed == 2  # only `second`
    second.release()
    _assert_clean(pool)
    assert pool.statistics().available == 4
