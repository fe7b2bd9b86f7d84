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
``threading.Lock`` and each waiter carries its own wake-up (a ``threading.Event`` for threads, a
future woken with ``call_soon_threadsafe`` for asyncio tasks), so one limiter serves threads and
several event loops at once.

The state can live in Redis (:class:`RedisRateStore`) so that many processes share one limit;
the FIFO queue stays per process.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from ._exceptions import ConfigError, LLMCtxError

__all__ = [
    "AcquireTimeout",
    "RateLimiter",
    "RateLimiterStatistics",
    "RateStore",
    "RedisRateStore",
    "Reservation",
    "WouldBlock",
]

_NS = 1_000_000_000
_MINUTE_NS = 60 * _NS


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


# --------------------------------------------------------------------------- waiters
def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Waiter:
    """One queued caller and the way to wake it from any thread.

    ``arm()`` is called with the owner's lock held, before the state is checked, so a wake-up
    that happens between the check and the wait is never lost.
    """

    __slots__ = ("amount", "fut", "grant", "loop", "thread_event", "thread_id")

    def __init__(self, amount: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self.amount = amount
        # Set by a pool when it hands capacity to this waiter.
        self.grant: Any = None
        self.loop = loop
        self.thread_id = threading.get_ident()
        self.fut: asyncio.Future[None] | None = None
        self.thread_event: threading.Event | None = None
        if loop is None:
            self.thread_event = threading.Event()
        else:
            self.fut = loop.create_future()

    def arm(self) -> None:
        if self.loop is None:
            assert self.thread_event is not None
            self.thread_event.clear()
        elif self.fut is None or self.fut.done():
            self.fut = self.loop.create_future()

    def wake(self) -> bool:
        """Wake the waiter; False if its event loop is closed (it can never run again)."""
        if self.loop is None:
            assert self.thread_event is not None
            self.thread_event.set()
            return True
        fut = self.fut
        assert fut is not None
        if threading.get_ident() == self.thread_id:
            _resolve(fut)
            return True
        try:
            self.loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def wait_sync(self, timeout: float | None) -> None:
        assert self.thread_event is not None
        self.thread_event.wait(timeout)

    async def wait_async(self, delay: float | None) -> None:
        fut = self.fut
        loop = self.loop
        assert fut is not None
        assert loop is not None
        if delay is None:
            await fut
            return
        handle = loop.call_later(delay, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()


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
    """GCRA state in this process (protected by the limiter's lock)."""

    __slots__ = ("tat_req", "tat_tok")

    def __init__(self) -> None:
        # Starting far in the past means the bucket starts full.
        self.tat_req = -(1 << 62)
        self.tat_tok = -(1 << 62)

    def try_acquire(
        self, interval_req: int, interval_tok: int, tolerance: int, tokens: int, now: int
    ) -> int:
        base_req = self.tat_req if self.tat_req > now else now
        delay = base_req + min(interval_req, tolerance) - tolerance - now
        base_tok = now
        if interval_tok:
            base_tok = self.tat_tok if self.tat_tok > now else now
            cost = tokens * interval_tok
            delay = max(delay, base_tok + min(cost, tolerance) - tolerance - now)
        if delay > 0:
            return delay
        self.tat_req = base_req + interval_req
        if interval_tok:
            self.tat_tok = base_tok + tokens * interval_tok
        return 0

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


# Times in the script are microseconds (Lua numbers are doubles: nanoseconds since the epoch
# would lose precision). KEYS[1]: the state hash. ARGV: op, interval_req_us, interval_tok_us,
# tolerance_us, tokens / deltas, ttl_ms. Returns the delay in microseconds (0: admitted).
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op = ARGV[1]
local ireq = tonumber(ARGV[2])
local itok = tonumber(ARGV[3])
local tol = tonumber(ARGV[4])
local ttl = tonumber(ARGV[7])
local v = redis.call('HMGET', KEYS[1], 'req', 'tok')
local treq = tonumber(v[1]) or now
local ttok = tonumber(v[2]) or now
if op == 'state' then
  return {tostring(treq), tostring(ttok), tostring(now)}
end
if op == 'acquire' then
  local tokens = tonumber(ARGV[5])
  local breq = math.max(treq, now)
  local delay = breq + math.min(ireq, tol) - tol - now
  local btok = math.max(ttok, now)
  if itok > 0 then
    delay = math.max(delay, btok + math.min(tokens * itok, tol) - tol - now)
  end
  if delay > 0 then
    return math.ceil(delay)
  end
  treq = breq + ireq
  if itok > 0 then ttok = btok + tokens * itok end
elseif op == 'adjust' then
  treq = treq + tonumber(ARGV[5])
  ttok = ttok + tonumber(ARGV[6])
elseif op == 'push' then
  if ARGV[5] ~= '' then treq = math.max(treq, now + tonumber(ARGV[5])) end
  if ARGV[6] ~= '' then ttok = math.max(ttok, now + tonumber(ARGV[6])) end
end
redis.call('HSET', KEYS[1], 'req', string.format('%.3f', treq), 'tok', string.format('%.3f', ttok))
local horizon = math.max(treq, ttok) - now
if horizon < 0 then horizon = 0 end
redis.call('PEXPIRE', KEYS[1], math.ceil(horizon / 1000) + ttl)
return 0
"""


class RedisRateStore:
    """Rate-limiter state in Redis, so many processes and machines share one limit.

    Every operation is one ``EVALSHA`` round trip of a Lua script (redis-py's
    ``register_script`` reloads it after a ``NOSCRIPT`` error). The script reads Redis's own
    ``TIME``, so the machines' clocks do not need to agree. The key is hash-tagged
    (``{llmctx:rl:NAME}:gcra``) so it works on Redis Cluster, and it expires once the bucket
    has refilled (plus ``ttl`` seconds), so idle limiters leave nothing behind.

    Every limiter sharing a name must use the same ``rpm``, ``tpm`` and ``burst``. FIFO order
    holds among the waiters of one process; across processes, whoever asks first once
    capacity is back goes first.

    Args:
        client: a synchronous ``redis.Redis`` client (``decode_responses`` either way).
        name: the shared limit's name, e.g. ``"openai-gpt-4o"``.
        ttl: seconds a full, idle bucket's key stays before it expires (default 60).

    Raises:
        ConfigError: an empty name or a negative ttl.
    """

    def __init__(self, client: Any, name: str, *, ttl: float = 60.0) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("RedisRateStore(name=...) must be a non-empty string")
        if ttl < 0:
            raise ConfigError(f"RedisRateStore(ttl={ttl!r}) must be >= 0 seconds")
        self.client = client
        self.name = name
        self.key = f"{{llmctx:rl:{name}}}:gcra"
        self._ttl_ms = str(int(ttl * 1000))
        self._script = client.register_script(_LUA)

    def _run(self, *args: str) -> Any:
        return self._script(keys=[self.key], args=[*args, self._ttl_ms])

    @staticmethod
    def _us(ns: int) -> str:
        return repr(ns / 1000)

    def try_acquire(
        self, interval_req: int, interval_tok: int, tolerance: int, tokens: int, now: int
    ) -> int:
        delay_us = int(
            self._run(
                "acquire",
                self._us(interval_req),
                self._us(interval_tok),
                self._us(tolerance),
                str(tokens),
                "",
            )
        )
        return delay_us * 1000

    def adjust(self, req_delta: int, tok_delta: int, now: int) -> None:
        self._run("adjust", "0", "0", "0", self._us(req_delta), self._us(tok_delta))

    def push_back(self, req_until: int | None, tok_until: int | None, now: int) -> None:
        # The store's own clock decides, so pass offsets from "now", not absolute times.
        req = "" if req_until is None else self._us(req_until - now)
        tok = "" if tok_until is None else self._us(tok_until - now)
        self._run("push", "0", "0", "0", req, tok)

    def state(self, now: int) -> tuple[int, int, int]:
        treq, ttok, rnow = self._run("state", "0", "0", "0", "", "")
        return (
            int(float(treq) * 1000),
            int(float(ttok) * 1000),
            int(float(rnow) * 1000),
        )

    def clear(self) -> None:
        """Delete the shared state (the bucket starts full again)."""
        self.client.delete(self.key)


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


class Reservation:
    """Capacity a caller holds for one request: one request and an estimate of tokens.

    Settle it with the actual tokens once the response is known (the difference is refunded,
    or becomes debt that later callers wait out), or release it if the request was never sent
    (everything is given back). The first of :meth:`settle` / :meth:`release` wins; later calls
    are no-ops, so ``release()`` in a ``finally`` after ``settle()`` is safe. A reservation
    that is neither settled nor released keeps its estimate charged.
    """

    __slots__ = ("_done", "_limiter", "actual_tokens", "tokens")

    def __init__(self, limiter: RateLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._done = False
        #: The tokens reserved (the estimate).
        self.tokens = tokens
        #: The tokens settled, once :meth:`settle` was called.
        self.actual_tokens: int | None = None

    @property
    def open(self) -> bool:
        """True until :meth:`settle` or :meth:`release` is called."""
        return not self._done

    def settle(self, actual_tokens: int) -> None:
        """Replace the estimate by the tokens the request actually used.

        Args:
            actual_tokens: input + output tokens reported by the provider (>= 0).

        Raises:
            ConfigError: a negative or non-integer count.
        """
        actual = _check_tokens(actual_tokens, "settle(actual_tokens=...)")
        if self._done:
            return
        self._done = True
        self.actual_tokens = actual
        self._limiter._settle(self, actual - self.tokens, refund_request=False)

    def release(self) -> None:
        """Give the whole reservation back: the request was not sent."""
        if self._done:
            return
        self._done = True
        self._limiter._settle(self, -self.tokens, refund_request=True)

    def _keep_estimate(self) -> None:
        """Close the reservation with its estimate charged (leaving ``acquire()``'s block)."""
        if not self._done:
            self._done = True
            self._limiter._settle(self, 0, refund_request=False)

    def __repr__(self) -> str:
        state = "open" if not self._done else f"settled({self.actual_tokens})"
        if self._done and self.actual_tokens is None:
            state = "released"
        return f"<Reservation tokens={self.tokens} {state}>"


def _check_tokens(tokens: Any, what: str) -> int:
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
    return float(value)


class _Acquire:
    """What :meth:`RateLimiter.acquire` returns: a sync and async context manager."""

    __slots__ = ("_limiter", "_reservation", "_timeout", "_tokens")

    def __init__(self, limiter: RateLimiter, tokens: int, timeout: float | None) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self._timeout = timeout
        self._reservation: Reservation | None = None

    def __enter__(self) -> Reservation:
        self._reservation = self._limiter.reserve(self._tokens, timeout=self._timeout)
        return self._reservation

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reservation is not None:
            self._reservation._keep_estimate()
            self._reservation = None

    async def __aenter__(self) -> Reservation:
        self._reservation = await self._limiter.areserve(self._tokens, timeout=self._timeout)
        return self._reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reservation is not None:
            self._reservation._keep_estimate()
            self._reservation = None


class RateLimiter:
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
    neither). Callers are admitted in FIFO order. A request larger than the burst is admitted
    when the bucket is full; its excess is debt. The object can be built outside an event
    loop and used from several threads and event loops at once.

    Args:
        rpm: requests per minute, or None for no request limit.
        tpm: tokens per minute, or None for no token limit.
        burst: how many seconds of unused capacity the bucket saves up, i.e. how much may be
            sent at once after a quiet period (default 1.0: one second's worth of each
            limit). Larger bursts admit more at once; the long-run rate is unchanged.
        store: where the state lives; in this process by default, or a
            :class:`RedisRateStore` to share one limit between processes.
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
        self._store: RateStore = store if store is not None else _MemoryStore()
        self._clock: Callable[[], int]
        if clock is None:
            self._clock = time.monotonic_ns
        else:
            user_clock = clock
            self._clock = lambda: int(user_clock() * _NS)
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self._in_flight = 0
        self._admitted = 0
        self._timeouts = 0
        self._cancellations = 0

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self.rpm!r}, tpm={self.tpm!r}, burst={self.burst!r})"

    # ------------------------------------------------------------------ public API
    def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> _Acquire:
        """Wait for one request and ``tokens`` tokens; use with ``with`` or ``async with``.

        Args:
            tokens: the estimated tokens of the request (input + max output).
            timeout: seconds to wait at most (None: as long as needed; 0: do not wait).

        Returns:
            A context manager whose value is the :class:`Reservation`. Settle it with the
            actual tokens inside the block; leaving the block with it still open keeps the
            estimate charged (on an error too: the request may have reached the provider).

        Raises:
            AcquireTimeout: not admitted within ``timeout``; nothing was taken.
            ConfigError: negative tokens or timeout.

        A caller cancelled (or interrupted) while waiting leaves the queue and takes nothing.
        """
        return _Acquire(self, _check_tokens(tokens, "tokens"), _check_timeout(timeout))

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
            delay = self._store.try_acquire(
                self._i_req, self._i_tok, self._tolerance, n, self._clock()
            )
            if delay <= 0:
                self._admitted += 1
                self._in_flight += 1
                return Reservation(self, n)
        raise WouldBlock(
            f"rate limit reached ({self._describe()}); retry in {delay / _NS:.3f} s "
            "or use acquire() to wait",
            retry_after=delay / _NS,
        )

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
        n = _check_tokens(tokens, "tokens")
        wait_for = _check_timeout(timeout)
        deadline = None if wait_for is None else time.monotonic() + wait_for
        waiter = self._enqueue(n, None, wait_for)
        if isinstance(waiter, Reservation):
            return waiter
        done = False
        try:
            while True:
                with self._lock:
                    delay = self._try_head(waiter)
                    if delay == 0:
                        done = True
                        return Reservation(self, n)
                    waiter.arm()
                wait = self._wait_time(delay, deadline, n)
                waiter.wait_sync(wait)
        finally:
            if not done:
                self._leave(waiter, deadline)

    # The timeout parameter mirrors reserve() and lets the limiter count timeouts itself.
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

        Cancelled while waiting: the task leaves the queue, takes nothing, and the next
        waiter is woken if it is now at the head.
        """
        n = _check_tokens(tokens, "tokens")
        wait_for = _check_timeout(timeout)
        deadline = None if wait_for is None else time.monotonic() + wait_for
        waiter = self._enqueue(n, asyncio.get_running_loop(), wait_for)
        if isinstance(waiter, Reservation):
            return waiter
        done = False
        try:
            while True:
                with self._lock:
                    delay = self._try_head(waiter)
                    if delay == 0:
                        done = True
                        return Reservation(self, n)
                    waiter.arm()
                wait = self._wait_time(delay, deadline, n)
                await waiter.wait_async(wait)
        finally:
            if not done:
                self._leave(waiter, deadline)

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

    def statistics(self) -> RateLimiterStatistics:
        """A snapshot of the limiter's state and counters."""
        with self._lock:
            tat_req, tat_tok, now = self._store.state(self._clock())
            waiting = len(self._queue)
            in_flight = self._in_flight
            admitted = self._admitted
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

    def _enqueue(
        self, n: int, loop: asyncio.AbstractEventLoop | None, timeout: float | None
    ) -> Reservation | _Waiter:
        with self._lock:
            if not self._queue:
                delay = self._store.try_acquire(
                    self._i_req, self._i_tok, self._tolerance, n, self._clock()
                )
                if delay <= 0:
                    self._admitted += 1
                    self._in_flight += 1
                    return Reservation(self, n)
            if timeout == 0:
                self._timeouts += 1
                raise AcquireTimeout(
                    f"rate limit reached ({self._describe()}) and timeout=0; nothing was taken"
                )
            waiter = _Waiter(n, loop)
            self._queue.append(waiter)
            return waiter

    def _try_head(self, waiter: _Waiter) -> int | None:
        """With the lock held: admit ``waiter`` if it is at the head and fits (returns 0).

        Returns the nanoseconds the head must wait, or None when the waiter is not the head.
        """
        if self._queue[0] is not waiter:
            return None
        n = waiter.amount
        delay = self._store.try_acquire(self._i_req, self._i_tok, self._tolerance, n, self._clock())
        if delay > 0:
            return delay
        self._queue.popleft()
        self._admitted += 1
        self._in_flight += 1
        self._wake_head()
        return 0

    def _wait_time(self, delay: int | None, deadline: float | None, n: int) -> float | None:
        wait = None if delay is None else delay / _NS
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AcquireTimeout(
                    f"not admitted by the rate limiter ({self._describe()}) within the timeout "
                    f"({n} tokens requested); nothing was taken. Raise the timeout or the limits"
                )
            wait = remaining if wait is None else min(wait, remaining)
        return wait

    def _wake_head(self) -> None:
        """With the lock held: wake the head waiter so it re-checks; drop dead ones."""
        queue = self._queue
        while queue:
            if queue[0].wake():
                return
            queue.popleft()
            self._cancellations += 1

    def _leave(self, waiter: _Waiter, deadline: float | None) -> None:
        with self._lock:
            try:
                was_head = self._queue[0] is waiter
                self._queue.remove(waiter)
            except (IndexError, ValueError):
                return
            if deadline is not None and time.monotonic() >= deadline:
                self._timeouts += 1
            else:
                self._cancellations += 1
            if was_head:
                self._wake_head()

    def _settle(self, reservation: Reservation, tok_delta: int, *, refund_request: bool) -> None:
        req_delta = -self._i_req if refund_request else 0
        with self._lock:
            self._in_flight -= 1
            if req_delta or (tok_delta and self._i_tok):
                self._store.adjust(req_delta, tok_delta * self._i_tok, self._clock())
                if req_delta < 0 or tok_delta < 0:
                    # A refund may let the head in earlier than it planned.
                    self._wake_head()
