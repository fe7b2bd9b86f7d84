"""OpenTelemetry spans of real SDK calls against llama.cpp's OpenAI-compatible server.

The real ``openai`` SDK, instrumented by llmctx, talks to the server (fixture ``llama_server``
in conftest.py: the bundled SmolLM2 on loopback); llmctx.otel writes into the SDK's in-memory
span exporter, so the test reads what a backend would receive: where the request went.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.semconv.attributes import server_attributes  # noqa: E402

import llmctx  # noqa: E402
import llmctx.otel  # noqa: E402

SERVED_MODEL = "SmolLM2-135M-Instruct"  # the --model_alias the conftest starts the server with
MESSAGES = [{"role": "user", "content": "Name one colour."}]


@pytest.fixture(autouse=True)
def _price() -> Iterator[None]:
    """Price the served model, so its calls carry a cost and warn of no unknown price."""
    with llmctx.price_override(SERVED_MODEL, input_per_mtok="1", output_per_mtok="2"):
        yield


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """llmctx.otel into an in-memory exporter and reader; uninstrumented afterwards."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    llmctx.otel.instrument(tracer_provider, meter_provider)
    exporter.reader = reader  # type: ignore[attr-defined]
    try:
        yield exporter
    finally:
        llmctx.otel.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()


def _chat_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"chat {SERVED_MODEL}"]


def test_sdk_call_span_names_the_server_it_went_to(
    llama_server: Any, spans: InMemorySpanExporter
) -> None:
    """A whole and a streamed chat call through the instrumented openai SDK each have
    server.address and server.port on their span: the host and port of the base URL."""
    where = urlsplit(llama_server.base_url)
    client = llmctx.instrument(
        openai.OpenAI(base_url=llama_server.base_url, api_key="sk-local-unused-0000000000")
    )
    with llmctx.session("served", store="memory:"):
        client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=4)
        for _ in client.chat.completions.create(
            model=SERVED_MODEL, messages=MESSAGES, max_tokens=4, stream=True
        ):
            pass
    calls = _chat_spans(spans)
    assert len(calls) == 2
    for span in calls:
        a = span.attributes or {}
        assert a.get(server_attributes.SERVER_ADDRESS) == where.hostname == "127.0.0.1"
        assert a.get(server_attributes.SERVER_PORT) == where.port
    # The duration metric is split by server too, as the conventions advise.
    data = spans.reader.get_metrics_data()  # type: ignore[attr-defined]
    points = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "gen_ai.client.operation.duration"
        for p in m.data.data_points
    ]
    assert {p.attributes.get(server_attributes.SERVER_PORT) for p in points} == {where.port}


def test_async_sdk_call_span_names_the_server_it_went_to(
    llama_server: Any, spans: InMemorySpanExporter
) -> None:
    """The async openai SDK's call span has the same server.address and server.port."""
    where = urlsplit(llama_server.base_url)

    async def main() -> None:
        client = llmctx.instrument(
            openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="sk-local-unused-00000")
        )
        try:
            async with llmctx.session("served-async", store="memory:"):
                await client.chat.completions.create(
                    model=SERVED_MODEL, messages=MESSAGES, max_tokens=4
                )
        finally:
            await client.close()

    asyncio.run(main())
    (span,) = _chat_spans(spans)
    a = span.attributes or {}
    assert a.get(server_attributes.SERVER_ADDRESS) == "127.0.0.1"
    assert a.get(server_attributes.SERVER_PORT) == where.port
