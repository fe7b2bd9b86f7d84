"""RateLimiter: GCRA accuracy on a fake clock, reserve/settle, FIFO, cancellation, threads+loops."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cancelling import acquire_while_cancelled
from llmctx._exceptions import ConfigError, LLMCtxError
from llmctx._limits import AcquireTimeout, RateLimiter, Reservation, WouldBlock
from llmctx._waiting import _YIELD_EVERY, _per_thread


@pytest.fixture
def anyio_backend() -> str:
    """Run the anyio-marked tests on asyncio (the limiter's async side is asyncio)."""
    return "asyncio"


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.ns = 1_000 * 1_000_000_000

    def __call__(self) -> float:
        return self.ns / 1e9

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


async def _until(predicate: object) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded by the caller's fail_after)."""
    # The condition is the limiter's internal queue; it exposes no event to wait on.
    while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0},
        {"rpm": -5},
        {"tpm": 0},
        {"rpm": float("nan")},
        {"rpm": float("inf")},
        {"rpm": True},
        {"rpm": "60"},
        {},
        {"rpm": 60, "burst": 0},
        {"rpm": 60, "burst": -1},
    ],
)
def test_bad_construction_is_a_config_error(kwargs: dict[str, object]) -> None:
    """rpm/tpm <= 0, non-numbers, no limit at all, or burst <= 0 raise ConfigError."""
    with pytest.raises(ConfigError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_bad_call_arguments_are_config_errors() -> None:
    """Negative tokens, negative/NaN timeouts and negative settles raise ConfigError."""
    limiter = RateLimiter(rpm=60)
    with pytest.raises(ConfigError, match="negative"):
        limiter.acquire(tokens=-1)
    with pytest.raises(ConfigError, match="timeout"):
        limiter.acquire(timeout=-0.5)
    with pytest.raises(ConfigError, match="timeout"):
        limiter.reserve(timeout=float("nan"))
    with pytest.raises(ConfigError):
        limiter.acquire_nowait(tokens=1.5)  # type: ignore[arg-type]
    r = limiter.acquire_nowait()
    with pytest.raises(ConfigError):
        r.settle(-3)
    with pytest.raises(ConfigError):
        limiter.feedback(retry_after=-1)


def test_errors_derive_from_the_root() -> None:
    """WouldBlock and AcquireTimeout are LLMCtxErrors; AcquireTimeout is also a TimeoutError."""
    assert issubclass(WouldBlock, LLMCtxError)
    assert issubclass(AcquireTimeout, LLMCtxError)
    assert issubclass(AcquireTimeout, TimeoutError)


# --------------------------------------------------------------------------- accuracy
def _admissions_per_step(
    limiter: RateLimiter, clock: FakeClock, seconds: float, step: float
) -> list[int]:
    counts = []
    for _ in range(round(seconds / step)):
        n = 0
        while True:
            try:
                limiter.acquire_nowait()
            except WouldBlock:
                break
            n += 1
        counts.append(n)
        clock.advance(step)
    return counts


def test_rate_is_exact_over_a_minute_on_a_fake_clock() -> None:
    """Greedy callers get exactly rpm per minute plus the initial burst, never more."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, burst=1.0, clock=clock)  # 10/s, burst of 10
    counts = _admissions_per_step(limiter, clock, 60.0, 0.01)
    assert counts[0] == 10  # the initial burst: one second's worth
    # Steps cover [0 s, 60 s): the burst at 0 s, then one every 0.1 s up to 59.9 s.
    assert sum(counts) == 10 + 599
    # After the burst, no one-second window admits more than 10 (+1 for the window edge).
    for start in range(100, len(counts) - 100):
        assert sum(counts[start : start + 100]) <= 11


def _reference_gcra(
    tats: list[int], i_req: int, i_tok: int, tol: int, tokens: int, now: int
) -> int:
    """The module docstring's GCRA, written plainly with max/min: the model of _MemoryStore."""
    base_req = max(tats[0], now)
    delay = base_req + min(i_req, tol) - tol - now
    cost = tokens * i_tok
    base_tok = max(tats[1], now)
    if i_tok:
        delay = max(delay, base_tok + min(cost, tol) - tol - now)
    if delay > 0:
        return delay
    tats[0] = base_req + i_req
    if i_tok:
        tats[1] = base_tok + cost
    return 0


@settings(max_examples=300, deadline=None)
@given(
    rpm=st.sampled_from([None, 1.0, 60.0, 6_000.0]),
    tpm=st.sampled_from([None, 100.0, 60_000.0]),
    burst=st.sampled_from([0.001, 0.5, 1.0, 30.0]),
    steps=st.lists(
        st.tuples(
            st.integers(0, 5_000),  # tokens
            st.integers(0, 3 * 10**9),  # nanoseconds the clock moves first
            st.integers(-(10**10), 10**10),  # then the token schedule moves (settle/refund)
        ),
        max_size=40,
    ),
)
def test_memory_store_admits_exactly_as_the_plain_gcra(
    rpm: float | None, tpm: float | None, burst: float, steps: list[tuple[int, int, int]]
) -> None:
    """The in-process GCRA step admits, refuses and waits exactly as the plain formula says."""
    if rpm is None and tpm is None:
        rpm = 60.0
    limiter = RateLimiter(rpm=rpm, tpm=tpm, burst=burst)
    store = limiter._store
    i_req, i_tok, tol = limiter._i_req, limiter._i_tok, limiter._tolerance
    now = 10**15
    model = [store.state(now)[0], store.state(now)[1]]
    for tokens, dt, moved in steps:
        now += dt
        assert store.try_acquire(i_req, i_tok, tol, tokens, now) == _reference_gcra(
            model, i_req, i_tok, tol, tokens, now
        )
        store.adjust(0, moved, now)
        model[1] += moved
        assert store.state(now)[:2] == tuple(model)


def test_token_rate_is_exact_on_a_fake_clock() -> None:
    """Token-weighted admissions follow tpm: 100-token requests at tpm=60_000 go 10 per second."""
    clock = FakeClock()
    limiter = RateLimiter(tpm=60_000, burst=0.5, clock=clock)  # 1000 tokens/s, 500 burst
    admitted = 0
    for _ in range(3000):  # 30 s in 10 ms steps
        while True:
            try:
                limiter.acquire_nowait(tokens=100)
            except WouldBlock:
                break
            admitted += 1
        clock.advance(0.01)
    # [0 s, 30 s): the 500-token burst at 0 s, then one 100-token request every 0.1 s.
    assert admitted == 5 + 299


def test_retry_after_is_the_exact_wait() -> None:
    """WouldBlock.retry_after says exactly when the next request fits."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, burst=1.0, clock=clock)  # one per second
    limiter.acquire_nowait()
    clock.advance(0.25)
    with pytest.raises(WouldBlock) as info:
        limiter.acquire_nowait()
    assert info.value.retry_after == pytest.approx(0.75, abs=1e-6)
    clock.advance(0.75)
    limiter.acquire_nowait()


def test_both_dimensions_commit_or_neither() -> None:
    """A request refused by tpm takes nothing from rpm."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=6_000, burst=1.0, clock=clock)  # 10 req, 100 tok
    limiter.acquire_nowait(tokens=100)
    before = limiter.statistics()
    with pytest.raises(WouldBlock):
        limiter.acquire_nowait(tokens=50)
    after = limiter.statistics()
    assert after.available_requests == before.available_requests == 9
    assert after.available_tokens == before.available_tokens == 0


def test_request_larger_than_burst_is_admitted_when_full_and_leaves_debt() -> None:
    """A request bigger than the burst goes once the bucket is full; its excess is waited out."""
    clock = FakeClock()
    limiter = RateLimiter(tpm=6_000, burst=1.0, clock=clock)  # 100 tokens/s, burst 100
    big = limiter.acquire_nowait(tokens=500)  # bucket full: admitted, 400 tokens of debt
    assert big.tokens == 500
    with pytest.raises(WouldBlock) as info:
        limiter.acquire_nowait(tokens=1)
    # 500 tokens at 100/s = 5 s; a 1-token request fits 0.01 s before the bucket is full.
    assert info.value.retry_after == pytest.approx(5.0 - 0.99, abs=1e-6)
    clock.advance(5.0)
    limiter.acquire_nowait(tokens=500)  # full again, so another big one goes


def test_settle_refunds_or_charges_debt() -> None:
    """Settling below the estimate refunds the difference; above it, later callers wait."""
    clock = FakeClock()
    limiter = RateLimiter(tpm=6_000, burst=1.0, clock=clock)  # 100 tokens/s
    r = limiter.acquire_nowait(tokens=80)
    r.settle(30)
    assert limiter.statistics().available_tokens == 70
    r2 = limiter.acquire_nowait(tokens=70)
    r2.settle(170)  # 100 tokens of debt
    with pytest.raises(WouldBlock) as info:
        limiter.acquire_nowait(tokens=1)
    assert info.value.retry_after == pytest.approx(1.01, abs=1e-6)
    r2.settle(0)  # second settle is a no-op
    r2.release()  # and so is a release after a settle
    assert r2.actual_tokens == 170


def test_release_gives_everything_back() -> None:
    """release() refunds the request and its tokens; the limiter is full again."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=6_000, burst=1.0, clock=clock)
    r = limiter.acquire_nowait(tokens=100)
    assert not limiter.statistics().available_tokens
    r.release()
    stats = limiter.statistics()
    assert (stats.available_requests, stats.available_tokens, stats.in_flight) == (1, 100, 0)
    assert not r.open


def test_feedback_pushes_the_schedule_back() -> None:
    """Retry-After delays the next admission; remaining-* headers shrink what may go at once."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=60_000, burst=1.0, clock=clock)  # 10 req/s, 1000 tok/s
    limiter.feedback(retry_after=5)
    with pytest.raises(WouldBlock) as info:
        limiter.acquire_nowait()
    assert info.value.retry_after == pytest.approx(5.0, abs=1e-6)
    clock.advance(5.0)
    limiter.acquire_nowait()

    limiter2 = RateLimiter(rpm=600, tpm=60_000, burst=1.0, clock=clock)
    limiter2.feedback(remaining_requests=2, remaining_tokens=300)
    stats = limiter2.statistics()
    assert (stats.available_requests, stats.available_tokens) == (2, 300)
    limiter2.feedback(remaining_requests=9)  # never brings the schedule forward
    assert limiter2.statistics().available_requests == 2


# --------------------------------------------------------------------------- async behaviour
@pytest.mark.anyio
async def test_acquire_context_manager_and_settle() -> None:
    """`async with acquire()` yields an open reservation; leaving it keeps the estimate."""
    clock = FakeClock()
    limiter = RateLimiter(tpm=6_000, burst=1.0, clock=clock)
    with anyio.fail_after(5):
        async with limiter.acquire(tokens=40) as r:
            assert isinstance(r, Reservation)
            r.settle(10)
        async with limiter.acquire(tokens=20):
            pass
    stats = limiter.statistics()
    assert (stats.available_tokens, stats.in_flight, stats.admitted) == (70, 0, 2)


@pytest.mark.anyio
async def test_large_waiter_is_not_overtaken() -> None:
    """A small request queued behind a large one waits even though it would fit (FIFO)."""
    clock = FakeClock()  # frozen: only refunds free capacity
    limiter = RateLimiter(tpm=6_000, burst=1.0, clock=clock)  # 100 tokens
    hold1 = limiter.acquire_nowait(tokens=50)
    hold2 = limiter.acquire_nowait(tokens=50)
    order: list[str] = []

    async def take(label: str, tokens: int) -> None:
        r = await limiter.areserve(tokens)
        order.append(label)
        r.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "large", 80)
            await _until(lambda: limiter.statistics().waiting == 1)
            tg.start_soon(take, "small", 10)
            await _until(lambda: limiter.statistics().waiting == 2)
            hold1.release()  # 50 tokens free: "small" fits, "large" does not
            for _ in range(20):
                await asyncio.sleep(0)
            assert order == []
            with pytest.raises(WouldBlock):
                limiter.acquire_nowait(tokens=1)  # no overtaking from outside either
            assert limiter.statistics().waiting == 2
            hold2.release()  # the large one goes first, then the small one
    assert order == ["large", "small"]


@pytest.mark.anyio
async def test_cancelled_waiter_takes_nothing_and_next_gets_through() -> None:
    """Cancelling the head waiter leaves capacity intact and lets the next waiter in."""
    clock = FakeClock()
    limiter = RateLimiter(tpm=6_000, burst=1.0, clock=clock)
    hold = limiter.acquire_nowait(tokens=100)
    got: list[int] = []
    scopes: list[anyio.CancelScope] = []

    async def big() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await limiter.areserve(90)
            got.append(90)

    async def small() -> None:
        r = await limiter.areserve(30)
        got.append(30)
        r.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(big)
            await _until(lambda: limiter.statistics().waiting == 1)
            tg.start_soon(small)
            await _until(lambda: limiter.statistics().waiting == 2)
            scopes[0].cancel()
            await _until(lambda: limiter.statistics().waiting == 1)
            hold.settle(60)  # 40 free: enough for "small" only
    stats = limiter.statistics()
    assert got == [30]
    assert stats.cancellations == 1
    assert stats.available_tokens == 40  # 100 - 60 settled by `hold`; "small" was released
    assert stats.in_flight == 0


@pytest.mark.anyio
async def test_timeout_raises_and_takes_nothing() -> None:
    """A waiter that times out raises AcquireTimeout (a TimeoutError) and takes nothing."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, burst=1.0, clock=clock)
    limiter.acquire_nowait()
    with anyio.fail_after(5):
        with pytest.raises(TimeoutError):
            await limiter.areserve(timeout=0.01)
        with pytest.raises(AcquireTimeout):
            await limiter.areserve(timeout=0)
    with pytest.raises(AcquireTimeout):
        limiter.reserve(timeout=0.01)
    stats = limiter.statistics()
    assert (stats.timeouts, stats.waiting, stats.admitted) == (3, 0, 1)


def test_threads_and_several_event_loops_share_one_limiter() -> None:
    """Threads and tasks on three event loops all get through one limiter, none lost."""
    limiter = RateLimiter(rpm=600_000, burst=0.001)  # 10 per ms, bursts of 10: real waits
    per_worker = 100
    errors: list[BaseException] = []

    def thread_worker() -> None:
        try:
            for _ in range(per_worker):
                with limiter.acquire(timeout=30) as r:
                    r.settle(0)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    def loop_worker() -> None:
        async def one() -> None:
            async with limiter.acquire(timeout=30):
                pass

        async def main() -> None:
            await asyncio.gather(*(one() for _ in range(per_worker)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_worker) for _ in range(3)]
    threads += [threading.Thread(target=loop_worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    stats = limiter.statistics()
    assert (stats.admitted, stats.waiting, stats.in_flight) == (6 * per_worker, 0, 0)


def test_four_threads_and_two_loops_never_admit_more_than_the_limit() -> None:
    """Racing threads and loops on a stopped clock admit exactly the burst's 1,000, no more.

    4 threads (``acquire_nowait`` and ``with acquire(timeout=0)``) and 2 event loops (the
    async fast path, ``async with acquire(timeout=0)``) hammer one limiter whose clock does not
    move, with the interpreter switching threads every microsecond: each admission they count
    is one the limiter granted, and GCRA allows 1,000 from a full bucket at one instant.
    """
    clock = FakeClock()
    limiter = RateLimiter(rpm=60_000, burst=1.0, clock=clock)  # 1,000 a second, 1 s of burst
    counts: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def thread_worker(nowait: bool) -> None:
        admitted = refused = 0
        try:
            start.wait()
            while refused < 200:
                try:
                    if nowait:
                        limiter.acquire_nowait().settle(0)
                    else:
                        with limiter.acquire(timeout=0):
                            pass
                except (WouldBlock, AcquireTimeout):
                    refused += 1
                else:
                    admitted += 1
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)
        counts.append(admitted)

    def loop_worker() -> None:
        async def main() -> int:
            admitted = refused = 0
            while refused < 200:
                try:
                    async with limiter.acquire(timeout=0):
                        pass
                except AcquireTimeout:
                    refused += 1
                else:
                    admitted += 1
            return admitted

        try:
            start.wait()
            counts.append(asyncio.run(main()))
        except BaseException as exc:
            errors.append(exc)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=thread_worker, args=(i % 2 == 0,)) for i in range(4)]
        threads += [threading.Thread(target=loop_worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(previous)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert sum(counts) == 1000
    stats = limiter.statistics()
    assert (stats.admitted, stats.waiting, stats.in_flight) == (1000, 0, 0)
    assert stats.available_requests == 0


# --------------------------------------------------------------------------- randomized
@pytest.mark.anyio
async def test_randomized_cancel_and_timeout_leave_the_limiter_full() -> None:
    """100,000 random acquires (20% cancelled, 10% with timeouts) leave it exactly full, FIFO."""
    rng = random.Random(4)
    clock = FakeClock()  # frozen: capacity comes back only through releases, exactly
    limiter = RateLimiter(rpm=60_000, tpm=60_000, burst=1.0, clock=clock)  # 1000 req, 1000 tok
    admitted_order: list[int] = []
    ticket = 0
    batches, per_batch = 1000, 100

    async def op(my_ticket: int, tokens: int, wait: float | None, hold: int) -> None:
        try:
            r = await limiter.areserve(tokens, timeout=wait)
        except AcquireTimeout:
            return
        admitted_order.append(my_ticket)
        try:
            for _ in range(hold):
                await asyncio.sleep(0)
        finally:
            r.release()

    with anyio.fail_after(60):
        for _ in range(batches):
            blocker = limiter.acquire_nowait(tokens=1000)  # everyone queues behind this
            tasks = []
            for _ in range(per_batch):
                roll = rng.random()
                timeout = rng.choice([0.0, 0.0005]) if roll < 0.1 else None
                tasks.append(
                    asyncio.create_task(op(ticket, rng.randint(1, 400), timeout, rng.randint(0, 3)))
                )
                ticket += 1
            to_cancel = [t for t in tasks if rng.random() < 0.2]
            await asyncio.sleep(0)
            blocker.release()
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            for t in to_cancel:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    stats = limiter.statistics()
    assert (stats.waiting, stats.in_flight) == (0, 0)
    assert (stats.available_requests, stats.available_tokens) == (1000, 1000)
    inversions = sum(1 for a, b in itertools.pairwise(admitted_order) if b < a)
    assert inversions == 0
    assert stats.cancellations > 0
    assert stats.timeouts > 0


@pytest.mark.anyio
async def test_rate_limited_waiters_make_one_future_each_and_are_not_polled() -> None:
    """Waiters behind a rate limit get one future each; the head waits on a timer, not wakes."""
    loop = asyncio.get_running_loop()
    made = 0
    create_future = loop.create_future

    def counting_create_future() -> asyncio.Future[Any]:
        nonlocal made
        # Count the futures llmctx's waiters make, not asyncio's own (sleep, gather).
        if sys._getframe(1).f_code.co_filename.endswith("_waiting.py"):
            made += 1
        return create_future()

    limiter = RateLimiter(rpm=60_000, burst=0.002)  # 1 per ms, bursts of 2: real short waits
    order: list[int] = []

    async def worker(i: int) -> None:
        async with limiter.acquire():
            order.append(i)

    loop.create_future = counting_create_future  # type: ignore[method-assign]
    try:
        with anyio.fail_after(10):
            await asyncio.gather(*(worker(i) for i in range(30)))
    finally:
        del loop.create_future
    stats = limiter.statistics()
    assert order == list(range(30))
    # At most one future per queued acquire (two went straight in on the burst): a head
    # woken to re-check and re-armed would need a second one.
    assert 1 <= made <= 28
    assert (stats.admitted, stats.waiting, stats.in_flight) == (30, 0, 0)


# --------------------------------------------------------------------------- cancellation points
async def _ticks_during(work: Any) -> int:
    """How many times a concurrently running task got to run while ``work()`` ran."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let it start
    ticks = 0
    await work()
    stop = True
    await task
    return ticks


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["async with", "areserve"])
async def test_uncontended_acquires_let_other_tasks_run(how: str) -> None:
    """10,000 acquires admitted at once let a concurrent task run once per _YIELD_EVERY of them."""
    limiter = RateLimiter(rpm=6e10, tpm=6e10, burst=60.0)

    async def work() -> None:
        for _ in range(10_000):
            if how == "async with":
                async with limiter.acquire(tokens=10):
                    pass
            else:
                (await limiter.areserve(tokens=10)).release()

    with anyio.fail_after(30):
        ticks = await _ticks_during(work)
    # One yield per _YIELD_EVERY acquires (the count may start anywhere in its cycle): other
    # tasks run, and an uncontended acquire does not pay a trip through the loop each time.
    assert 10_000 // _YIELD_EVERY - 1 <= ticks <= 10_000 // _YIELD_EVERY + 1
    assert limiter.statistics().in_flight == 0


@pytest.mark.anyio
@pytest.mark.parametrize("cancel", ["asyncio task", "anyio scope"])
@pytest.mark.parametrize("how", ["async with", "areserve"])
async def test_acquire_in_a_cancelled_task_raises_and_takes_nothing(how: str, cancel: str) -> None:
    """An acquire after the task was cancelled raises the cancellation; capacity stays full."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=600, burst=1.0, clock=clock)  # 1 request, 10 tokens
    entered = False

    async def acquire() -> None:
        nonlocal entered
        if how == "async with":
            async with limiter.acquire(tokens=10):
                entered = True
        else:
            await limiter.areserve(tokens=10)
            entered = True

    with anyio.fail_after(5):
        await acquire_while_cancelled(acquire, cancel)
    assert not entered
    stats = limiter.statistics()
    assert (stats.available_requests, stats.available_tokens) == (1, 10)
    assert (stats.in_flight, stats.admitted) == (0, 0)
    limiter.acquire_nowait(tokens=10)  # the whole burst is still there


@pytest.mark.anyio
@pytest.mark.parametrize("cancel", ["asyncio task", "anyio scope"])
async def test_every_acquire_raises_a_pending_cancellation(cancel: str) -> None:
    """A pending cancellation raises at each acquire, wherever the amortized yield count stands."""
    limiter = RateLimiter(rpm=60, tpm=600, burst=1.0, clock=FakeClock())  # 1 request, 10 tokens
    entered = 0

    async def acquire() -> None:
        nonlocal entered
        async with limiter.acquire(tokens=10):
            entered += 1

    with anyio.fail_after(10):
        # Each round moves the yield count on by one uncancelled acquire, so the cancelled
        # acquires meet every position of it.
        for _ in range(_YIELD_EVERY + 1):
            (await limiter.areserve(tokens=10)).release()
            await acquire_while_cancelled(acquire, cancel)
    assert entered == 0
    stats = limiter.statistics()
    assert (stats.available_requests, stats.available_tokens) == (1, 10)
    assert (stats.in_flight, stats.admitted) == (0, _YIELD_EVERY + 1)


@pytest.mark.anyio
async def test_cancel_at_the_yield_after_an_admission_gives_it_back() -> None:
    """A task cancelled on the amortized yield after an admission made at once refunds it."""
    limiter = RateLimiter(rpm=60, tpm=600, burst=1.0, clock=FakeClock())  # 1 request, 10 tokens
    entered = False

    async def holder() -> None:
        nonlocal entered
        async with limiter.acquire(tokens=10):
            entered = True

    with anyio.fail_after(5):
        _per_thread.state.since_yield = _YIELD_EVERY - 1  # the next acquire yields
        task = asyncio.create_task(holder())
        await asyncio.sleep(0)  # it is admitted at once and now yields
        assert limiter.statistics().in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not entered
    stats = limiter.statistics()
    assert (stats.in_flight, stats.admitted, stats.cancellations) == (0, 0, 1)
    assert (stats.available_requests, stats.available_tokens) == (1, 10)


def test_the_documented_yield_interval_is_the_one_in_force() -> None:
    """The limiter's docstrings and docs/limits.md state the yield interval the code uses."""
    every = re.compile(rf"\b{_YIELD_EVERY}\b")
    guide = Path(__file__).resolve().parent.parent / "docs" / "limits.md"
    for text in (RateLimiter.areserve.__doc__, Reservation.__doc__, guide.read_text()):
        assert text is not None
        assert every.search(text)
