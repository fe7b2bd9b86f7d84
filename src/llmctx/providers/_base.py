"""What every provider integration shares: the plan of one call, its charge, stream feeds.

A provider module turns the request it is about to send into a :class:`Plan` (model, pre-flight
token counts, how to read the result). ``plan.track(limiter)`` makes the one
:class:`~llmctx.CallTracker` of the call; the provider starts it (budget reservations, then the
rate limiter), sends the request, and turns what came back into an :class:`Outcome` that
``plan.finish`` / ``plan.fail`` hand to the tracker. Streams get a :class:`StreamFeed` that sees
every chunk and ends the call exactly once, whether the stream completes, breaks, is closed
early, raises or is garbage-collected.

Bookkeeping never breaks the user's call: past the pre-flight checks (which raise
:class:`~llmctx.BudgetExceeded` and :class:`~llmctx.UnknownPrice` on purpose), every error in
here is logged on the ``llmctx`` logger and swallowed.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from .._charge import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    CallTracker,
    LimiterLike,
    ReservationLike,
    track_call,
)
from .._context import get_session, idle
from .._interrupt import protected
from .._tokens import Tokenizer, count_tokens, estimate_text_tokens
from .._usage import Usage

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "Accumulator",
    "LimiterLike",
    "Outcome",
    "Plan",
    "ReservationLike",
    "StreamFeed",
    "clean_body",
    "count_prompt",
    "idle",
    "json_tokens",
    "server_metadata",
]

logger = logging.getLogger("llmctx")


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
    #: What to count for ``input_tokens`` when the count is first needed, if given (it is
    #: then 0 until :meth:`prompt_tokens`): prompts (texts or message lists, each counted by
    #: :func:`count_prompt`) and structured parts (tool schemas, response formats: counted as
    #: JSON). Needed when a budget or a rate limiter reserves it, or the response reports no
    #: usage; a call nothing reserves for never walks its prompt, which for a long chat is the
    #: most of what llmctx does per call.
    uncounted: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None

    def prompt_tokens(self) -> int:
        """The pre-flight input count, counted now if it was left for later."""
        pending = self.uncounted
        if pending is not None:
            self.uncounted = None
            prompts, parts = pending
            self.input_tokens = sum(count_prompt(p, self.model) for p in prompts) + sum(
                json_tokens(p) for p in parts
            )
        return self.input_tokens

    def estimate_output(self, text: str) -> int:
        """Tokens of generated ``text``: exact with the plan's tokenizer, else the heuristic."""
        if not text:
            return 0
        return count_tokens(text, self.model, tokenizer=self.tokenizer).tokens

    def estimated_usage(self, text: str) -> Usage:
        """Usage of a call that reported none: the pre-flight input count plus ``text``."""
        return Usage(
            input_tokens=self.prompt_tokens(),
            output_tokens=self.estimate_output(text),
            requests=1 if self.kind == "llm" else 0,
        )

    # ------------------------------------------------------------------ the call
    def track(self, limiter: LimiterLike | None) -> CallTracker:
        """The tracker of this request (in the current session, if any), not yet started."""
        input_tokens = self.input_tokens
        if self.uncounted is not None and (limiter is not None or _reserving()):
            input_tokens = self.prompt_tokens()
        return track_call(
            provider=self.provider,
            model=self.model,
            request=self.request,
            kind=self.kind,
            input_tokens=input_tokens,
            max_output_tokens=self.max_output_tokens,
            free=self.free,
            metadata=self.metadata,
            limiter=limiter,
        )

    # finish/afinish and fail/afail share how an outcome becomes the tracker's arguments;
    # the async ones await the tracker's async end (ledgers and store off the loop thread).
    @protected
    def finish(self, call: CallTracker, outcome: Outcome) -> None:
        """End ``call`` with what it produced; usage it did not report is estimated.

        Never raises: bookkeeping never breaks the user's call (the tracker has released
        everything it held if it could not record).
        """
        if call.finished:
            return
        try:
            call.finish(**self._finished(outcome))
        except Exception:
            logger.exception("llmctx: could not record a %s call", self.provider)

    @protected
    async def afinish(self, call: CallTracker, outcome: Outcome) -> None:
        """Async twin of :meth:`finish` (:meth:`CallTracker.afinish`); never raises."""
        if call.finished:
            return
        try:
            await call.afinish(**self._finished(outcome))
        except Exception:
            logger.exception("llmctx: could not record a %s call", self.provider)

    @protected
    def fail(self, call: CallTracker, exc: BaseException | None, outcome: Outcome | None) -> None:
        """Record a failed or cancelled ``call``; charge what it used if it used anything.

        Never raises. Without an ``outcome`` the budgets get everything back.
        """
        if call.finished:
            return
        try:
            call.fail(exc, **self._failed(outcome))
        except Exception:
            logger.exception("llmctx: could not record a failed %s call", self.provider)

    @protected
    async def afail(
        self, call: CallTracker, exc: BaseException | None, outcome: Outcome | None
    ) -> None:
        """Async twin of :meth:`fail` (:meth:`CallTracker.afail`); never raises."""
        if call.finished:
            return
        try:
            await call.afail(exc, **self._failed(outcome))
        except Exception:
            logger.exception("llmctx: could not record a failed %s call", self.provider)

    def _finished(self, outcome: Outcome) -> dict[str, Any]:
        usage = outcome.usage
        if usage is None:
            usage = self.estimated_usage(outcome.text or "")
            outcome.estimated = True
        return {
            "usage": usage,
            "response": outcome.text,
            "tool_calls": outcome.tool_calls,
            "raw_usage": outcome.raw_usage,
            "estimated": outcome.estimated,
            "metadata": outcome.metadata,
        }

    def _failed(self, outcome: Outcome | None) -> dict[str, Any]:
        if outcome is None:
            return {"usage": None, "response": None, "estimated": True, "metadata": None}
        usage = outcome.usage
        estimated = True
        if usage is None:
            usage = self.estimated_usage(outcome.text or "")
        else:
            estimated = outcome.estimated
        return {
            "usage": usage,
            "response": outcome.text,
            "estimated": estimated,
            "metadata": outcome.metadata,
        }


def _reserving() -> bool:
    # Whether a call starting now reserves on a budget (the input count is part of it).
    session = get_session()
    return session is not None and session.budgeted


_SENTINELS: Final = frozenset({"NotGiven", "Omit"})
# What a request body is mostly made of: exactly these types are never a sentinel, and a set
# lookup is cheaper than reading the type's name.
_BODY_TYPES: Final = frozenset({str, int, float, bool, list, dict, type(None)})
_DEFAULT_PORTS: Final = {"https": 443, "http": 80, "wss": 443, "ws": 80}


def server_metadata(client: Any) -> dict[str, Any]:
    """Where an SDK client sends its requests: ``server_address`` (the host only) and
    ``server_port`` (an int: the URL's, else its scheme's default), from its base URL.

    Never credentials, path or query. Reads ``client.base_url`` (OpenAI, Anthropic) or
    ``client._http_options.base_url`` (google-genai); ``{}`` when there is none or it does
    not parse. OpenTelemetry reads these as ``server.address`` / ``server.port``.
    """
    base = getattr(client, "base_url", None)
    if base is None:
        base = getattr(getattr(client, "_http_options", None), "base_url", None)
    if base is None:
        return {}
    url = str(base)
    # Cached by URL, except for one carrying credentials (never kept past this call).
    found = _server_of(url) if "@" not in url else _server_of.__wrapped__(url)
    return dict(found)


@functools.lru_cache(maxsize=64)
def _server_of(url: str) -> tuple[tuple[str, Any], ...]:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return ()
    if not host:
        return ()
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme.lower())
    if port is None:
        return (("server_address", host),)
    return (("server_address", host), ("server_port", port))


def clean_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request body without the SDKs' "argument not given" sentinels (``omit``, ...)."""
    return {
        k: v
        for k, v in body.items()
        if (kind := type(v)) in _BODY_TYPES or kind.__name__ not in _SENTINELS
    }


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


class StreamFeed:
    """Connects one stream to its call: chunks in, exactly one end out.

    Every method is safe to call in any order and any number of times; only the first end
    (complete, abandon, error) counts. :meth:`relay` and :meth:`arelay` are the one rule for
    how the way a stream stops becomes the way its call ends, for sync and async streams.
    """

    __slots__ = ("acc", "call", "plan")

    def __init__(self, call: CallTracker, plan: Plan, acc: Accumulator) -> None:
        self.call = call
        self.plan = plan
        self.acc = acc

    @protected
    def chunk(self, chunk: Any) -> bool:
        """Take one chunk; False means the user asked not to see it (an injected usage chunk)."""
        try:
            keep = self.acc.feed(chunk)
            if self.acc.got_token:
                self.call.mark_first_token()
            return keep
        except Exception:
            logger.exception("llmctx: could not read a %s stream chunk", self.plan.provider)
            return True

    def relay(self, chunks: Iterable[Any]) -> Iterator[Any]:
        """Yield the chunks the consumer should see and end the call exactly once.

        The end follows how iteration stopped: exhausted -> complete; the consumer closed the
        generator (``break``, ``close()``, garbage collection) -> abandon; ``chunks`` raised
        (or was cancelled) -> error, and the exception propagates. The end is inside the ``try``:
        a Ctrl-C landing just before it still ends the call (as cancelled).
        """
        try:
            for chunk in chunks:
                if self.chunk(chunk):
                    yield chunk
            self.complete()
        except GeneratorExit:
            self.abandon()
            raise
        except BaseException as exc:
            self.error(exc)
            raise

    async def arelay(self, chunks: AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
        """Async twin of :meth:`relay`: the same ends for the same ways of stopping.

        A stream that completes or raises ends its call through the tracker's async end (the
        store write off the loop thread); one closed early (``GeneratorExit``, which must not
        await) ends it at once, as :meth:`abandon`.
        """
        try:
            async for chunk in chunks:
                if self.chunk(chunk):
                    yield chunk
            await self.acomplete()
        except GeneratorExit:
            self.abandon()
            raise
        except BaseException as exc:
            await self.aerror(exc)
            raise

    @protected
    def complete(self) -> None:
        """The stream ended normally."""
        if self.call.finished:
            return
        self.plan.finish(self.call, self._outcome(True))

    @protected
    async def acomplete(self) -> None:
        """Async twin of :meth:`complete`."""
        if self.call.finished:
            return
        await self.plan.afinish(self.call, self._outcome(True))

    @protected
    def abandon(self) -> None:
        """The consumer stopped early (break, close, garbage collection): charge what it got."""
        if self.call.finished:
            return
        self.plan.finish(self.call, self._abandoned())

    @protected
    async def aabandon(self) -> None:
        """Async twin of :meth:`abandon` (an async stream's ``close()``)."""
        if self.call.finished:
            return
        await self.plan.afinish(self.call, self._abandoned())

    def _abandoned(self) -> Outcome:
        outcome = self._outcome(False)
        outcome.metadata = {**(outcome.metadata or {}), "abandoned": True}
        if outcome.usage is None:
            outcome.usage = self.plan.estimated_usage(outcome.text or "")
        outcome.estimated = True
        return outcome

    @protected
    def error(self, exc: BaseException) -> None:
        """The stream raised (or was cancelled) mid-way: charge what it got, record the error."""
        if self.call.finished:
            return
        self.plan.fail(self.call, exc, self._outcome(False))

    @protected
    async def aerror(self, exc: BaseException) -> None:
        """Async twin of :meth:`error`."""
        if self.call.finished:
            return
        await self.plan.afail(self.call, exc, self._outcome(False))

    def _outcome(self, complete: bool) -> Outcome:
        try:
            return self.acc.outcome(complete)
        except Exception:
            logger.exception("llmctx: could not read a %s stream's usage", self.plan.provider)
            return Outcome()
