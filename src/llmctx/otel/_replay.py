"""Replay stored sessions as OpenTelemetry spans with their original timestamps.

A user who recorded locally (SQLite) or in PostgreSQL can push what was recorded to any OTLP
backend later: every session becomes an ``invoke_agent`` span, every call a ``chat`` /
``embeddings`` / ``execute_tool`` span under its session, with the same attributes the live
exporter sets (:mod:`llmctx.otel._attrs`).

Span and trace ids are derived from the stored ids (a session's trace id from its root
session), so exporting the same sessions twice sends the same spans, and a child session
exported alone still lands in its root's trace.

Stored timestamps: a session row has ``started_at`` / ``ended_at``; a call record has its
``started_at`` and ``latency_s``, so a call span runs from ``started_at`` to
``started_at + latency_s``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .._exceptions import ConfigError, LLMCtxError
from .._redact import redact_text, redact_url
from .._usage import CallRecord
from .._version import __version__
from ..stores._base import SessionRecord, Store
from ._attrs import (
    OP_TOOL,
    Content,
    call_attributes,
    call_span_name,
    content_from_env,
    operation_of,
    session_attributes,
    session_end_attributes,
    session_span_name,
)
from ._live import SCOPE

__all__ = ["ExportSummary", "OTLPExportError", "export_sessions", "traces_endpoint"]

_BATCH: Final = 512
_REPLAYED: Final = "llmctx.replayed"


class OTLPExportError(LLMCtxError):
    """The OTLP endpoint did not accept the spans (unreachable, or it answered an error)."""


#: Where the OTLP/HTTP exporter logs its retries and its failures (its client logs there too).
EXPORTER_LOGGER: Final = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_ERRNO: Final = re.compile(r"\[Errno -?\d+\] ([^)\"'\]]+)")


class _Reasons(logging.Handler):
    """Keeps why the exporter's last attempt failed, for the error that says it did not."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason: str | None = None
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg if isinstance(record.msg, str) else ""
        args = record.args if isinstance(record.args, tuple) else ()
        if message.startswith("Transient error") and args:
            self.retries += 1
            self.reason = _short_reason(args[0])
        elif message.startswith("Failed to export") and len(args) == 3:
            self.reason = f"HTTP {args[1]} {args[2]}".strip()


def _short_reason(error: object) -> str:
    # "HTTPConnectionPool(...): Max retries exceeded ... [Errno 111] Connection refused))"
    # reads as "connection refused"; anything else is cut short. Never a credential: the
    # exporter's messages name host and port, and redact_text takes what looks secret.
    text = str(error)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip().lower()
    text = redact_text(text)
    return text if len(text) <= 160 else text[:157] + "..."


@contextmanager
def _exporter_reasons() -> Iterator[_Reasons]:
    logger = logging.getLogger(EXPORTER_LOGGER)
    handler = _Reasons()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What :func:`export_sessions` sent."""

    sessions: int
    calls: int
    spans: int
    endpoint: str | None


class _Ids(IdGenerator):
    """Hands out the ids set just before each span is started (derived from stored ids)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


def _id(kind: str, value: str, bits: int) -> int:
    digest = hashlib.sha256(f"{kind}:{value}".encode()).digest()
    number = int.from_bytes(digest[: bits // 8], "big")
    return number or 1


def _ns(when: datetime) -> int:
    return int(when.timestamp() * 1e9)


def traces_endpoint(url: str) -> str:
    """The OTLP/HTTP traces URL for ``url``: ``/v1/traces`` is added to a bare base URL.

    Raises:
        ConfigError: ``url`` is not an http(s) URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--endpoint takes an OTLP/HTTP URL such as http://localhost:6006/v1/traces or "
            f"http://localhost:4318, got {redact_url(url)!r}"
        )
    if parts.path.rstrip("/") == "":
        return url.rstrip("/") + "/v1/traces"
    return url


def _root_of(record: SessionRecord, known: dict[str, SessionRecord], store: Store) -> str:
    seen: set[str] = set()
    node = record
    while node.parent_id and node.parent_id not in seen:
        seen.add(node.id)
        parent = known.get(node.parent_id) or store.get_session(node.parent_id)
        if parent is None:
            break
        known.setdefault(parent.id, parent)
        node = parent
    return node.id


def _session_end(record: SessionRecord, calls: Sequence[CallRecord]) -> datetime:
    if record.ended_at is not None:
        return record.ended_at
    candidates = [c.started_at + timedelta(seconds=c.latency_s or 0.0) for c in calls]
    candidates.append(record.started_at)
    beat = getattr(record, "heartbeat_at", None)  # rows of older stores have none
    if isinstance(beat, datetime):
        candidates.append(beat)
    return max(candidates)


def _parent_context(trace_id: int, span_id: int) -> Any:
    parent = SpanContext(
        trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def build_spans(
    store: Store, sessions: Sequence[SessionRecord], *, content: Content
) -> tuple[list[ReadableSpan], int]:
    """The spans of ``sessions`` and their calls, built with a private SDK provider.

    Returns:
        The finished spans and how many calls they include.
    """
    ids = _Ids()
    collected = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "llmctx"}), id_generator=ids
    )
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer(SCOPE, __version__)
    known = {r.id: r for r in sessions}
    calls = store.list_calls([r.id for r in sessions])
    by_session: dict[str | None, list[CallRecord]] = {}
    for call in calls:
        by_session.setdefault(call.session_id, []).append(call)
    try:
        for record in sessions:
            trace_id = _id("trace", _root_of(record, known, store), 128)
            span_id = _id("session", record.id, 64)
            own = by_session.get(record.id, [])
            context = (
                _parent_context(trace_id, _id("session", record.parent_id, 64))
                if record.parent_id
                else None
            )
            ids.trace_id, ids.span_id = trace_id, span_id
            attributes = session_attributes(
                session_id=record.id, name=record.name, parent_id=record.parent_id, tags=record.tags
            )
            attributes.update(
                session_end_attributes(
                    status=record.status,
                    usage=record.usage,
                    cost=None if record.unpriced_calls else record.cost,
                    calls=record.calls,
                    error=record.error,
                )
            )
            attributes[_REPLAYED] = True
            span = tracer.start_span(
                session_span_name(record.name),
                context=context,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=_ns(record.started_at),
            )
            if record.status in ("failed", "cancelled"):
                span.set_status(
                    Status(StatusCode.ERROR, redact_text(record.error or record.status))
                )
            span.end(end_time=_ns(_session_end(record, own)))
            session_context = _parent_context(trace_id, span_id)
            for call in own:
                operation = operation_of(call.kind, call.metadata)
                call_attrs = call_attributes(
                    call,
                    operation=operation,
                    provider=call.provider,
                    request_model=call.model,
                    content=content,
                )
                call_attrs[_REPLAYED] = True
                ids.span_id = _id("call", call.id, 64)
                start = call.started_at
                end = start + timedelta(seconds=call.latency_s or 0.0)
                span = tracer.start_span(
                    call_span_name(operation, call.model),
                    context=session_context,
                    kind=SpanKind.INTERNAL if operation == OP_TOOL else SpanKind.CLIENT,
                    attributes=call_attrs,
                    start_time=_ns(start),
                )
                if call.status != "ok":
                    span.set_status(
                        Status(StatusCode.ERROR, redact_text(call.error or call.status))
                    )
                span.end(end_time=_ns(end))
    finally:
        provider.shutdown()
    return list(collected.get_finished_spans()), len(calls)


def export_sessions(
    store: Store,
    sessions: Sequence[SessionRecord],
    *,
    endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    capture_content: bool | None = None,
) -> ExportSummary:
    """Send stored ``sessions`` (with their calls) to an OTLP endpoint as spans.

    Args:
        store: where the sessions and calls are.
        sessions: the session rows to send (``store.session_tree(id)`` for one with its
            descendants).
        endpoint: an OTLP/HTTP URL (a bare ``http://host:port`` gets ``/v1/traces``).
        exporter: any OpenTelemetry ``SpanExporter`` instead of ``endpoint`` (tests, gRPC).
        headers: extra HTTP headers for the endpoint (an API key: never printed).
        timeout: seconds per OTLP request.
        capture_content: include the stored prompts and responses (redacted, size-capped);
            None reads ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``.

    Returns:
        How many sessions, calls and spans were sent.

    Raises:
        ConfigError: neither or both of ``endpoint`` and ``exporter`` were given, or a bad URL.
        OTLPExportError: the endpoint did not take the spans.
    """
    if (endpoint is None) == (exporter is None):
        raise ConfigError("export_sessions() takes one of endpoint=URL or exporter=SpanExporter")
    url = None
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        url = traces_endpoint(endpoint)
        exporter = OTLPSpanExporter(endpoint=url, headers=headers, timeout=int(timeout))
    assert exporter is not None
    content = Content(content_from_env() if capture_content is None else capture_content)
    spans, n_calls = build_spans(store, sessions, content=content)
    where = redact_url(url) if url else type(exporter).__name__
    try:
        with _exporter_reasons() as reasons:
            for start in range(0, len(spans), _BATCH):
                result = exporter.export(spans[start : start + _BATCH])
                if result is not SpanExportResult.SUCCESS:
                    why = reasons.reason or "it reported a failure"
                    if reasons.retries:
                        why += f", after {reasons.retries} retries"
                    raise OTLPExportError(
                        f"{where} did not accept the spans ({why}; sent {start} of "
                        f"{len(spans)} before this batch); check that the endpoint is up and "
                        "is an OTLP/HTTP traces URL"
                    )
    finally:
        exporter.shutdown()
    return ExportSummary(sessions=len(sessions), calls=n_calls, spans=len(spans), endpoint=url)
