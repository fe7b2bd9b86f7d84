"""The live exporter: sessions and calls become spans and metrics as they happen.

One :class:`Telemetry` object is at once the charge path's call tracer
(:func:`llmctx._charge.set_call_tracer`) and a session listener
(:func:`llmctx._session.add_session_listener`):

* a session entered is a span started under the current OpenTelemetry context, and made the
  current span while the session is (so the user's own spans and llmctx's calls inside it nest
  under it, in tasks and in threads started with llmctx's helpers); at its end it gets its
  status and the rolled-up usage and cost of its whole subtree;
* a call is told to the tracer as it starts (the parent context and the start time are taken
  then) and its span is made in one go when the call ends, with explicit start and end times:
  nothing stays open while the request runs, so a cancelled or interrupted call cannot leave a
  span unfinished, and a stream's span ends when the stream does, in whatever thread;
* a call refused before it was sent (a budget, an unknown price, the rate limiter) is a span
  with error status and an ``llmctx.call.refused`` event.

Bookkeeping never breaks the user's call: the charge path and the session log and swallow any
exception from here.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation, get_meter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider

from .._exceptions import BudgetExceeded, UnknownPrice
from .._redact import redact_text
from .._usage import CallRecord
from .._version import __version__
from .._waiting import AcquireTimeout, WouldBlock
from ._attrs import (
    OP_TOOL,
    REFUSED_EVENT,
    SESSION_ID,
    TOKEN_INPUT,
    TOKEN_OUTPUT,
    Content,
    call_attributes,
    call_span_name,
    operation_of,
    request_attributes,
    session_attributes,
    session_end_attributes,
    session_span_name,
)

if TYPE_CHECKING:
    from .._charge import CallTracker
    from .._session import Session

__all__ = ["SCOPE", "Telemetry"]

logger = logging.getLogger("llmctx")

#: The instrumentation scope of every span and metric llmctx makes.
SCOPE: Final = "llmctx"

# The conventions' advised histogram buckets (seconds; tokens).
_DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
_TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))

_NO_CONTENT: Final = Content(False)
_REFUSALS = (BudgetExceeded, UnknownPrice, AcquireTimeout, WouldBlock)
_BUDGET_DIMENSIONS: Final = ("usd", "tokens", "requests", "calls", "tool_calls")
BUDGET_DIMENSION: Final = "llmctx.budget.dimension"
BUDGET_INDEX: Final = "llmctx.budget.index"
BUDGET_KEY: Final = "llmctx.budget.key"


def _plain_number(value: Any) -> float | int | None:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _snapshot(budget: Any) -> Any:
    # A budget's own account (a keyed budget shares one across sessions) where the budget
    # can say so; else its ledger's, which is that account for an unkeyed budget.
    own = getattr(budget, "snapshot", None)
    return own() if own is not None else budget.ledger.snapshot()


class _SessionSpan:
    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self.span = span
        self.token = token


class _CallTrace:
    """One call from its start: where its span goes, when it began, what it asked for."""

    __slots__ = (
        "kind",
        "metadata",
        "model",
        "owner",
        "parent",
        "provider",
        "request",
        "session",
        "start",
    )

    def __init__(self, owner: Telemetry, call: CallTracker) -> None:
        self.owner = owner
        self.parent = otel_context.get_current()
        self.start = time.time_ns()
        self.kind = call.kind
        self.provider = call.provider
        self.model = call.model
        self.request = call.request
        self.metadata = call.metadata
        self.session = call.session

    def on_call_end(self, record: CallRecord) -> None:
        self.owner.end_call(self, record)

    def on_call_refused(self, exc: BaseException) -> None:
        self.owner.refuse_call(self, exc)


class Telemetry:
    """Spans and metrics for every session and call of the process (see the module docstring).

    Made and installed by :func:`llmctx.otel.instrument`; one at a time.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        content: Content,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.content = content
        self.tracer: Tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter: Meter = get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.instruments = _instruments_of(meter)
        self.token_usage = self.instruments.token_usage
        self.duration = self.instruments.duration
        self.first_chunk = self.instruments.first_chunk
        self.refusals = self.instruments.refusals
        # Sessions that own a budget, while they run: what the budget gauges report.
        self._budgeted: dict[str, Session] = {}
        self._sessions: dict[int, _SessionSpan] = {}
        self._lock = threading.Lock()
        self._remove_listener: Callable[[], None] | None = None
        self._closing = False
        # Metric attribute sets by (operation, provider, models, error, server): built once per
        # distinct call shape, then handed to every record as they are (the SDK copies them).
        self._metric_attrs: dict[tuple[Any, ...], _MetricAttributes] = {}
        self.instruments.telemetry = self

    def close(self, remove_listener: Callable[[], None]) -> None:
        """Make no new spans; stop listening once the sessions already traced have ended."""
        with self._lock:
            self._closing = True
            if self.instruments.telemetry is self:
                self.instruments.telemetry = None
            if self._sessions:
                self._remove_listener = remove_listener
                return
        remove_listener()

    # ------------------------------------------------------------------ sessions
    def on_session_start(self, session: Session) -> None:
        """Start the session's span under the current context and make it current."""
        if self._closing:
            return
        parent = session.parent
        span = self.tracer.start_span(
            session_span_name(session.name),
            kind=SpanKind.INTERNAL,
            attributes=session_attributes(
                session_id=session.id,
                name=session.name,
                parent_id=parent.id if parent is not None else None,
                tags=session.tags,
            ),
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._sessions[id(session)] = _SessionSpan(span, token)
            if session.budgets:
                self._budgeted[session.id] = session

    def on_session_end(self, session: Session) -> None:
        """Give the session's span its status and rolled-up totals, end it, restore the context."""
        with self._lock:
            held = self._sessions.pop(id(session), None)
            self._budgeted.pop(session.id, None)
            remove = None
            if self._closing and not self._sessions:
                remove, self._remove_listener = self._remove_listener, None
        if remove is not None:
            remove()
        if held is None:
            return
        span = held.span
        # A session left in another context than it was entered in (another task) was never
        # current there: nothing to restore in this one.
        if trace.get_current_span() is span:
            otel_context.detach(held.token)  # type: ignore[arg-type]
        attributes = session_end_attributes(
            status=session.status,
            usage=session.usage,
            cost=session.cost,
            calls=session.call_count,  # all of them: ``calls`` is a bounded window
            error=session.error,
        )
        budgets = session.budgets
        if budgets:
            # The limit that applies: the smallest of the session's budgets in each dimension.
            for dim in _BUDGET_DIMENSIONS:
                given = [v for b in budgets if (v := _plain_number(b.limit(dim))) is not None]
                if given:
                    attributes[f"llmctx.budget.{dim}.limit"] = min(given)
        span.set_attributes(attributes)
        if session.status in ("failed", "cancelled"):
            span.set_status(Status(StatusCode.ERROR, redact_text(session.error or session.status)))
        span.end()

    def observe_budgets(self, state: str) -> list[Observation]:
        """The ``limit``, ``spent`` or ``reserved`` amount of every budget of each running
        session, per dimension; a session with several budgets tells them apart by
        ``llmctx.budget.index`` (their order in ``session.budgets``), a keyed budget also by
        ``llmctx.budget.key``."""
        with self._lock:
            sessions = list(self._budgeted.values())
        out: list[Observation] = []
        for session in sessions:
            budgets = session.budgets
            for index, budget in enumerate(budgets):
                try:
                    snap = None if state == "limit" else _snapshot(budget)
                except Exception:
                    logger.exception("llmctx: could not read the budget of session %s", session.id)
                    continue
                base: dict[str, Any] = {SESSION_ID: session.id}
                if len(budgets) > 1:
                    base[BUDGET_INDEX] = index
                key = getattr(budget, "key", None)
                if isinstance(key, str) and key:
                    base[BUDGET_KEY] = redact_text(key)
                for dim in _BUDGET_DIMENSIONS:
                    limit = budget.limit(dim)
                    if limit is None:
                        continue
                    if snap is None:
                        value = limit
                    elif state == "spent":
                        value = snap.spent.get(dim)
                    else:
                        value = snap.reserved.get(dim)
                    number = _plain_number(value)
                    if number is not None:
                        out.append(Observation(number, {**base, BUDGET_DIMENSION: dim}))
        return out

    # ------------------------------------------------------------------ calls
    def on_call_start(self, call: CallTracker) -> _CallTrace:
        """Note where and when ``call`` started; its span is made when it ends."""
        return _CallTrace(self, call)

    def end_call(self, trace_: _CallTrace, record: CallRecord) -> None:
        """Make the span of a finished (or failed) call and record its metrics."""
        end = time.time_ns()
        operation = operation_of(record.kind, record.metadata)
        request_model = trace_.model if trace_.kind != "tool" else record.model
        content = self.content
        # A session (or an ancestor) that keeps no content keeps none on spans either.
        if content.on:
            session = trace_.session
            if session is not None and not all(node.record_content for node in session.chain()):
                content = _NO_CONTENT
        attributes = call_attributes(
            record,
            operation=operation,
            provider=trace_.provider,
            request_model=request_model,
            content=content,
        )
        status = record.status
        span = self.tracer.start_span(
            call_span_name(operation, request_model or record.model),
            context=trace_.parent,
            kind=SpanKind.INTERNAL if operation == OP_TOOL else SpanKind.CLIENT,
            attributes=attributes,
            start_time=trace_.start,
        )
        if status != "ok":
            if status == "refused":
                span.add_event(REFUSED_EVENT, {"llmctx.reason": redact_text(record.error or "")})
            span.set_status(Status(StatusCode.ERROR, redact_text(record.error or status)))
        span.end(end_time=end)
        latency = record.latency_s
        self._metrics(
            record,
            attributes,
            operation,
            latency if latency is not None else (end - trace_.start) / 1e9,
            trace.set_span_in_context(span, trace_.parent),
        )

    def refuse_call(self, trace_: _CallTrace, exc: BaseException) -> None:
        """Make the span of a call stopped before it was sent."""
        end = time.time_ns()
        operation = operation_of(trace_.kind, trace_.metadata)
        attributes: dict[str, Any] = {ga.GEN_AI_OPERATION_NAME: operation}
        if operation == OP_TOOL:
            if trace_.model:
                attributes[ga.GEN_AI_TOOL_NAME] = trace_.model
        else:
            if trace_.provider:
                attributes[ga.GEN_AI_PROVIDER_NAME] = trace_.provider
            if trace_.model:
                attributes[ga.GEN_AI_REQUEST_MODEL] = trace_.model
            attributes.update(request_attributes(trace_.request))
        attributes[error_attributes.ERROR_TYPE] = type(exc).__name__
        refused = isinstance(exc, _REFUSALS)
        attributes["llmctx.call.status"] = "refused" if refused else "cancelled"
        message = redact_text(str(exc)) or type(exc).__name__
        span = self.tracer.start_span(
            call_span_name(operation, trace_.model),
            context=trace_.parent,
            kind=SpanKind.INTERNAL if operation == OP_TOOL else SpanKind.CLIENT,
            attributes=attributes,
            start_time=trace_.start,
        )
        if refused:
            event: dict[str, Any] = {
                "llmctx.reason": type(exc).__name__,
                "llmctx.message": message,
            }
            if isinstance(exc, BudgetExceeded):
                event["llmctx.budget.dimension"] = exc.dimension
                for name in ("limit", "spent", "reserved", "requested"):
                    number = _plain_number(getattr(exc, name))
                    if number is not None:
                        event[f"llmctx.budget.{name}"] = number
                if exc.session_id:
                    event[SESSION_ID] = exc.session_id
            span.add_event(REFUSED_EVENT, event, timestamp=end)
            self.refusals.add(
                1, {ga.GEN_AI_OPERATION_NAME: operation, "llmctx.reason": type(exc).__name__}
            )
        span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=end)

    def _metrics(
        self,
        record: CallRecord,
        attributes: Mapping[str, Any],
        operation: str,
        seconds: float,
        context: otel_context.Context,
    ) -> None:
        # ``context`` is the call's own span: the SDK's exemplars then point at the call, not
        # at the session around it. Passing it also spares each record a context look-up.
        get = attributes.get
        key = (
            operation,
            get(ga.GEN_AI_PROVIDER_NAME),
            get(ga.GEN_AI_REQUEST_MODEL),
            get(ga.GEN_AI_RESPONSE_MODEL),
            get(error_attributes.ERROR_TYPE),
            get(server_attributes.SERVER_ADDRESS),
            get(server_attributes.SERVER_PORT),
        )
        sets = self._metric_attrs.get(key)
        if sets is None:
            sets = self._metric_attributes(key)
        self.duration.record(seconds, sets.base, context)
        if operation == OP_TOOL:
            return
        if record.ttft_s is not None:
            self.first_chunk.record(record.ttft_s, sets.base, context)
        usage = record.usage
        if record.status == "ok" or usage.total_tokens:
            self.token_usage.record(usage.input_tokens, sets.input, context)
            self.token_usage.record(usage.output_tokens, sets.output, context)
        cost = record.cost
        if cost is not None:  # a tool call returned above: only model calls are priced
            self.instruments.add_cost(sets, cost)

    def _metric_attributes(self, key: tuple[Any, ...]) -> _MetricAttributes:
        base: dict[str, Any] = {}
        for name, value in zip(_METRIC_KEYS, key, strict=True):
            if value is not None:
                base[name] = value
        sets = _MetricAttributes(key, base)
        with self._lock:
            if len(self._metric_attrs) >= _MAX_METRIC_SETS:
                self._metric_attrs.clear()  # a bound, should models or errors never repeat
            self._metric_attrs[key] = sets
        return sets


#: The call-span attributes every metric point carries, in the order of the key of
#: :meth:`Telemetry._metrics`.
_METRIC_KEYS: Final = (
    ga.GEN_AI_OPERATION_NAME,
    ga.GEN_AI_PROVIDER_NAME,
    ga.GEN_AI_REQUEST_MODEL,
    ga.GEN_AI_RESPONSE_MODEL,
    error_attributes.ERROR_TYPE,
    server_attributes.SERVER_ADDRESS,
    server_attributes.SERVER_PORT,
)
_MAX_METRIC_SETS: Final = 4096


class _MetricAttributes:
    """The attribute sets of one call shape: the base, and the base with each token type."""

    __slots__ = ("base", "input", "key", "output")

    def __init__(self, key: tuple[Any, ...], base: dict[str, Any]) -> None:
        self.key = key
        self.base = base
        self.input = {**base, ga.GEN_AI_TOKEN_TYPE: TOKEN_INPUT}
        self.output = {**base, ga.GEN_AI_TOKEN_TYPE: TOKEN_OUTPUT}


class _Instruments:
    """The instruments of one meter, made once and shared by every :class:`Telemetry` on it.

    The SDK hands back the first observable instrument of a name, callbacks and all, when it
    is made again on the same meter: so the callbacks here report from whichever Telemetry is
    current on this meter (``telemetry``), and an ``uninstrument()`` then ``instrument()`` on
    the same providers keeps its budget gauges and its cost total.

    ``llmctx.cost`` is an observable counter over totals kept here (one Decimal sum per
    attribute set, added under a lock): a synchronous counter would cost every priced call
    one more pass of the SDK's measurement path (attribute cleaning, hashing, exemplars), and
    the exported data point, a cumulative monotonic sum, is the same.
    """

    def __init__(self, meter: Meter) -> None:
        self.telemetry: Telemetry | None = None
        self.token_usage = meter.create_histogram(
            gm.GEN_AI_CLIENT_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS),
        )
        self.duration = meter.create_histogram(
            gm.GEN_AI_CLIENT_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.first_chunk = meter.create_histogram(
            gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time from the request to the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.refusals = meter.create_counter(
            "llmctx.calls.refused",
            unit="{call}",
            description="Calls refused before they were sent (budget, unknown price, limiter).",
        )
        self._cost_lock = threading.Lock()
        # attribute-set key -> [attributes, total dollars]
        self._costs: dict[tuple[Any, ...], list[Any]] = {}
        meter.create_observable_counter(
            "llmctx.cost",
            callbacks=[self._observe_cost],
            unit="USD",
            description="Dollars spent on model calls (priced calls only).",
        )
        for state in ("limit", "spent", "reserved"):
            meter.create_observable_gauge(
                f"llmctx.budget.{state}",
                callbacks=[self._budget_callback(state)],
                unit="1",
                description=f"The {state} amount of each running session's own budget, "
                "per dimension (usd, tokens, requests).",
            )

    def add_cost(self, sets: _MetricAttributes, cost: Decimal) -> None:
        """Add one priced call's dollars to the total of its attribute set."""
        with self._cost_lock:
            entry = self._costs.get(sets.key)
            if entry is None:
                self._costs[sets.key] = [sets.base, cost]
            else:
                entry[1] += cost

    def _observe_cost(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._cost_lock:
            totals = [(attrs, total) for attrs, total in self._costs.values()]
        return [Observation(float(total), attrs) for attrs, total in totals]

    def _budget_callback(self, state: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            telemetry = self.telemetry
            return () if telemetry is None else telemetry.observe_budgets(state)

        return observe


# Instruments by meter: the SDK's MeterProvider gives the same Meter for the same scope, so a
# second instrument() on it finds them here. (A proxy meter of a global provider not yet set
# is new each time: instrumenting twice before the global provider is set makes its
# observable instruments twice, and the SDK keeps the first.)
_by_meter: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()
_by_meter_lock = threading.Lock()


def _instruments_of(meter: Meter) -> _Instruments:
    with _by_meter_lock:
        try:
            found = _by_meter.get(meter)
        except TypeError:  # a meter of some other SDK that takes no weak reference
            return _Instruments(meter)
        if found is None:
            found = _by_meter[meter] = _Instruments(meter)
        return found
