"""The charge path of one call: reserve -> rate limit -> request -> settle -> record.

One object, :class:`CallTracker` (made by :func:`track_call`), carries a call from request to
record. Provider instrumentation, the MCP hub and users' own clients all drive it::

    with llmctx.track_call(provider="acme", model="acme-large", request=payload,
                           input_tokens=812, max_output_tokens=256) as call:
        reply = send(payload)                        # only runs if every budget had room
        call.finish(usage=llmctx.Usage(input_tokens=..., output_tokens=..., requests=1),
                    response=reply.text)

Entering reserves the worst case (input + max output tokens, priced) on every budget from the
current session up to the root, atomically per budget and all-or-nothing across them, so a call
that would overspend raises :class:`BudgetExceeded` before anything is sent; then it waits for
the rate limiter, if one was given. ``finish`` settles both with the actual usage, prices it,
and hands the :class:`CallRecord` to its consumers (:class:`CallConsumer`): the session tree,
which writes it through to the store before ``finish`` returns, the active recorders, and
every consumer added with :func:`add_call_consumer` (exporters). An exception or cancellation
inside the block releases the reservations and records a failed (or cancelled) call; the
exception propagates unchanged. A refusal (a budget, an unknown price under a money budget, or
the rate limiter) holds nothing and leaves one trace, whichever refused: a record with status
``refused``, the reason in ``error``, no usage and no cost, written to the session's store only
(it is in no total, not in ``session.calls``, and recorders and added consumers, which take
calls that were sent, never see it). Cancellation or Ctrl-C while waiting records nothing.
A tracker that outlives its ``with`` block (a stream consumed later) is finished or failed
explicitly and still charges the session it started in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import anyio

from . import _pricing
from ._budget import Amount, Holds
from ._context import get_recorders, get_session
from ._exceptions import (
    BudgetOverrun,
    ConfigError,
    UnknownPrice,
    UnknownPriceWarning,
    UsageError,
    is_cancellation,
)
from ._interrupt import protected
from ._money import format_usd
from ._redact import redact, redact_text
from ._turns import take_turn
from ._usage import CallRecord, CallStatus, Usage
from .stores._base import outlive_cancel

if TYPE_CHECKING:
    from typing import Self

    from ._recorder import Recorder
    from ._session import Session

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "CallConsumer",
    "CallTrace",
    "CallTracer",
    "CallTracker",
    "LimiterLike",
    "ReservationLike",
    "add_call_consumer",
    "set_call_tracer",
    "track_call",
]

logger = logging.getLogger("llmctx")

#: Output tokens reserved for a model call that sets no output limit (a ``track_call`` without
#: ``max_output_tokens``, OpenAI without ``max_tokens``): reserving 0 would let any reply
#: overrun its budget. Pass the call's real limit to reserve exactly.
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4096

_ZERO = Decimal(0)
_NO_HOLDS = Holds()
# What a call with no budget reserved (an Amount is frozen, so one serves every call).
_NO_AMOUNT = Amount()
_warned_models: set[tuple[str | None, str | None]] = set()


# ---------------------------------------------------------------------------------------------
# What the tracker talks to: rate limiters, and the consumers of finished calls.


class ReservationLike(Protocol):
    """What a rate limiter's ``reserve`` returns (see :class:`llmctx.RateLimiter`)."""

    def settle(self, actual_tokens: int) -> None: ...

    def release(self) -> None: ...


@runtime_checkable
class LimiterLike(Protocol):
    """The rate-limiter interface the charge path uses (:class:`llmctx.RateLimiter` has it).

    ``reserve`` blocks a thread, ``areserve`` waits in asyncio; ``feedback`` (optional) takes
    what the provider's rate-limit headers said.
    """

    def reserve(self, tokens: int = 0) -> ReservationLike: ...

    async def areserve(self, tokens: int = 0) -> ReservationLike: ...


def _started_at(latency: float | None) -> datetime:
    """The wall-clock start of a call that took ``latency`` seconds and ends now."""
    # One float subtraction and one datetime, half the cost of now() - timedelta(...).
    return datetime.fromtimestamp(time.time() - latency if latency else time.time(), UTC)


@runtime_checkable
class CallConsumer(Protocol):
    """Anything that takes finished calls: a session, a recorder, an exporter.

    ``on_call_end`` runs once per finished (or failed) call, in the thread that ended it,
    before ``finish`` returns; keep it quick. An exception from an added consumer is logged on
    the ``llmctx`` logger and never reaches the user's call.
    """

    def on_call_end(self, record: CallRecord) -> None: ...


_consumers: tuple[CallConsumer, ...] = ()
_consumers_lock = threading.Lock()


def add_call_consumer(consumer: CallConsumer) -> Callable[[], None]:
    """Hand every call that ends in this process, in any session or none, to ``consumer``.

    Returns:
        A function that removes the consumer again (calling it twice is harmless).

    Raises:
        ConfigError: ``consumer`` has no ``on_call_end(record)`` method.
    """
    global _consumers
    if not callable(getattr(consumer, "on_call_end", None)):
        raise ConfigError(
            f"add_call_consumer() takes an object with an on_call_end(record) method, "
            f"got {type(consumer).__name__}"
        )
    with _consumers_lock:
        _consumers = (*_consumers, consumer)

    def remove() -> None:
        global _consumers
        with _consumers_lock:
            _consumers = tuple(c for c in _consumers if c is not consumer)

    return remove


class CallTrace(Protocol):
    """What a tracer keeps for one call from its start; told once how the call ended."""

    def on_call_end(self, record: CallRecord) -> None: ...

    def on_call_refused(self, exc: BaseException) -> None: ...


class CallTracer(Protocol):
    """Sees every call start (``llmctx.otel``): the parent span and start time are known only
    then, and a refused call never reaches the consumers of finished calls."""

    def on_call_start(self, call: CallTracker) -> CallTrace | None: ...


_tracer: CallTracer | None = None


def set_call_tracer(tracer: CallTracer | None) -> CallTracer | None:
    """Install the process's one call tracer (None removes it); returns the previous one.

    Its ``on_call_start(call)`` runs as each call starts, before the budgets are asked; the
    :class:`CallTrace` it returns gets the finished record, or the exception that refused
    the call. Errors from either are logged and never reach the user's call.
    """
    global _tracer
    previous, _tracer = _tracer, tracer
    return previous


# ---------------------------------------------------------------------------------------------
# Pricing helpers.


def _warn_unpriced(model: str | None, provider: str | None, note: str | None) -> None:
    key = (provider, model)
    if key in _warned_models:
        return
    _warned_models.add(key)
    # The pricing note already says how to set a price; say it once.
    reason = note or _pricing.unknown_reason(model or "?", provider)
    warnings.warn(
        f"llmctx: {reason}; its calls have cost None",
        UnknownPriceWarning,
        stacklevel=5,
    )


_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "requests",
)


def _check_usage(usage: Usage) -> None:
    # What a user passes to finish()/fail(); provider normalisers already make clean counts.
    if type(usage) is not Usage:
        raise ConfigError(
            f"finish(usage=...) takes llmctx.Usage, got {type(usage).__name__}; build one with "
            "llmctx.Usage(input_tokens=..., output_tokens=..., requests=1) or "
            "llmctx.normalize_usage(provider_usage)"
        )
    a, b, c = usage.input_tokens, usage.output_tokens, usage.cache_read_tokens
    d, e, f = usage.cache_write_tokens, usage.reasoning_tokens, usage.requests
    if (
        type(a) is int
        and type(b) is int
        and type(c) is int
        and type(d) is int
        and type(e) is int
        and type(f) is int
        and min(a, b, c, d, e, f) >= 0
    ):
        return  # the usual case, checked without a loop
    for name in _USAGE_FIELDS:
        value = getattr(usage, name)
        if type(value) is not int or value < 0:
            raise ConfigError(
                f"Usage({name}={value!r}) must be a whole number >= 0; the call is still "
                "reserved: finish it again with corrected usage, or leave its with-block to "
                "record it as failed and release the reservation"
            )


def _overrun(reserved: Amount, used: Amount, limited: frozenset[str]) -> str | None:
    # Only the dimensions a budget limits (an unlimited one reserves nothing to overrun), and
    # past a small slack: a prompt counted with the heuristic (no tokenizer for the model) may
    # come out a few tokens short of what the provider counts. The charge is in full either way.
    parts = []
    if "tokens" in limited and used.tokens > reserved.tokens + max(16, reserved.tokens // 20):
        parts.append(f"{used.tokens:,} tokens (reserved {reserved.tokens:,})")
    if "usd" in limited and used.usd > reserved.usd * Decimal("1.05"):
        parts.append(f"{format_usd(used.usd)} (reserved {format_usd(reserved.usd)})")
    if "requests" in limited and used.requests > reserved.requests:
        parts.append(f"{used.requests} requests (reserved {reserved.requests})")
    return "; ".join(parts) or None


def _kept_metadata(
    base: dict[str, Any], extra: Mapping[str, Any] | None, keeps: bool
) -> dict[str, Any]:
    merged = {**base, **extra} if extra else dict(base)
    return redact(merged) if keeps and merged else merged


def _failure(
    exc: BaseException | None,
    usage: Usage | None,
    response: str | None,
    estimated: bool,
    metadata: Mapping[str, Any] | None,
) -> tuple[
    CallStatus,
    BaseException | None,
    Usage | None,
    str | None,
    None,
    None,
    bool,
    None,
    Mapping[str, Any] | None,
]:
    """The end of a failed call, as ``_end`` / ``_aend`` take it."""
    status: CallStatus = "cancelled" if exc is None or is_cancellation(type(exc)) else "error"
    return status, exc, usage, response, None, None, estimated and usage is not None, None, metadata


def _used(record: CallRecord) -> Amount:
    """What a finished call used, in a budget's dimensions."""
    usage = record.usage
    is_tool = record.kind == "tool"
    return Amount(
        usd=record.cost or _ZERO,
        tokens=usage.total_tokens,
        requests=usage.requests,
        calls=0 if is_tool else 1,
        tool_calls=1 if is_tool else 0,
    )


async def _outliving(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even when the caller is cancelled meanwhile, then let the
    cancellation go on.

    The settle and the store write of a call that ended must not stop half-way: on asyncio the
    work runs as its own task, awaited through a native ``task.cancel()`` as well as an anyio
    cancel scope (:func:`llmctx.stores._base.outlive_cancel`); elsewhere (trio) in a shielded
    cancel scope.

    Raises:
        asyncio.CancelledError: the caller was cancelled (once the work has ended).
        Exception: what the work raised.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with anyio.CancelScope(shield=True):
            await work
        return
    await outlive_cancel(loop.create_task(work))


def _status_of(exc: BaseException | None) -> int | None:
    # An SDK error carrying an HTTP response: the provider saw (and counted) the request.
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


# ---------------------------------------------------------------------------------------------
# The call.


class CallTracker:
    """One call from request to record: reservations, rate limit, timing, usage, consumers.

    Made by :func:`track_call`. ``start`` (or ``astart``, or entering it with ``with``)
    reserves and waits for the rate limiter; ``finish`` / ``fail`` end it exactly once
    (a second end returns the first record), from any thread.
    """

    __slots__ = (
        "_done",
        "_holds",
        "_limit",
        "_lock",
        "_recorders",
        "_reserved",
        "_t0",
        "_trace",
        "_ttfb",
        "_ttft",
        "free",
        "input_tokens",
        "kind",
        "limiter",
        "max_output_tokens",
        "metadata",
        "model",
        "provider",
        "record",
        "request",
        "session",
    )

    def __init__(
        self,
        provider: str | None,
        model: str | None,
        request: Any = None,
        kind: str = "llm",
        input_tokens: int = 0,
        max_output_tokens: int | None = None,
        free: bool = False,
        session: Session | None = None,
        recorders: tuple[Recorder, ...] | None = None,
        metadata: Mapping[str, Any] | None = None,
        limiter: LimiterLike | None = None,
    ) -> None:
        if max_output_tokens is None:
            max_output_tokens = DEFAULT_MAX_OUTPUT_TOKENS if kind == "llm" else 0
        if not (
            type(input_tokens) is int
            and type(max_output_tokens) is int
            and input_tokens >= 0
            and max_output_tokens >= 0
        ):
            for name, value in (
                ("input_tokens", input_tokens),
                ("max_output_tokens", max_output_tokens),
            ):
                if type(value) is not int or value < 0:
                    raise ConfigError(
                        f"track_call({name}={value!r}) must be a whole number >= 0 "
                        "(count the prompt's tokens with llmctx.count_tokens)"
                    )
        self.provider = provider
        self.model = model
        self.request = request
        self.kind = kind
        self.input_tokens = input_tokens
        self.max_output_tokens = max_output_tokens
        self.free = free or kind == "tool"
        self.session = session if session is not None else get_session()
        self._recorders = recorders if recorders is not None else get_recorders()
        self.metadata = dict(metadata) if metadata else {}
        self.limiter = limiter
        self._holds = _NO_HOLDS
        self._limit: ReservationLike | None = None
        self._reserved = _NO_AMOUNT
        self._t0 = 0.0
        self._trace: CallTrace | None = None
        self._ttfb: float | None = None
        self._ttft: float | None = None
        self._done = False
        self._lock = threading.Lock()
        self.record: CallRecord | None = None

    # ------------------------------------------------------------------ before sending
    @protected
    def start(self) -> Self:
        """Reserve the worst case on every budget, then wait for the rate limiter (blocking).

        Raises:
            BudgetExceeded: some budget has no room; nothing is held.
            UnknownPrice: a money budget is active and the model has no price.
            Whatever the limiter raises (e.g. AcquireTimeout, KeyboardInterrupt): the budget
                reservations are released. A refused call (any of these but cancellation and
                KeyboardInterrupt) is stored with status ``refused``.
        """
        if _tracer is not None:
            self._begin_trace(_tracer)
        try:
            amount = self._reservation()
            if amount is not None:
                # Holds fill in as each ledger agrees: an interrupt half-way leaves none unowned.
                self._holds = Holds()
                self.session.reserve(amount, self._holds)  # type: ignore[union-attr]
            if self.limiter is not None:
                self._limit = self.limiter.reserve(self.input_tokens + self.max_output_tokens)
        except BaseException as exc:
            # A refusal, a limiter timeout or an interrupt anywhere in here: nothing stays held.
            self._refused(exc)
            raise
        self._t0 = time.perf_counter()
        return self

    @protected
    async def astart(self) -> Self:
        """Async twin of :meth:`start`: the budgets are reserved through their ledgers' async
        faces (``Session.areserve``: Redis without blocking the loop) and the rate-limiter wait
        is a cancellation point; cancellation while either waits releases what was reserved."""
        if self.session is not None or self.limiter is not None:
            # A burst of calls starting together reserves a few per loop pass (_turns).
            await take_turn()
        if _tracer is not None:
            self._begin_trace(_tracer)
        try:
            amount = self._reservation()
            if amount is not None:
                self._holds = Holds()
                await self.session.areserve(amount, self._holds)  # type: ignore[union-attr]
            if self.limiter is not None:
                self._limit = await self.limiter.areserve(
                    self.input_tokens + self.max_output_tokens
                )
        except BaseException as exc:
            await self._arefused(exc)
            raise
        self._t0 = time.perf_counter()
        return self

    def _reservation(self) -> Amount | None:
        """The worst case to reserve on the session's budgets (None: no budget in the chain).

        I/O-free, shared by :meth:`start` and :meth:`astart`.

        Raises:
            UnknownPrice: a money budget is active and the model has no price.
        """
        session = self.session
        if session is None or not session.budgeted:
            return None
        is_tool = self.kind == "tool"  # model calls (chat, completion, embedding) are requests
        usd: Decimal | None = _ZERO
        if not is_tool and not self.free and session.limits_money:
            # A request for a dearer tier (OpenAI "priority") reserves that tier's price.
            tier = self._service_tier(None)
            usd = (
                None
                if self.model is None
                else _pricing.estimate_cost(
                    self.model,
                    self.input_tokens,
                    self.max_output_tokens,
                    self.provider,
                    service_tier=tier,
                )
            )
            if usd is None:
                dearer = None if tier in _pricing._STANDARD_TIERS else tier
                raise UnknownPrice(self.model or "<unknown model>", self.provider, dearer)
        amount = Amount(
            usd=usd or _ZERO,
            tokens=self.input_tokens + self.max_output_tokens,
            requests=0 if is_tool else 1,
            calls=0 if is_tool else 1,
            tool_calls=1 if is_tool else 0,
        )
        self._reserved = amount
        return amount

    def _refusing(self, exc: BaseException) -> tuple[Holds, CallRecord | None]:
        # The call was never sent: what it holds (to give back) and the one trace every kind
        # of refusal leaves (none for cancellation or Ctrl-C: the caller stopped it). Ending it
        # later is a no-op. I/O-free.
        with self._lock:
            self._done = True
            holds, self._holds = self._holds, _NO_HOLDS
        if self.session is None or not isinstance(exc, Exception):
            return holds, None
        return holds, self._refusal(exc)

    def _refused(self, exc: BaseException) -> None:
        holds, refusal = self._refusing(exc)
        holds.release()
        self._end_trace(None, exc)
        if refusal is not None:
            try:
                self.session.on_call_end(refusal)  # type: ignore[union-attr]
            except Exception:
                # The refusal propagates, not a store's trouble recording it.
                logger.exception("llmctx: could not record a refused %s call", self.model)

    async def _arefused(self, exc: BaseException) -> None:
        holds, refusal = self._refusing(exc)
        # Outliving a cancellation: the one that stopped the call still lets its holds go back.
        await _outliving(self._arefusal_out(holds, refusal, exc))

    async def _arefusal_out(
        self, holds: Holds, refusal: CallRecord | None, exc: BaseException
    ) -> None:
        await holds.arelease()
        self._end_trace(None, exc)
        if refusal is not None:
            try:
                await self.session.aon_call_end(refusal)  # type: ignore[union-attr]
            except Exception:
                logger.exception("llmctx: could not record a refused %s call", self.model)

    def _refusal(self, exc: Exception) -> CallRecord:
        assert self.session is not None
        return CallRecord(
            session_id=self.session.id,
            provider=self.provider,
            model=self.model,
            kind=self.kind,
            request=redact(self.request),
            usage=Usage(),
            cost=_ZERO,
            cost_note="refused before it was sent",
            status="refused",
            error=redact_text(f"{type(exc).__name__}: {exc}"),
            metadata=_kept_metadata(self.metadata, None, True),
        )

    def _begin_trace(self, tracer: CallTracer) -> None:
        try:
            self._trace = tracer.on_call_start(self)
        except Exception:
            logger.exception("llmctx: call tracer %r failed at a call's start", tracer)

    def _end_trace(self, record: CallRecord | None, exc: BaseException | None) -> None:
        trace, self._trace = self._trace, None
        if trace is None:
            return
        try:
            if record is not None:
                trace.on_call_end(record)
            elif exc is not None:
                trace.on_call_refused(exc)
        except Exception:
            logger.exception("llmctx: call tracer %r failed at a call's end", trace)

    # ------------------------------------------------------------------ timing marks
    def mark_first_byte(self) -> None:
        """Note the time the first byte of the response arrived (first call wins)."""
        if self._ttfb is None:
            self._ttfb = time.perf_counter() - self._t0

    def mark_first_token(self) -> None:
        """Note the time the first text or tool-call delta arrived (first call wins)."""
        if self._ttft is None:
            self._ttft = time.perf_counter() - self._t0
            if self._ttfb is None:
                self._ttfb = self._ttft

    # ------------------------------------------------------------------ end
    # finish/fail and afinish/afail are one implementation: the I/O-free part (claim the end,
    # build the record, work out the settlement) is shared, and only the ledger settle and
    # the store write differ: called, or awaited.
    @protected
    def finish(
        self,
        *,
        usage: Usage | None = None,
        response: str | None = None,
        tool_calls: list[Any] | None = None,
        raw_usage: dict[str, Any] | None = None,
        estimated: bool = False,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CallRecord:
        """Settle with the actual usage, price it, hand the record to its consumers.

        Idempotent: a second finish (or a fail after finish) returns the first record.

        Raises:
            UsageError: the call was refused (budget or rate limiter) and never sent.
        """
        return self._end(
            "ok", None, usage, response, tool_calls, raw_usage, estimated, model, metadata
        )

    @protected
    async def afinish(
        self,
        *,
        usage: Usage | None = None,
        response: str | None = None,
        tool_calls: list[Any] | None = None,
        raw_usage: dict[str, Any] | None = None,
        estimated: bool = False,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CallRecord:
        """Async twin of :meth:`finish`: the ledgers are settled through their async faces and
        the record is written with the store's (SQLite in a worker thread), committed before it
        returns, so the event loop never blocks on bookkeeping.

        Cancellation while it waits does not stop the settle and the write (they are shielded):
        no reservation is left held and no call is half-written; the cancellation is delivered
        at the next checkpoint.

        Raises:
            UsageError: the call was refused (budget or rate limiter) and never sent.
        """
        return await self._aend(
            "ok", None, usage, response, tool_calls, raw_usage, estimated, model, metadata
        )

    @protected
    def fail(
        self,
        exc: BaseException | None = None,
        *,
        usage: Usage | None = None,
        response: str | None = None,
        estimated: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> CallRecord:
        """Record a failed or cancelled call; release the reservations (or settle what was used).

        ``usage`` is for a call that consumed tokens before it broke (an interrupted stream).
        Without it the budgets get everything back; the rate limiter keeps the request (not
        its tokens) when ``exc`` carries the provider's HTTP response.
        """
        return self._end(*_failure(exc, usage, response, estimated, metadata))

    @protected
    async def afail(
        self,
        exc: BaseException | None = None,
        *,
        usage: Usage | None = None,
        response: str | None = None,
        estimated: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> CallRecord:
        """Async twin of :meth:`fail` (shielded like :meth:`afinish`)."""
        return await self._aend(*_failure(exc, usage, response, estimated, metadata))

    def _end(
        self,
        status: CallStatus,
        exc: BaseException | None,
        usage: Usage | None,
        response: str | None,
        tool_calls: list[Any] | None,
        raw_usage: dict[str, Any] | None,
        estimated: bool,
        model: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> CallRecord:
        # Held for the whole end: a second finish/fail racing the first (a stream closed by the
        # garbage collector in another thread) waits for it and returns its record, rather than
        # charging the call twice. Nothing below takes this tracker's lock again.
        if usage is not None:
            _check_usage(usage)  # before anything changes: a corrected finish() can follow
        with self._lock:
            record = self._claim(
                status, exc, usage, response, tool_calls, raw_usage, estimated, model, metadata
            )
            if record is None:
                return self.record  # type: ignore[return-value]
            over: str | None = None
            holds = self._holds
            # Nothing to settle (no budget, no limiter): told apart without Holds.__bool__.
            if (holds is not _NO_HOLDS and holds) or self._limit is not None:
                holds, actual, over, limit = self._settlement(record, status)
                self._close_out(holds, actual, limit, record, exc)
            else:
                self._hand_over(record)
        self._ended(record, status, over)
        return record

    async def _aend(
        self,
        status: CallStatus,
        exc: BaseException | None,
        usage: Usage | None,
        response: str | None,
        tool_calls: list[Any] | None,
        raw_usage: dict[str, Any] | None,
        estimated: bool,
        model: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> CallRecord:
        # The lock covers the claim only (a thread lock is never held across an await): a
        # racing second end returns this record at once, and still never charges it twice.
        if usage is not None:
            _check_usage(usage)
        stopped: BaseException | None = None
        if self.record is None and (self.session is not None or self._recorders):
            # A burst of calls ending together is spread over loop passes (_turns). Cancelled
            # while it waits, the call still ends (it was sent), and the cancellation follows.
            try:
                await take_turn()
            except BaseException as cancelled:
                if not is_cancellation(type(cancelled)):
                    raise
                stopped = cancelled
        with self._lock:
            record = self._claim(
                status, exc, usage, response, tool_calls, raw_usage, estimated, model, metadata
            )
            if record is not None:
                holds, actual, over, limit = self._settlement(record, status)
        if record is None:
            if stopped is not None:
                raise stopped
            return self.record  # type: ignore[return-value]
        session = self.session
        if session is None or session.ends_in_process():
            # Nothing to wait for (in-process ledgers and store): no task to outlive a cancel.
            self._close_out(holds, actual, limit, record, exc)
        else:
            await _outliving(self._aclose_out(holds, actual, limit, record, exc))
        self._ended(record, status, over)
        if stopped is not None:
            raise stopped
        return record

    def _close_out(
        self,
        holds: Holds,
        actual: Amount | None,
        limit: ReservationLike | None,
        record: CallRecord,
        exc: BaseException | None,
    ) -> None:
        # The rest of an end: settle (or release), then write the record through.
        if actual is not None:
            holds.settle(actual)
        else:
            holds.release()
        self._settle_limit(limit, record, actual is not None, exc)
        self._hand_over(record)

    async def _aclose_out(
        self,
        holds: Holds,
        actual: Amount | None,
        limit: ReservationLike | None,
        record: CallRecord,
        exc: BaseException | None,
    ) -> None:
        # The awaited twin of _close_out.
        if actual is not None:
            await holds.asettle(actual)
        else:
            await holds.arelease()
        self._settle_limit(limit, record, actual is not None, exc)
        await self._ahand_over(record)

    def _claim(
        self,
        status: CallStatus,
        exc: BaseException | None,
        usage: Usage | None,
        response: str | None,
        tool_calls: list[Any] | None,
        raw_usage: dict[str, Any] | None,
        estimated: bool,
        model: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> CallRecord | None:
        """Make this the call's one end and build its record (None: it had ended already).

        The caller holds ``self._lock``. I/O-free but for a failure to build the record, which
        releases everything held before it propagates.

        Raises:
            UsageError: the call was refused and never sent.
        """
        if self.record is not None:
            return None
        if self._done:
            raise UsageError(
                "this call was refused before it was sent (budget or rate limiter), so it "
                "has nothing to finish; start a new one with track_call(...)"
            )
        self._done = True
        try:
            record = self._build(
                status, exc, usage, response, tool_calls, raw_usage, estimated, model, metadata
            )
        except BaseException:
            # Never leave a reservation behind, even when the record cannot be built.
            self._release_all()
            raise
        self.record = record
        return record

    def _ended(self, record: CallRecord, status: CallStatus, over: str | None) -> None:
        # Warnings last: with warnings turned into errors, the call is already settled and
        # recorded when one propagates.
        if record.cost is None and status == "ok" and not self.free:
            _warn_unpriced(self.model, self.provider, record.cost_note)
        if over is not None:
            warnings.warn(
                BudgetOverrun(
                    f"llmctx: {self.model or 'a'} call used more than it reserved: {over}; "
                    "charged in full",
                    reserved=self._reserved,
                    used=_used(record),
                ),
                stacklevel=5,
            )

    def _build(
        self,
        status: CallStatus,
        exc: BaseException | None,
        usage: Usage | None,
        response: str | None,
        tool_calls: list[Any] | None,
        raw_usage: dict[str, Any] | None,
        estimated: bool,
        model: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> CallRecord:
        latency = time.perf_counter() - self._t0 if self._t0 else None
        # When the call started (its end minus its latency), not when this record is built.
        started_at = _started_at(latency)
        if model:
            self.model = model
        if usage is None:
            usage = Usage(requests=1) if (status == "ok" and self.kind != "tool") else Usage()
        cost: Decimal | None
        note: str | None = None
        if self.free:
            cost = _ZERO
        else:
            try:
                cost, note = _pricing.price_usage(
                    self.model,
                    usage,
                    self.provider,
                    raw_usage=raw_usage,
                    service_tier=self._service_tier(metadata),
                    at=started_at,
                )
            except Exception:
                logger.exception("llmctx: pricing failed for model %r", self.model)
                cost, note = None, "pricing failed (see the llmctx log)"
            if cost is None and self._reserved.usd:
                # Fail closed: a call that reserved money but cannot be priced afterwards is
                # charged what it reserved, never $0.
                cost, note = self._reserved.usd, f"{note}; charged the reserved worst case"
        # Redact only what will be kept: with no consumer nothing is stored, and the record
        # goes back only to the caller who wrote the request. Redacting builds a copy, so a
        # request the caller changes after the call does not change what was recorded.
        keeps = self.session is not None or bool(self._recorders) or bool(_consumers)
        # Positional, in CallRecord's field order (tests/test_charge.py holds that order): a
        # dataclass __init__ matches 19 keywords one by one, which took twice as long as the
        # whole build around it.
        return CallRecord(
            self.session.id if self.session is not None else None,  # session_id
            self.provider,
            self.model,
            self.kind,
            redact(self.request) if keeps else self.request,  # request
            redact_text(response) if keeps and response else response,  # response
            redact(tool_calls) if keeps and tool_calls else tool_calls,  # tool_calls
            usage,
            raw_usage,
            cost,
            note,  # cost_note
            status,
            None if exc is None else redact_text(f"{type(exc).__name__}: {exc}"),  # error
            estimated,
            started_at,
            latency,  # latency_s
            self._ttfb,  # ttfb_s
            self._ttft,  # ttft_s
            _kept_metadata(self.metadata, metadata, keeps),  # metadata
        )

    def _service_tier(self, metadata: Mapping[str, Any] | None) -> str | None:
        # What the provider reported wins over what the request asked for.
        tier = metadata.get("service_tier") if metadata else None
        if tier is None and self.metadata:
            tier = self.metadata.get("service_tier")
        request = self.request
        if tier is None and (type(request) is dict or isinstance(request, Mapping)):
            tier = request.get("service_tier")
        return tier if type(tier) is str else None

    def _settlement(
        self, record: CallRecord, status: CallStatus
    ) -> tuple[Holds, Amount | None, str | None, ReservationLike | None]:
        """What ending the call settles: its holds, the actual amount (None: release them),
        the overrun (marked on the record), and the rate-limit reservation. I/O-free."""
        holds, self._holds = self._holds, _NO_HOLDS
        limit, self._limit = self._limit, None
        if not holds and limit is None:
            return holds, None, None, None  # nothing reserved (no budget, no limiter)
        used = record.usage
        if not (status == "ok" or used.total_tokens or used.requests):
            return holds, None, None, limit
        actual = _used(record)
        over: str | None = None
        if holds and self.session is not None:
            # Charged in full (the budget may now be past its limit), and marked.
            over = _overrun(self._reserved, actual, self.session.limited)
            if over is not None:
                record.metadata["overrun"] = over
        return holds, actual, over, limit

    @staticmethod
    def _settle_limit(
        limit: ReservationLike | None,
        record: CallRecord,
        consumed: bool,
        exc: BaseException | None,
    ) -> None:
        if limit is None:
            return
        try:
            if consumed:
                limit.settle(max(0, record.usage.total_tokens))
            elif _status_of(exc) is not None:
                limit.settle(0)  # the provider saw (and counted) the request
            else:
                limit.release()
        except Exception:
            logger.exception("llmctx: could not settle a rate-limit reservation")

    def _release_all(self) -> None:
        holds, self._holds = self._holds, _NO_HOLDS
        limit, self._limit = self._limit, None
        holds.release()
        if limit is not None:
            try:
                limit.release()
            except Exception:
                logger.exception("llmctx: could not release a rate-limit reservation")

    def _hand_over(self, record: CallRecord) -> None:
        # The one way a finished call leaves the charge path. The session writes it through to
        # its store (a store failure is the session's to log); recorders and added consumers
        # only keep or export it.
        try:
            if self.session is not None:
                # With on_store_error="raise" this raises StoreError (the record is already in
                # the outbox); the other consumers still get the call.
                self.session.on_call_end(record)
        finally:
            self._tell_consumers(record)

    async def _ahand_over(self, record: CallRecord) -> None:
        try:
            if self.session is not None:
                await self.session.aon_call_end(record)
        finally:
            self._tell_consumers(record)

    def _tell_consumers(self, record: CallRecord) -> None:
        # Recorders and added consumers keep or export in memory: called, never awaited.
        consumers = (*self._recorders, *_consumers) if self._recorders else _consumers
        for consumer in consumers:
            try:
                consumer.on_call_end(record)
            except Exception:
                logger.exception("llmctx: %r could not take call %s", consumer, record.id)
        if self._trace is not None:
            self._end_trace(record, None)

    @property
    def finished(self) -> bool:
        """True once finish() or fail() ran (or the call was refused)."""
        return self._done

    # ------------------------------------------------------------------ context manager
    # Entering is start() itself (it returns the tracker): one frame less per call.
    __enter__ = start

    @protected
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._done:
            return
        if exc is not None:
            self.fail(exc)
        else:
            self.finish()

    @protected
    async def __aenter__(self) -> Self:
        return await self.astart()

    @protected
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._done:
            return
        if exc is not None:
            await self.afail(exc)
        else:
            await self.afinish()


def track_call(
    *,
    provider: str | None,
    model: str | None,
    request: Any = None,
    kind: str = "llm",
    input_tokens: int = 0,
    max_output_tokens: int | None = None,
    free: bool = False,
    session: Session | None = None,
    metadata: Mapping[str, Any] | None = None,
    limiter: LimiterLike | None = None,
) -> CallTracker:
    """Put one call on the charge path; use the result with ``with`` / ``async with`` (or
    ``start()`` / ``astart()`` and ``finish()``).

    Args:
        provider: e.g. ``"openai"``, ``"anthropic"``, ``"llama-cpp"``, ``"mcp"``.
        model: the model name used for pricing (for tools: ``"server.tool"``).
        request: the request payload; redacted before it is recorded.
        kind: ``"llm"`` (priced, counts as a request), ``"embedding"``, or ``"tool"`` (no token
            cost; latency, status and error are still recorded).
        input_tokens: prompt tokens counted before sending (for the reservations).
        max_output_tokens: the call's output limit (for the reservations). Not given: a model
            call (``kind="llm"``) reserves :data:`DEFAULT_MAX_OUTPUT_TOKENS` (4,096), other
            kinds 0.
        free: price the call at $0 whatever the model (e.g. a local model without a set price).
        session: charge this session instead of the current one.
        metadata: extra fields kept on the record.
        limiter: a :class:`llmctx.RateLimiter` (or anything :class:`LimiterLike`) to wait for
            after the budgets agreed; it is settled with the actual tokens at the end.

    Returns:
        A :class:`CallTracker`; entering it reserves, leaving it records.
    """
    # Positional (in __init__'s order): matching ten keywords again cost more than a third
    # of building the tracker.
    return CallTracker(
        provider,
        model,
        request,
        kind,
        input_tokens,
        max_output_tokens,
        free,
        session,
        None,  # recorders: the current ones
        metadata,
        limiter,
    )
