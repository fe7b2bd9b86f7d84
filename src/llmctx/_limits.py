"""RateLimiter: requests-per-minute and tokens-per-minute limits, GCRA, reserve-then-settle.

Each dimension (requests, tokens) is one GCRA cell: a single integer, the *theoretical
arrival time* (TAT) in nanoseconds. A request of ``n`` units is admitted at the first instant
``t`` with ``max(TAT, t) + min(n * I, tau) - tau <= t`` (``I``: nanoseconds per unit, ``tau``:
the burst tolerance); admitting it sets ``TAT = max(TAT, t) + n * I``. Wait times are exact,
so waiters sleep until the instant they can go instead of polling. A request larger than the
burst is admitted as soon as the bucket is full (``TAT <= t``) and its excess becomes debt that
later requests wait out, so it never hangs and never errors.

Waiters queue in strict FIFO order and only the head of the queue may be admitted, so small
requests never overtake a large one that is waiting. The queue is protected by a
``threading.Lock`` and each waiter carries its own wake-up (a raw lock for threads, a future
woken with ``call_soon_threadsafe`` for asyncio tasks), so one limiter serves threads and
several event loops at once.

The state can live in Redis (:class:`llmctx.RedisRateStore`, in ``llmctx._redis``) so that
many processes share one limit; the FIFO queue stays per process.

Ctrl-C safe (see :mod:`llmctx._interrupt`): admitting, settling and releasing are
:func:`~llmctx._interrupt.protected`, so a ``KeyboardInterrupt`` that lands there waits until
the limiter is consistent; a wait is interruptible, and an interrupt raised there leaves the
queue and gives back an admission that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, cast, runtime_checkable

from ._exceptions import ConfigError, UsageError
from ._interrupt import protected
from ._waiting import (
    _DONE,
    _YIELD_EVERY,
    AcquireTimeout,
    WouldBlock,
    _cancel_pending,
    _check_timeout,
    _fast_checkpoint,
    _FifoQueue,
    _granted,
    _handed_out,
    _numbers,
    _running_loop,
    _Waiter,
    _yield_due,
    _yield_now,
)

__all__ = [
    "AcquireTimeout",
    "RateLimiter",
    "RateLimiterStatistics",
    "RateStore",
    "Reservation",
    "WouldBlock",
]

_NS = 1_000_000_000
_MINUTE_NS = 60 * _NS

logger = logging.getLogger("llmctx.limits")


# --------------------------------------------------------------------------- stores
@runtime_checkable
class RateStore(Protocol):
    """Where a limiter's GCRA state lives. Calls are made with the limiter's lock held.

    Times are integer nanoseconds; ``now`` comes from the limiter's clock (a shared store may
    use its own clock instead). ``interval_*`` are nanoseconds per request / per token (0: that
    dimension is unlimited); ``tolerance`` is the burst tolerance in nanoseconds.
    """

    def try_acquire(
        self, interval_req: int, interval_tok: int, tolerance: int, tokens: int, now: int
    ) -> int:
        """Admit one request of ``tokens`` tokens if both dimensions allow it now.

        Returns:
            0 if admitted (both dimensions committed), else nanoseconds to wait (nothing
            committed).
        """

    def adjust(self, req_delta: int, tok_delta: int, now: int) -> None:
        """Move the schedules by signed amounts, in nanoseconds (negative: refund)."""

    def push_back(self, req_until: int | None, tok_until: int | None, now: int) -> None:
        """Make each TAT at least the given value (None: leave that dimension alone)."""

    def state(self, now: int) -> tuple[int, int, int]:
        """``(tat_requests, tat_tokens, now)``, ``now`` in the store's own clock."""


class _MemoryStore:
    """GCRA state in this process (protected by the limiter's lock).

    It knows its limiter's intervals, clock and admission count, so the limiter's admission
    step is :meth:`admit` itself (one call, passing only the tokens); :meth:`try_acquire` is
    the :class:`RateStore` form of the same step.
    """

    __slots__ = ("admits", "clock", "i_req", "i_tok", "lag_req", "tat_req", "tat_tok", "tol")

    def __init__(
        self,
        interval_req: int,
        interval_tok: int,
        tolerance: int,
        clock: Callable[[], int],
        admits: Iterator[int],
    ) -> None:
        self.i_req = interval_req
        self.i_tok = interval_tok
        self.tol = tolerance
        # min(I, tau) - tau (<= 0): a request's wait is TAT + this - now.
        self.lag_req = (interval_req if interval_req < tolerance else tolerance) - tolerance
        self.clock = clock
        # The limiter's count of admissions: one next() per request admitted.
        self.admits = admits
        # Starting far in the past means the bucket starts full.
        self.tat_req = -(1 << 62)
        self.tat_tok = -(1 << 62)

    def admit(self, tokens: int, now: int | None = None) -> int:
        """Admit one request of ``tokens`` if both dimensions allow it at ``now`` (see try_acquire).

        Args:
            tokens: the request's tokens.
            now: the time, integer nanoseconds; None: the limiter's clock now.

        Returns:
            0 when admitted (and counted), else nanoseconds until it would fit.
        """
        if now is None:
            now = self.clock()
        # Written for the common case, a dimension whose TAT is not ahead of now (its bucket
        # is full): it fits with one comparison, and only a TAT ahead of now computes a wait
        # (these are multi-digit ints: each operation allocates). No min()/max() calls.
        tat = self.tat_req
        if tat > now:
            base_req = tat
            delay = tat + self.lag_req - now
        else:
            base_req = now
            delay = 0
        interval_tok = self.i_tok
        if interval_tok:
            cost = tokens * interval_tok
            tat = self.tat_tok
            if tat > now:
                base_tok = tat
                tolerance = self.tol
                step = cost if cost < tolerance else tolerance
                wait_tok = tat + step - tolerance - now
                if wait_tok > delay:
                    delay = wait_tok
            else:
                # A full bucket takes any request, one larger than the burst too (its excess
                # becomes debt that later requests wait out).
                base_tok = now
            if delay > 0:
                return delay
            self.tat_tok = base_tok + cost
        elif delay > 0:
            return delay
        self.tat_req = base_req + self.i_req
        next(self.admits)
        return 0

    def try_acquire(
        self, interval_req: int, interval_tok: int, tolerance: int, tokens: int, now: int
    ) -> int:
        if (interval_req, interval_tok, tolerance) != (self.i_req, self.i_tok, self.tol):
            raise ValueError("this store holds the state of a limiter with other limits")
        return self.admit(tokens, now)

    def adjust(self, req_delta: int, tok_delta: int, now: int) -> None:
        self.tat_req += req_delta
        self.tat_tok += tok_delta

    def push_back(self, req_until: int | None, tok_until: int | None, now: int) -> None:
        if req_until is not None and req_until > self.tat_req:
            self.tat_req = req_until
        if tok_until is not None and tok_until > self.tat_tok:
            self.tat_tok = tok_until

    def state(self, now: int) -> tuple[int, int, int]:
        return self.tat_req, self.tat_tok, now


# --------------------------------------------------------------------------- limiter
@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A rate limiter's state at one moment.

    Attributes:
        rpm: requests per minute (None: unlimited).
        tpm: tokens per minute (None: unlimited).
        burst: seconds of unused capacity the bucket can save up.
        available_requests: requests that could be admitted at once right now.
        available_tokens: tokens that could be admitted at once right now (None without tpm).
        waiting: callers queued.
        in_flight: reservations admitted and not yet settled or released.
        admitted: reservations admitted since creation.
        timeouts: callers that gave up because of their timeout.
        cancellations: callers cancelled (or interrupted) while queued.
    """

    rpm: float | None
    tpm: float | None
    burst: float
    available_requests: float
    available_tokens: float | None
    waiting: int
    in_flight: int
    admitted: int
    timeouts: int
    cancellations: int


_PENDING = 0
_OPEN = 1
_KEPT = 2  # closed with the estimate charged
_SETTLED = 3
_RELEASED = 4


class Reservation:
    """Capacity a caller holds for one request: one request and an estimate of tokens.

    Settle it with the actual tokens once the response is known (the difference is refunded,
    or becomes debt that later callers wait out), or release it if the request was never sent
    (everything is given back). The first of :meth:`settle` / :meth:`release` wins; later calls
    are no-ops, so ``release()`` in a ``finally`` after ``settle()`` is safe. A reservation
    that is neither settled nor released keeps its estimate charged.

    :meth:`RateLimiter.acquire` returns a reservation that is not admitted yet: entering it
    (``with`` / ``async with``, once) waits for admission and returns the reservation itself;
    leaving the block closes it with the estimate charged unless it was settled or released.
    ``async with`` is always a cancellation point and, one time in 64, a scheduling point (see
    :meth:`RateLimiter.areserve`).
    """

    __slots__ = ("_actual", "_limiter", "_state", "_timeout", "tokens")
    _limiter: RateLimiter
    _state: int
    _timeout: float | None
    # Set by settle() only: one attribute less per acquire.
    _actual: int
    #: The tokens reserved (the estimate).
    tokens: int

    # Built by RateLimiter.acquire only (which sets every field): a class call that runs no
    # Python __init__ costs a third of what object.__new__(Reservation) does.
    __init__ = object.__init__

    @property
    def actual_tokens(self) -> int | None:
        """The tokens settled, once :meth:`settle` was called (else None)."""
        return self._actual if self._state == _SETTLED else None

    @property
    def open(self) -> bool:
        """True from admission until :meth:`settle` or :meth:`release` is called."""
        return self._state == _OPEN

    @protected
    def settle(self, actual_tokens: int) -> None:
        """Replace the estimate by the tokens the request actually used.

        Args:
            actual_tokens: input + output tokens reported by the provider (>= 0).

        Raises:
            ConfigError: a negative or non-integer count.
            UsageError: the reservation was not admitted yet (enter ``acquire()`` first).
        """
        actual = actual_tokens
        if actual.__class__ is not int or actual < 0:
            actual = _check_tokens(actual_tokens, "settle(actual_tokens=...)")
        if self._state != _OPEN:
            if self._state == _PENDING:
                raise UsageError(
                    "settle() on a reservation that was not admitted: use it in `with` / "
                    "`async with limiter.acquire(...)` first"
                )
            return
        self._actual = actual
        self._state = _SETTLED
        self._limiter._settle(actual - self.tokens, False)

    @protected
    def release(self) -> None:
        """Give the whole reservation back: the request was not sent. No-op once closed."""
        if self._state != _OPEN:
            return
        self._state = _RELEASED
        self._limiter._settle(-self.tokens, True)

    def _check_pending(self) -> None:
        if self._state != _PENDING:
            raise UsageError(
                "this reservation was already admitted; call limiter.acquire() again for "
                "another request"
            )

    @protected
    def __enter__(self) -> Reservation:
        self._check_pending()
        self._limiter._admit_sync(self, self._timeout)
        return self

    @protected
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__aexit__(exc_type, exc, tb)

    @protected
    def __aenter__(self) -> Awaitable[Reservation]:
        # A plain method: an admission made at once is made in the call, and the awaitable
        # returned only hands the reservation over (one time in 64, after a yield). The full
        # coroutine is for a task that may have a cancellation pending (or runs on a loop not
        # remembered for this thread yet) and for one that must wait.
        if self._state != _PENDING:
            self._check_pending()
        limiter = self._limiter
        state = _fast_checkpoint()
        if state is None:
            return limiter._admit_async(self, self._timeout, None)
        # The admission at once, in this frame: one lock round around the one admission
        # step (no queue: nobody barges), without _enqueue's call. Refused, _enqueue tries
        # again under the lock and queues.
        lock = limiter._lock
        lock.acquire()  # not `with`: see RateLimiter._enqueue
        try:
            admitted = not limiter._queue and limiter._admit(self.tokens) <= 0
        finally:
            lock.release()
        if not admitted:
            waiter = limiter._enqueue(self.tokens, state.loop, self._timeout)
            if waiter is not None:
                return limiter._admit_async(self, self._timeout, waiter)
        self._state = _OPEN
        n = state.since_yield + 1
        if n < _YIELD_EVERY:
            state.since_yield = n
            return _granted(self)
        state.since_yield = 0
        return limiter._checkpoint_granted(self)

    @protected
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # A plain method: the call itself closes the reservation (see _waiting._Done), and
        # the one way a block's exit closes it, sync too: with the estimate charged, which
        # moves nothing, so it is only counted (see RateLimiter._settle): no lock.
        if self._state == _OPEN:
            self._state = _KEPT
            next(self._limiter._closes)
        return _DONE

    def __repr__(self) -> str:
        state = {
            _PENDING: "pending",
            _OPEN: "open",
            _KEPT: "closed",
            _RELEASED: "released",
        }.get(self._state, f"settled({self.actual_tokens})")
        return f"<Reservation tokens={self.tokens} {state}>"


def _check_tokens(tokens: Any, what: str) -> int:
    if tokens.__class__ is int and tokens >= 0:  # the common case, checked cheaply
        return int(tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise ConfigError(f"{what} must be a whole number of tokens >= 0, got {tokens!r}")
    if tokens < 0:
        raise ConfigError(f"{what} is negative ({tokens}); token counts are >= 0")
    return tokens


def _check_rate(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"RateLimiter({name}={value!r}) must be a positive number per minute")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"RateLimiter({name}={value!r}) must be a finite number > 0; "
            f"leave {name}=None for no {name} limit"
        )
    # The limiter keeps one integer nanosecond interval per unit: it must be at least 1 ns
    # and fit in 62 bits (a rate so slow would overflow; one so fast could not be told
    # apart from no limit).
    interval = _MINUTE_NS / value
    if not 1 <= interval <= _MAX_INTERVAL_NS:
        raise ConfigError(
            f"RateLimiter({name}={value!r}) is out of range: use a rate between "
            f"{_MINUTE_NS / _MAX_INTERVAL_NS:.3g} and {_MINUTE_NS:.3g} per minute, or "
            f"{name}=None for no {name} limit"
        )
    return float(value)


_MAX_INTERVAL_NS = 2**62


def _admission(
    try_admit: Callable[[int, int], int], clock: Callable[[], int], admits: Iterator[int]
) -> Callable[[int], int]:
    """A shared store's admission step (``RateLimiter._admit``): its GCRA step, counted.

    (The memory store's :meth:`_MemoryStore.admit` is that step itself.)

    Args:
        try_admit: ``try_admit(tokens, now)``, the store's step with the limiter's limits.
        clock: the limiter's clock, in integer nanoseconds.
        admits: the limiter's count of admissions (one atomic ``next()`` each).

    Returns:
        ``admit(tokens)``: 0 (or less) when admitted, else nanoseconds until it would fit;
        called with the limiter's lock held.
    """

    def admit(tokens: int) -> int:
        delay = try_admit(tokens, clock())
        if delay <= 0:
            next(admits)
        return delay

    return admit


class RateLimiter(_FifoQueue[_Waiter]):
    """Requests-per-minute and tokens-per-minute limits with exact waits, for threads and loops.

    Usage::

        limiter = llmctx.RateLimiter(rpm=500, tpm=200_000)
        async with limiter.acquire(tokens=estimate) as r:     # or `with` in a thread
            response = await client.chat.completions.create(...)
            r.settle(response.usage.total_tokens)

    Interface for instrumented clients (the provider code calls exactly these):

    - ``reserve(tokens, *, timeout=None) -> Reservation``: block the thread until admitted.
    - ``await areserve(tokens, *, timeout=None) -> Reservation``: the same in asyncio.
    - ``acquire_nowait(tokens) -> Reservation``: admit now or raise :class:`WouldBlock`.
    - ``Reservation.settle(actual_tokens)`` after the response; ``Reservation.release()`` when
      the request was never sent. One of the two, once; the other becomes a no-op.
    - ``feedback(retry_after=..., remaining_requests=..., remaining_tokens=...)`` with what the
      provider's response headers said.

    Each admission takes one request and ``tokens`` tokens together (both dimensions or
    neither). Callers are admitted in FIFO order: the head of the queue is admitted by whoever
    makes room (a release, a refund, or a timer at the exact instant the bucket has refilled
    enough) and only then woken. The object can be built outside an event loop and used from
    several threads and event loops at once.

    Args:
        rpm: requests per minute, or None for no request limit.
        tpm: tokens per minute, or None for no token limit.
        burst: how many seconds of unused capacity the bucket saves up, i.e. how much may be
            sent at once after a quiet period (default 1.0: one second's worth of each
            limit). Larger bursts admit more at once; the long-run rate is unchanged.
        store: where the state lives; in this process by default, or a
            :class:`~llmctx.RedisRateStore` to share one limit between processes.
        clock: seconds as a float (``time.monotonic`` by default); inject a fake clock in
            tests. It drives the rate schedule only; timeouts always use real time.

    Raises:
        ConfigError: rpm/tpm not > 0, both None, or burst not > 0.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        burst: float | None = None,
        store: RateStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.rpm = _check_rate("rpm", rpm)
        self.tpm = _check_rate("tpm", tpm)
        if self.rpm is None and self.tpm is None:
            raise ConfigError("RateLimiter needs a limit: pass rpm=..., tpm=..., or both")
        if burst is None:
            burst = 1.0
        if isinstance(burst, bool) or not isinstance(burst, int | float):
            raise ConfigError(f"RateLimiter(burst={burst!r}) must be a number of seconds > 0")
        if not math.isfinite(burst) or burst <= 0:
            raise ConfigError(
                f"RateLimiter(burst={burst!r}) must be a finite number of seconds > 0"
            )
        self.burst = float(burst)
        self._tolerance = round(self.burst * _NS)
        # Rounding to whole nanoseconds per unit keeps the state one exact integer; the rate
        # error this adds is below 1e-4 for any realistic limit.
        self._i_req = round(_MINUTE_NS / self.rpm) if self.rpm is not None else 0
        self._i_tok = max(1, round(_MINUTE_NS / self.tpm)) if self.tpm is not None else 0
        self._clock: Callable[[], int]
        if clock is None:
            self._clock = time.monotonic_ns
        else:
            user_clock = clock
            self._clock = lambda: int(user_clock() * _NS)
        self._init_queue()
        # Reservations admitted and closed (settled, released or kept) since creation: each
        # takes one number (an atomic next(), so a close needs no lock); statistics() reads
        # how many were taken, and takes off the admissions given back (_unadmitted).
        self._admits = _numbers()
        self._closes = _numbers()
        self._unadmitted = 0
        self._store: RateStore
        # _admit(n), with the lock held: admit one request of n tokens now if it fits. The
        # one place a request is admitted (an acquire at once, a queued head, a nowait): the
        # memory store's own step, or a shared store's step with this limiter's limits, timed
        # by its clock and counted.
        self._admit: Callable[[int], int]
        if store is None:
            memory = _MemoryStore(
                self._i_req, self._i_tok, self._tolerance, self._clock, self._admits
            )
            self._store = memory
            self._admit = memory.admit
        else:
            self._store = store
            self._admit = _admission(
                functools.partial(store.try_acquire, self._i_req, self._i_tok, self._tolerance),
                self._clock,
                self._admits,
            )

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.rpm!r}, tpm={self.tpm!r}, burst={self.burst!r})"

    # ------------------------------------------------------------------ public API
    def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Reservation:
        """Wait for one request and ``tokens`` tokens; use with ``with`` or ``async with``.

        Args:
            tokens: the estimated tokens of the request (input + max output).
            timeout: seconds to wait at most (None: as long as needed; 0: do not wait).

        Returns:
            A :class:`Reservation` not admitted yet; entering it (once) waits for admission
            and returns it. Settle it with the actual tokens inside the block; leaving the
            block with it still open keeps the estimate charged (on an error too: the request
            may have reached the provider).

        Raises:
            AcquireTimeout: (on entering) not admitted within ``timeout``; nothing was taken.
            ConfigError: negative tokens or timeout.

        Entered with ``async with``, it behaves as :meth:`areserve` on cancellation and
        scheduling. A caller cancelled (or interrupted) while waiting leaves the queue and
        takes nothing; one cancelled just after admission gives the reservation back.
        """
        if timeout is not None:
            timeout = _check_timeout(timeout)
        if tokens.__class__ is not int or tokens < 0:
            tokens = _check_tokens(tokens, "tokens")
        # The one place a reservation is built (it has no __init__ of its own: see there).
        reservation: Reservation = Reservation()
        reservation._limiter = self
        reservation._state = _PENDING
        reservation._timeout = timeout
        reservation.tokens = tokens
        return reservation

    @protected
    def acquire_nowait(self, tokens: int = 0) -> Reservation:
        """Admit one request of ``tokens`` tokens now, or raise without taking anything.

        Raises:
            WouldBlock: it does not fit now or others are queued; ``retry_after`` says when it
                would fit if nothing else changes.
            ConfigError: negative tokens.
        """
        n = _check_tokens(tokens, "tokens")
        with self._lock:
            if self._queue:
                raise WouldBlock(
                    f"{len(self._queue)} caller(s) are queued first; use acquire() to wait"
                )
            delay = self._admit(n)
            if delay <= 0:
                reservation = self.acquire(n)
                reservation._state = _OPEN
                return reservation
        raise WouldBlock(
            f"rate limit reached ({self._describe()}); retry in {delay / _NS:.3f} s "
            "or use acquire() to wait",
            retry_after=delay / _NS,
        )

    @protected
    def reserve(self, tokens: int = 0, *, timeout: float | None = None) -> Reservation:
        """Block this thread until one request of ``tokens`` tokens is admitted.

        Args:
            tokens: the estimated tokens (input + max output).
            timeout: seconds to wait at most (None: as long as needed; 0: do not wait).

        Returns:
            The reservation; settle or release it when the request is done.

        Raises:
            AcquireTimeout: not admitted within ``timeout``; nothing was taken.
            ConfigError: negative tokens or timeout.

        An interrupt (KeyboardInterrupt) while waiting leaves the queue and takes nothing.
        """
        reservation = self.acquire(tokens, timeout=timeout)
        self._admit_sync(reservation, reservation._timeout)
        return reservation

    # The timeout parameter mirrors reserve() and lets the limiter count timeouts itself.
    @protected
    async def areserve(
        self,
        tokens: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Reservation:
        """Wait in asyncio until one request of ``tokens`` tokens is admitted.

        Args:
            tokens: the estimated tokens (input + max output).
            timeout: seconds to wait at most (None: as long as needed; 0: do not wait).

        Returns:
            The reservation; settle or release it when the request is done.

        Raises:
            AcquireTimeout: not admitted within ``timeout``; nothing was taken.
            ConfigError: negative tokens or timeout.

        It is always a cancellation point: a task whose cancellation is already requested
        (``Task.cancel()``, or a cancelled anyio cancel scope) raises it at once, before
        anything is taken, admitted at once or not. It is a scheduling point in turn: one
        admission in 64 made at once on a loop lets the loop's other tasks run before it
        returns, so a loop of uncontended acquires never keeps them waiting longer than 64
        acquires; one that queues lets them run while it waits. Cancelled while waiting or on
        that yield: the task takes nothing (a reservation admitted for it is given back), and
        the next waiter gets its turn.
        """
        reservation = self.acquire(tokens, timeout=timeout)
        await self._admit_async(reservation, reservation._timeout, None)
        return reservation

    @protected
    def feedback(
        self,
        *,
        retry_after: float | None = None,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
    ) -> None:
        """Push the schedule back with what the provider said; it never brings it forward.

        Args:
            retry_after: seconds from a ``Retry-After`` header (or a 429 body): no request is
                admitted before then, and capacity refills at the configured rate from then.
            remaining_requests: ``x-ratelimit-remaining-requests``: at most this many
                requests may go out at once from now on.
            remaining_tokens: ``x-ratelimit-remaining-tokens``: likewise for tokens.

        Raises:
            ConfigError: a negative value.
        """
        for label, value in (
            ("retry_after", retry_after),
            ("remaining_requests", remaining_requests),
            ("remaining_tokens", remaining_tokens),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            ):
                raise ConfigError(f"feedback({label}={value!r}) must be a number >= 0")
        tol = self._tolerance
        with self._lock:
            now = self._clock()
            req_until: int | None = None
            tok_until: int | None = None
            if retry_after is not None:
                at = now + round(retry_after * _NS)
                # Leave exactly one request's room at `at`, so the first caller goes then.
                req_until = at + tol - min(self._i_req, tol)
                tok_until = at + tol if self._i_tok else None
            if remaining_requests is not None and self._i_req:
                # A bucket holding r requests has TAT = now + tol - r * I.
                t = now + tol - min(round(remaining_requests * self._i_req), tol)
                req_until = t if req_until is None else max(req_until, t)
            if remaining_tokens is not None and self._i_tok:
                t = now + tol - min(round(remaining_tokens * self._i_tok), tol)
                tok_until = t if tok_until is None else max(tok_until, t)
            if req_until is not None and not self._i_req:
                req_until = None
            if req_until is not None or tok_until is not None:
                self._store.push_back(req_until, tok_until, now)
                # A waiting head's timer was set for the old schedule; it re-plans when it
                # fires, so nothing is admitted early.

    def statistics(self) -> RateLimiterStatistics:
        """A snapshot of the limiter's state and counters."""
        with self._lock:
            tat_req, tat_tok, now = self._store.state(self._clock())
            waiting = len(self._queue)
            admitted = _handed_out(self._admits) - self._unadmitted
            closed = _handed_out(self._closes)
            in_flight = admitted - closed
            timeouts = self._timeouts
            cancellations = self._cancellations
        tol = self._tolerance

        def level(tat: int, interval: int) -> float:
            return max(0, tol - max(0, tat - now)) / interval

        return RateLimiterStatistics(
            rpm=self.rpm,
            tpm=self.tpm,
            burst=self.burst,
            available_requests=level(tat_req, self._i_req) if self._i_req else math.inf,
            available_tokens=level(tat_tok, self._i_tok) if self._i_tok else None,
            waiting=waiting,
            in_flight=in_flight,
            admitted=admitted,
            timeouts=timeouts,
            cancellations=cancellations,
        )

    # ------------------------------------------------------------------ internals
    def _describe(self) -> str:
        parts = []
        if self.rpm is not None:
            parts.append(f"rpm={self.rpm:g}")
        if self.tpm is not None:
            parts.append(f"tpm={self.tpm:g}")
        return ", ".join(parts)

    def _timeout_error(self, n: int) -> AcquireTimeout:
        return AcquireTimeout(
            f"not admitted by the rate limiter ({self._describe()}) within the timeout "
            f"({n} tokens requested); nothing was taken. Raise the timeout or the limits"
        )

    @protected
    def _enqueue(
        self, n: int, loop: asyncio.AbstractEventLoop | None, timeout: float | None
    ) -> _Waiter | None:
        """Admit at once (None) or queue a waiter; the fast path takes the lock once.

        ``loop``: the running event loop of an asyncio caller (its waiter wakes there), None
        for a thread.
        """
        lock = self._lock
        # Not `with`: half the cost on CPython 3.11. This frame is protected, so an interrupt
        # cannot land between the acquire and the `try` (the deferring handler puts it off).
        lock.acquire()
        try:
            queue = self._queue
            delay = 0
            if not queue:
                delay = self._admit(n)
                if delay <= 0:
                    return None
            if timeout == 0:
                self._timeouts += 1
                raise AcquireTimeout(
                    f"rate limit reached ({self._describe()}) and timeout=0; nothing was taken"
                )
            waiter = _Waiter(n, loop, self)
            queue.append(waiter)
            if delay > 0:
                waiter.schedule(delay / _NS)  # it is the head: come back when it fits
            return waiter
        finally:
            lock.release()

    @protected
    def _admit_sync(self, reservation: Reservation, timeout: float | None) -> None:
        waiter = self._enqueue(reservation.tokens, None, timeout)
        if waiter is not None:
            self._wait_sync(waiter, None if timeout is None else time.monotonic() + timeout)
        reservation._state = _OPEN

    @protected
    async def _admit_async(
        self, reservation: Reservation, wait_for: float | None, waiter: _Waiter | None
    ) -> Reservation:
        """The async acquire's full path: check, queue, wait.

        Args:
            reservation: the reservation to admit.
            wait_for: the caller's timeout.
            waiter: the fast path queued it already as this waiter (no cancellation was
                pending), or None.
        """
        if waiter is None:
            loop = _running_loop()
            if _cancel_pending(loop):
                # checkpoint_if_cancelled: the pending cancellation lands here, nothing taken.
                await _yield_now()
            waiter = self._enqueue(reservation.tokens, loop, wait_for)
        if waiter is None:
            if _yield_due():
                await self._checkpoint_granted(reservation)
        else:
            deadline = None if wait_for is None else time.monotonic() + wait_for
            await self._wait_async(waiter, deadline)
        reservation._state = _OPEN
        return reservation

    @protected
    def _dispatch(self) -> None:
        """With the lock held: admit waiters from the head while they fit, then wake them.

        The head that does not fit gets a timer for the exact instant it will; nobody is
        woken to re-check.
        """
        queue = self._queue
        while queue:
            waiter = queue[0]
            try:
                delay = self._admit(waiter.amount)
            except Exception as exc:  # e.g. Redis is down: the head raises it, not the releaser
                self._fail_head(exc)
                return
            if delay > 0:
                waiter.schedule(delay / _NS)
                return
            queue.popleft()
            waiter._grant = True
            if not waiter.wake():
                # Its event loop is closed, so it can never run: give the admission back.
                waiter._grant = None
                self._undo_admission(waiter.amount)
                self._cancellations += 1

    def _undo_admission(self, n: int) -> None:
        self._unadmitted += 1
        self._store.adjust(-self._i_req, -n * self._i_tok, self._clock())

    @protected
    def _take_back(self, grant: object) -> None:
        """With the lock held: a caller admitted and then cancelled sent nothing: refund it.

        ``grant`` is its queued :class:`_Waiter`, or its :class:`Reservation` when it was
        admitted at once and cancelled at the checkpoint after.
        """
        if isinstance(grant, Reservation):
            n = grant.tokens
            grant._state = _RELEASED  # the caller never got it (admitted at once, then cancelled)
        else:
            n = cast(_Waiter, grant).amount
        try:
            self._undo_admission(n)
        except Exception:  # the refund is lost; the limit errs on the safe side
            logger.warning("llmctx: could not give back a rate limit admission", exc_info=True)

    @protected
    def _settle(self, tok_delta: int, refund_request: bool) -> None:
        """Close one admitted reservation: the one place a reservation ends.

        Args:
            tok_delta: tokens to add to the schedule (negative: a refund of the estimate).
            refund_request: give the request back too (the request was never sent).

        A refund may let the head of the queue in earlier than planned: it is tried at once.
        Closing with nothing to move (the estimate kept) takes no lock.
        """
        next(self._closes)
        req_delta = -self._i_req if refund_request else 0
        tok_ns = tok_delta * self._i_tok
        if not (req_delta or tok_ns):
            return
        lock = self._lock
        lock.acquire()  # not `with`: see _enqueue
        try:
            self._store.adjust(req_delta, tok_ns, self._clock())
            if (req_delta < 0 or tok_ns < 0) and self._queue:
                self._dispatch()
        finally:
            lock.release()
