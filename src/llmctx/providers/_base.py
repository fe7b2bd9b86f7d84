"""What every provider integration shares: the plan of one call, its charge, stream feeds.

A provider module turns the request it is about to send into a :class:`Plan` (model, pre-flight
token counts, how to read the result), then drives one :class:`Call` through the charge path:
``start`` (budget reservation, then the rate limiter), the request, and ``finish`` / ``fail``.
Streams get a :class:`StreamFeed` that sees every chunk and ends the call exactly once, whether
the stream completes, breaks, is closed early, raises or is garbage-collected.

Bookkeeping never breaks the user's call: past the pre-flight checks (which raise
:class:`~llmctx.BudgetExceeded` and :class:`~llmctx.UnknownPrice` on purpose), every error in
here is logged on the ``llmctx`` logger and swallowed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from .._charge import CallTracker, track_call
from .._context import _current_session, _recorders
from .._tokens import Tokenizer, count_tokens, estimate_text_tokens
from .._usage import Usage

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "Accumulator",
    "Call",
    "LimiterLike",
    "Outcome",
    "Plan",
    "ReservationLike",
    "StreamFeed",
    "clean_body",
    "count_prompt",
    "idle",
    "json_tokens",
]

logger = logging.getLogger("llmctx")

#: Output tokens reserved for a request that sets no output limit (OpenAI without
#: ``max_tokens``). Set ``max_tokens`` / ``max_output_tokens`` to reserve exactly.
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4096

# Bound once: the idle check runs on every call of every instrumented client.
_session_get = _current_session.get
_recorders_get = _recorders.get


def idle() -> bool:
    """True when no session and no recorder is active here: nothing to charge or record."""
    return _session_get() is None and not _recorders_get()


class ReservationLike(Protocol):
    """What a rate limiter's ``reserve`` returns (see :class:`llmctx.RateLimiter`)."""

    def settle(self, actual_tokens: int) -> None: ...

    def release(self) -> None: ...


@runtime_checkable
class LimiterLike(Protocol):
    """The rate-limiter interface instrumented clients use (:class:`llmctx.RateLimiter` has it).

    ``reserve`` blocks a thread, ``areserve`` waits in asyncio; ``feedback`` (optional) takes
    what the provider's rate-limit headers said.
    """

    def reserve(self, tokens: int = 0) -> ReservationLike: ...

    async def areserve(self, tokens: int = 0) -> ReservationLike: ...


@dataclass(slots=True)
class Outcome:
    """What a finished (or broken) call produced, as far as llmctx could read it."""

    usage: Usage | None = None
    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    raw_usage: dict[str, Any] | None = None
    estimated: bool = False
    metadata: dict[str, Any] | None = None


class Accumulator(Protocol):
    """Reads a stream's chunks as they pass, and says what the stream used.

    ``got_token`` turns true at the first chunk carrying text or a tool-call delta.
    """

    got_token: bool

    def feed(self, chunk: Any) -> bool:
        """Take one chunk; return False to hide it from the user (an injected usage chunk)."""
        ...

    def outcome(self, complete: bool) -> Outcome:
        """The usage and text so far; ``complete`` is False for a stream that did not end."""
        ...


@dataclass(slots=True)
class Plan:
    """One request as llmctx sees it before sending it.

    ``extract(plan, result)`` reads a whole response; ``accumulator(plan)`` makes the reader
    of one stream (None: the endpoint does not stream).
    """

    provider: str
    model: str | None
    request: Any
    input_tokens: int
    max_output_tokens: int
    extract: Callable[[Plan, Any], Outcome]
    accumulator: Callable[[Plan], Accumulator] | None = None
    kind: str = "llm"
    free: bool = False
    tokenizer: Tokenizer | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def estimate_output(self, text: str) -> int:
        """Tokens of generated ``text``: exact with the plan's tokenizer, else the heuristic."""
        if not text:
            return 0
        return count_tokens(text, self.model, tokenizer=self.tokenizer).tokens

    def estimated_usage(self, text: str) -> Usage:
        """Usage of a call that reported none: the pre-flight input count plus ``text``."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.estimate_output(text),
            requests=1 if self.kind == "llm" else 0,
        )


_SENTINELS: Final = frozenset({"NotGiven", "Omit"})


def clean_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request body without the SDKs' "argument not given" sentinels (``omit``, ...)."""
    return {k: v for k, v in body.items() if type(v).__name__ not in _SENTINELS}


def json_tokens(value: Any) -> int:
    """A conservative token estimate of structured request parts (tool schemas, formats)."""
    if not value:
        return 0
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)
    return estimate_text_tokens(text)


def count_prompt(
    messages: Sequence[Mapping[str, Any]] | str | None,
    model: str | None,
    tokenizer: Tokenizer | None = None,
) -> int:
    """Input tokens of a prompt for the reservation; never raises (falls back to the heuristic)."""
    if not messages:
        return 0
    try:
        return count_tokens(messages, model, tokenizer=tokenizer).tokens
    except Exception:
        # Exotic content (SDK objects instead of dicts): count its JSON form instead.
        logger.debug("llmctx: could not count the prompt exactly; estimating", exc_info=True)
        return json_tokens(_jsonable(messages))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    return value


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


class Call:
    """One request on the charge path: budget reservation, rate limit, usage, record.

    ``tracker`` is None when no session or recorder is active (only the limiter is used then).
    ``finish`` and ``fail`` are idempotent and never raise.
    """

    __slots__ = ("_done", "_marked", "adopted", "limiter", "plan", "reservation", "tracker")

    def __init__(self, plan: Plan, limiter: LimiterLike | None, track: bool) -> None:
        self.plan = plan
        self.limiter = limiter
        self.reservation: ReservationLike | None = None
        self.tracker: CallTracker | None = None
        if track:
            self.tracker = track_call(
                provider=plan.provider,
                model=plan.model,
                request=plan.request,
                kind=plan.kind,
                input_tokens=plan.input_tokens,
                max_output_tokens=plan.max_output_tokens,
                free=plan.free,
                metadata=plan.metadata,
            )
        self._done = False
        self._marked = False
        #: True once the SDK's result (or parsed raw response) is being charged.
        self.adopted = False

    @property
    def reserve_tokens(self) -> int:
        """Tokens asked of the rate limiter: the prompt plus the output limit."""
        return self.plan.input_tokens + self.plan.max_output_tokens

    # ------------------------------------------------------------------ before sending
    def start(self) -> None:
        """Reserve on every budget, then wait for the rate limiter (blocking this thread).

        Raises:
            BudgetExceeded, UnknownPrice: from the budgets; nothing is held or sent.
            Whatever the limiter raises (e.g. AcquireTimeout): the budgets are released.
        """
        if self.tracker is not None:
            self.tracker.start()
        if self.limiter is not None:
            try:
                self.reservation = self.limiter.reserve(self.reserve_tokens)
            except BaseException as exc:
                self._release_budgets(exc)
                raise

    async def astart(self) -> None:
        """Async twin of :meth:`start`; cancellation while waiting releases the budgets."""
        if self.tracker is not None:
            self.tracker.start()
        if self.limiter is not None:
            try:
                self.reservation = await self.limiter.areserve(self.reserve_tokens)
            except BaseException as exc:
                self._release_budgets(exc)
                raise

    def _release_budgets(self, exc: BaseException) -> None:
        self._done = True
        if self.tracker is not None:
            try:
                self.tracker.fail(exc)
            except Exception:
                logger.exception("llmctx: could not release a budget reservation")

    # ------------------------------------------------------------------ while receiving
    def mark_first_byte(self) -> None:
        """The response headers (or first bytes) arrived."""
        if self.tracker is not None:
            self.tracker.mark_first_byte()

    def mark_first_token(self) -> None:
        """The first text or tool-call delta arrived."""
        if not self._marked:
            self._marked = True
            if self.tracker is not None:
                self.tracker.mark_first_token()

    # ------------------------------------------------------------------ end
    def finish(self, outcome: Outcome) -> None:
        """Settle with what the call used and write the record. Never raises."""
        if self._done:
            return
        self._done = True
        try:
            usage = outcome.usage
            if usage is None:
                usage = self.plan.estimated_usage(outcome.text or "")
                outcome.estimated = True
            if self.reservation is not None:
                self._settle_limit(usage.total_tokens)
            if self.tracker is not None:
                self.tracker.finish(
                    usage=usage,
                    response=outcome.text,
                    tool_calls=outcome.tool_calls,
                    raw_usage=outcome.raw_usage,
                    estimated=outcome.estimated,
                    metadata=outcome.metadata,
                )
        except Exception:
            logger.exception("llmctx: could not record a %s call", self.plan.provider)
            self._release_quietly()

    def fail(self, exc: BaseException | None, outcome: Outcome | None = None) -> None:
        """Record a failed or cancelled call; charge what it used if it used anything.

        Never raises. Without an ``outcome`` the budgets are released; the rate limiter keeps
        the request (not its tokens) when the provider answered with an error status.
        """
        if self._done:
            return
        self._done = True
        try:
            usage = None if outcome is None else outcome.usage
            estimated = True if outcome is None else outcome.estimated
            if outcome is not None and usage is None:
                usage = self.plan.estimated_usage(outcome.text or "")
                estimated = True
            if self.reservation is not None:
                if usage is not None:
                    self._settle_limit(usage.total_tokens)
                elif exc is not None and _status_of(exc) is not None:
                    self._settle_limit(0)  # the provider saw (and counted) the request
                else:
                    self._release_limit()
            if self.tracker is not None:
                self.tracker.fail(
                    exc,
                    usage=usage,
                    response=None if outcome is None else outcome.text,
                    estimated=estimated,
                )
        except Exception:
            logger.exception("llmctx: could not record a failed %s call", self.plan.provider)
            self._release_quietly()

    def _settle_limit(self, tokens: int) -> None:
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            try:
                reservation.settle(max(0, int(tokens)))
            except Exception:
                logger.exception("llmctx: could not settle a rate-limit reservation")

    def _release_limit(self) -> None:
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            try:
                reservation.release()
            except Exception:
                logger.exception("llmctx: could not release a rate-limit reservation")

    def _release_quietly(self) -> None:
        """Last resort after a bookkeeping error: never leave anything reserved."""
        self._release_limit()
        tracker = self.tracker
        if tracker is not None and not tracker.finished:
            try:
                tracker.fail(None)
            except Exception:
                logger.exception("llmctx: could not release a budget reservation")

    @property
    def done(self) -> bool:
        """True once the call was finished or failed."""
        return self._done


class StreamFeed:
    """Connects one stream to its :class:`Call`: chunks in, exactly one end out.

    Every method is safe to call in any order and any number of times; only the first end
    (complete, abandon, error) counts.
    """

    __slots__ = ("acc", "call")

    def __init__(self, call: Call, acc: Accumulator) -> None:
        self.call = call
        self.acc = acc

    def chunk(self, chunk: Any) -> bool:
        """Take one chunk; False means the user asked not to see it (an injected usage chunk)."""
        try:
            keep = self.acc.feed(chunk)
            if self.acc.got_token:
                self.call.mark_first_token()
            return keep
        except Exception:
            logger.exception("llmctx: could not read a %s stream chunk", self.call.plan.provider)
            return True

    def relay(self, chunks: Iterable[Any]) -> Iterator[Any]:
        """Yield the chunks the consumer should see and end the call exactly once.

        The end follows how iteration stopped: exhausted -> complete; the consumer closed the
        generator (``break``, ``close()``, garbage collection) -> abandon; ``chunks`` raised
        (or was cancelled) -> error, and the exception propagates.
        """
        try:
            for chunk in chunks:
                if self.chunk(chunk):
                    yield chunk
        except GeneratorExit:
            self.abandon()
            raise
        except BaseException as exc:
            self.error(exc)
            raise
        else:
            self.complete()

    def complete(self) -> None:
        """The stream ended normally."""
        if self.call.done:
            return
        self.call.finish(self._outcome(True))

    def abandon(self) -> None:
        """The consumer stopped early (break, close, garbage collection): charge what it got."""
        if self.call.done:
            return
        outcome = self._outcome(False)
        outcome.metadata = {**(outcome.metadata or {}), "abandoned": True}
        if outcome.usage is None:
            outcome.usage = self.call.plan.estimated_usage(outcome.text or "")
        outcome.estimated = True
        self.call.finish(outcome)

    def error(self, exc: BaseException) -> None:
        """The stream raised (or was cancelled) mid-way: charge what it got, record the error."""
        if self.call.done:
            return
        self.call.fail(exc, self._outcome(False))

    def _outcome(self, complete: bool) -> Outcome:
        try:
            return self.acc.outcome(complete)
        except Exception:
            logger.exception("llmctx: could not read a %s stream's usage", self.call.plan.provider)
            return Outcome()
