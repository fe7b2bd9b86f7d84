"""The charge path of one call: reserve -> request -> settle -> record.

Provider instrumentation, the MCP hub and users' own clients all go through
:class:`CallTracker` (made by :func:`track_call`)::

    with llmctx.track_call(provider="acme", model="acme-large", request=payload,
                           input_tokens=812, max_output_tokens=256) as call:
        reply = send(payload)                        # only runs if every budget had room
        call.finish(usage=llmctx.Usage(input_tokens=..., output_tokens=..., requests=1),
                    response=reply.text)

Entering reserves the worst case (input + max output tokens, priced) on every budget from the
current session up to the root, atomically per budget and all-or-nothing across them, so a call
that would overspend raises :class:`BudgetExceeded` before anything is sent. ``finish`` settles
the reservation with the actual usage, prices it, charges the session tree and writes the
:class:`CallRecord` through to the store before returning it. An exception or cancellation
inside the block releases the reservation and records a failed (or cancelled) call; the
exception propagates unchanged. A tracker that outlives its ``with`` block (a stream consumed
later) is finished or failed explicitly and still charges the session it started in.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _pricing
from ._budget import Amount, Budget
from ._context import current_recorders, current_session
from ._exceptions import BudgetExceeded, ConfigError, UnknownPrice, UnknownPriceWarning
from ._redact import redact, redact_text
from ._session import Session, _classify
from ._usage import CallRecord, CallStatus, Usage

if TYPE_CHECKING:
    from typing import Self

    from ._recorder import Recorder

__all__ = ["CallTracker", "track_call"]

logger = logging.getLogger("llmctx")

_ZERO = Decimal(0)
_warned_models: set[tuple[str | None, str | None]] = set()


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
        stacklevel=4,
    )


def _price(
    model: str | None, usage: Usage, provider: str | None
) -> tuple[Decimal | None, str | None]:
    return _pricing.price_usage(model, usage, provider)


def _estimate(
    model: str | None, input_tokens: int, max_output: int, provider: str | None
) -> Decimal | None:
    if model is None:
        return None
    return _pricing.estimate_cost(model, input_tokens, max_output, provider)


def _release_quietly(budget: Budget, token: str) -> None:
    # A ledger that cannot be reached (Redis down) must not turn into the user's error; its
    # reservations expire on their own.
    try:
        budget.ledger.release(token)
    except Exception:
        logger.exception("llmctx: could not release a reservation on %r", budget)


class CallTracker:
    """One call on its way through the charge path. Made by :func:`track_call`."""

    __slots__ = (
        "_done",
        "_holds",
        "_lock",
        "_recorders",
        "_reserved",
        "_t0",
        "_ttfb",
        "_ttft",
        "free",
        "input_tokens",
        "kind",
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
        *,
        provider: str | None,
        model: str | None,
        request: Any = None,
        kind: str = "llm",
        input_tokens: int = 0,
        max_output_tokens: int = 0,
        free: bool = False,
        session: Session | None = None,
        recorders: tuple[Recorder, ...] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
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
        self.session = session if session is not None else current_session()
        self._recorders = recorders if recorders is not None else current_recorders()
        self.metadata = dict(metadata or {})
        self._holds: list[tuple[Budget, str]] = []
        self._reserved = Amount()
        self._t0 = 0.0
        self._ttfb: float | None = None
        self._ttft: float | None = None
        self._done = False
        self._lock = threading.Lock()
        self.record: CallRecord | None = None

    # ------------------------------------------------------------------ reserve
    def start(self) -> Self:
        """Reserve the worst case on every budget in the session chain and start the clock.

        Raises:
            BudgetExceeded: some budget has no room; nothing is held.
            UnknownPrice: a money budget is active and the model has no price.
        """
        if self.session is not None:
            chain = [s for s in self.session.chain() if s.budget is not None]
            if chain:
                self._reserve(chain)
        self._t0 = time.perf_counter()
        return self

    def _reserve(self, chain: list[Session]) -> None:
        is_llm = self.kind != "tool"  # model calls (chat, completion, embedding) are requests
        tokens = self.input_tokens + self.max_output_tokens
        usd: Decimal | None = _ZERO
        if is_llm and not self.free and any(s.budget and s.budget.usd is not None for s in chain):
            usd = _estimate(self.model, self.input_tokens, self.max_output_tokens, self.provider)
            if usd is None:
                raise UnknownPrice(self.model or "<unknown model>", self.provider)
        amount = Amount(usd=usd or _ZERO, tokens=tokens, requests=1 if is_llm else 0)
        seen: set[int] = set()
        holds: list[tuple[Budget, str]] = []
        try:
            for node in chain:
                budget = node.budget
                assert budget is not None
                # One ledger shared by several sessions of the chain is charged once.
                if id(budget.ledger) in seen:
                    continue
                seen.add(id(budget.ledger))
                try:
                    holds.append((budget, budget.ledger.reserve(amount, budget)))
                except BudgetExceeded as exc:
                    exc.session_id, exc.session_name = node.id, node.name
                    raise
        except BaseException:
            for budget, token in holds:
                _release_quietly(budget, token)
            raise
        self._holds = holds
        self._reserved = amount

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
        """Settle with the actual usage, charge the session tree, write the record.

        Idempotent: a second finish (or a fail after finish) returns the first record.
        """
        return self._end(
            "ok", None, usage, response, tool_calls, raw_usage, estimated, model, metadata
        )

    def fail(
        self,
        exc: BaseException | None = None,
        *,
        usage: Usage | None = None,
        response: str | None = None,
        estimated: bool = True,
    ) -> CallRecord:
        """Record a failed or cancelled call; release the reservation (or settle what was used).

        ``usage`` is for a call that consumed tokens before it broke (an interrupted stream).
        """
        status: CallStatus = (
            "cancelled" if exc is None or _classify(type(exc)) == "cancelled" else "error"
        )
        return self._end(
            status, exc, usage, response, None, None, estimated and usage is not None, None, None
        )

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
        with self._lock:
            if self.record is not None:
                return self.record
            self._done = True
            return self._record_end(
                status, exc, usage, response, tool_calls, raw_usage, estimated, model, metadata
            )

    def _record_end(
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
                cost, note = _price(self.model, usage, self.provider)
            except Exception:
                logger.exception("llmctx: pricing failed for model %r", self.model)
                cost, note = None, "pricing failed (see the llmctx log)"
            if cost is None and self._reserved.usd:
                # Fail closed: a call that reserved money but cannot be priced afterwards is
                # charged what it reserved, never $0.
                cost, note = self._reserved.usd, f"{note}; charged the reserved worst case"
            elif cost is None and status == "ok":
                _warn_unpriced(self.model, self.provider, note)
        # Redact only what will be kept: with no session and no recorder nothing is stored,
        # and the record goes back only to the caller who wrote the request.
        keeps = self.session is not None or bool(self._recorders)
        record = CallRecord(
            session_id=self.session.id if self.session is not None else None,
            provider=self.provider,
            model=self.model,
            kind=self.kind,
            request=redact(self.request) if keeps else self.request,
            response=response,
            tool_calls=redact(tool_calls) if keeps and tool_calls else tool_calls,
            usage=usage,
            raw_usage=raw_usage,
            cost=cost,
            cost_note=note,
            status=status,
            error=None if exc is None else redact_text(f"{type(exc).__name__}: {exc}"),
            estimated=estimated,
            latency_s=latency,
            ttfb_s=self._ttfb,
            ttft_s=self._ttft,
            metadata={**self.metadata, **(metadata or {})},
        )
        self.record = record
        self._settle(record, status)
        if self.session is not None:
            self.session._charge(record, note)
        for rec in self._recorders:
            rec._add(record)
        return record

    def _settle(self, record: CallRecord, status: CallStatus) -> None:
        holds, self._holds = self._holds, []
        used = record.usage
        if status != "ok" and not used.total_tokens and not used.requests:
            for budget, token in holds:
                _release_quietly(budget, token)
            return
        actual = Amount(usd=record.cost or _ZERO, tokens=used.total_tokens, requests=used.requests)
        for budget, token in holds:
            try:
                budget.ledger.settle(token, actual)
            except Exception:
                logger.exception("llmctx: could not settle a reservation on %r", budget)

    @property
    def finished(self) -> bool:
        """True once finish() or fail() ran."""
        return self._done

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Self:
        return self.start()

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


def track_call(
    *,
    provider: str | None,
    model: str | None,
    request: Any = None,
    kind: str = "llm",
    input_tokens: int = 0,
    max_output_tokens: int = 0,
    free: bool = False,
    session: Session | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> CallTracker:
    """Put one call on the charge path; use the result with ``with`` (or ``start()``/``finish()``).

    Args:
        provider: e.g. ``"openai"``, ``"anthropic"``, ``"llama-cpp"``, ``"mcp"``.
        model: the model name used for pricing (for tools: ``"server.tool"``).
        request: the request payload; redacted before it is recorded.
        kind: ``"llm"`` (priced, counts as a request), ``"embedding"``, or ``"tool"`` (no token
            cost; latency, status and error are still recorded).
        input_tokens: prompt tokens counted before sending (for the reservation).
        max_output_tokens: the call's output limit (for the reservation).
        free: price the call at $0 whatever the model (e.g. a local model without a set price).
        session: charge this session instead of the current one.
        metadata: extra fields kept on the record.

    Returns:
        A :class:`CallTracker`; entering it reserves, leaving it records.
    """
    return CallTracker(
        provider=provider,
        model=model,
        request=request,
        kind=kind,
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        free=free,
        session=session,
        metadata=metadata,
    )
