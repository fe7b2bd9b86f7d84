"""OpenTelemetry GenAI spans and metrics for llmctx's sessions and calls (``llmctx[otel]``).

::

    import llmctx, llmctx.otel

    llmctx.otel.instrument()                 # the global tracer and meter providers
    with llmctx.session("triage", budget=llmctx.Budget(usd="0.50")):
        client.chat.completions.create(...)  # a "chat {model}" span under "invoke_agent triage"

Spans follow the OpenTelemetry GenAI semantic conventions: a session is an
``invoke_agent {name}`` span (``llmctx.session.id``, tags, status, the rolled-up usage and
``llmctx.cost_usd`` of its whole subtree at its end); each model call is a ``chat {model}`` /
``text_completion {model}`` / ``embeddings {model}`` child span with the request and response
model, ``max_tokens``, input / output / cache / reasoning tokens, finish reasons,
time to first chunk, error type and ``llmctx.cost_usd`` (left out when the call could not be
priced, never 0); MCP tool calls are ``execute_tool {server.tool}`` spans; a call refused
before it was sent (budget, unknown price, rate limiter) is a span with error status and an
``llmctx.call.refused`` event. Metrics: ``gen_ai.client.token.usage``,
``gen_ai.client.operation.duration``, ``gen_ai.client.operation.time_to_first_chunk``,
``llmctx.cost``, ``llmctx.calls.refused`` and the gauges ``llmctx.budget.limit`` /
``.spent`` / ``.reserved`` per running budgeted session and dimension.

Prompts and responses are not captured unless asked for (``capture_content=True`` or
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``); what is captured has been
through llmctx's redaction and is cut to ``content_limit`` characters per attribute.

:func:`export_sessions` (``llmctx sessions export --format otlp --endpoint URL``) replays
stored sessions as spans with their original timestamps. See ``docs/otel.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from .._charge import set_call_tracer
from .._context import set_tracing
from .._exceptions import ConfigError
from .._session import add_session_listener
from ._attrs import CAPTURE_CONTENT_ENV, DEFAULT_CONTENT_LIMIT, Content, content_from_env
from ._live import Telemetry
from ._replay import ExportSummary, OTLPExportError, export_sessions, traces_endpoint

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "DEFAULT_CONTENT_LIMIT",
    "ExportSummary",
    "OTLPExportError",
    "export_sessions",
    "instrument",
    "instrumented",
    "traces_endpoint",
    "uninstrument",
]


@dataclass(frozen=True, slots=True)
class _Installed:
    key: tuple[object, ...]
    telemetry: Telemetry
    remove_listener: Callable[[], None]


_lock = threading.Lock()
_installed: _Installed | None = None


def instrument(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    capture_content: bool | None = None,
    *,
    content_limit: int = DEFAULT_CONTENT_LIMIT,
) -> None:
    """Export every session and call of this process as OpenTelemetry spans and metrics.

    Idempotent: a second call with the same arguments does nothing; with other arguments it
    replaces the first. While instrumented, calls outside any session are tracked too (they
    become root spans, or children of your current span).

    Args:
        tracer_provider: where spans go (None: the global one, also if set later).
        meter_provider: where metrics go (None: the global one).
        capture_content: record prompts and responses (after redaction) as span attributes;
            None reads ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (``true``).
        content_limit: characters kept per content attribute.

    Raises:
        ConfigError: a provider that is not one (no ``get_tracer`` / ``get_meter``), a
            ``capture_content`` that is not True, False or None, or a ``content_limit`` that
            is not a positive whole number.
    """
    global _installed
    if type(content_limit) is not int or content_limit <= 0:
        raise ConfigError(
            f"instrument(content_limit={content_limit!r}) takes a positive number of characters"
        )
    _check_provider("tracer_provider", tracer_provider, "get_tracer", "TracerProvider")
    _check_provider("meter_provider", meter_provider, "get_meter", "MeterProvider")
    if capture_content is not None and not isinstance(capture_content, bool):
        raise ConfigError(
            f"instrument(capture_content={capture_content!r}) takes True, False or None (None "
            "reads OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)"
        )
    capture = content_from_env() if capture_content is None else bool(capture_content)
    key = (tracer_provider, meter_provider, capture, content_limit)
    with _lock:
        if _installed is not None and _same(_installed.key, key):
            return
        if _installed is not None:
            _uninstall(_installed)
        telemetry = Telemetry(tracer_provider, meter_provider, Content(capture, content_limit))
        remove = add_session_listener(telemetry)
        set_call_tracer(telemetry)
        set_tracing(True)
        _installed = _Installed(key, telemetry, remove)


def _check_provider(name: str, provider: object, method: str, kind: str) -> None:
    if provider is not None and not callable(getattr(provider, method, None)):
        raise ConfigError(
            f"instrument({name}=...) takes an OpenTelemetry {kind} (from "
            f"opentelemetry.sdk, or None for the global one), got {type(provider).__name__}"
        )


def _same(old: tuple[object, ...], new: tuple[object, ...]) -> bool:
    # Providers by identity (two providers may compare equal), settings by value.
    return old[0] is new[0] and old[1] is new[1] and old[2:] == new[2:]


def _uninstall(installed: _Installed) -> None:
    set_call_tracer(None)
    set_tracing(False)
    installed.telemetry.close(installed.remove_listener)


def uninstrument() -> None:
    """Stop exporting (harmless when not instrumented).

    Calls and sessions already running still end their spans; new ones make none.
    """
    global _installed
    with _lock:
        if _installed is not None:
            _uninstall(_installed)
            _installed = None


def instrumented() -> bool:
    """True while :func:`instrument` is in effect."""
    return _installed is not None
