"""llmctx.otel at the attribute level: the SDK's in-memory span exporter and metric reader.

Calls go through the real charge path: llmctx.testing.FakeModel (deterministic, no network),
the real ``openai`` SDK over ``httpx2.MockTransport`` where a provider payload or a request that
must never be sent matters (a fake transport, because the point is to count what reaches the
network), real MCP server processes for tool spans, and a real SQLite store for the replay.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.trace import StatusCode

import llmctx
import llmctx.otel
from llmctx.stores import SQLiteStore
from llmctx.testing import FakeModel

TINY_SERVER = Path(__file__).resolve().parent / "mcp" / "servers" / "tiny_server.py"


class Telemetry:
    """What one test's spans and metrics went to."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("test")

    def instrument(self, **kwargs: Any) -> None:
        llmctx.otel.instrument(self.tracer_provider, self.meter_provider, **kwargs)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        found = [s for s in self.finished() if s.name == name]
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]

    def metrics(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    """llmctx instrumented into private in-memory providers; uninstrumented afterwards."""
    t = Telemetry()
    t.instrument()
    yield t
    llmctx.otel.uninstrument()
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_spans_nest_user_span_session_child_session_call(otel: Telemetry) -> None:
    """A call in a child session is a `chat {model}` span under that session's
    `invoke_agent` span, under its parent session's, under the user's own current span."""
    model = FakeModel(reply="hello there friend")
    with otel.tracer.start_as_current_span("request") as user:
        with llmctx.session("outer", store="memory:") as outer:
            model.complete("one two")
            with llmctx.session("inner", tags={"team": "search"}) as inner:
                model.complete("three")
    root = otel.named("request")
    outer_span = otel.named("invoke_agent outer")
    inner_span = otel.named("invoke_agent inner")
    calls = [s for s in otel.finished() if s.name == "chat fake-model"]
    assert root.context.span_id == user.get_span_context().span_id
    assert parent_of(outer_span) == root.context.span_id
    assert parent_of(inner_span) == outer_span.context.span_id
    assert sorted(parent_of(c) for c in calls) == sorted(
        [outer_span.context.span_id, inner_span.context.span_id]
    )
    assert {s.context.trace_id for s in otel.finished()} == {root.context.trace_id}
    a = inner_span.attributes or {}
    assert a["llmctx.session.id"] == inner.id and a["llmctx.session.parent_id"] == outer.id
    assert a["llmctx.session.tag.team"] == "search" and a[ga.GEN_AI_AGENT_NAME] == "inner"
    assert a[ga.GEN_AI_OPERATION_NAME] == "invoke_agent"
    # The session span is no longer current once the session has exited.
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_call_span_attributes_follow_the_genai_conventions(otel: Telemetry) -> None:
    """A chat call's span carries operation, provider, request/response model, max_tokens,
    input/output tokens, llmctx.session.id and the cost in dollars."""
    model = FakeModel("otel-priced", reply="a b c")
    with llmctx.price_override("otel-priced", input_per_mtok="1000000", output_per_mtok="2000000"):
        with llmctx.session("s", store="memory:") as s:
            model.complete([{"role": "user", "content": "x y"}], max_tokens=7)
    span = otel.named("chat otel-priced")
    a = span.attributes or {}
    assert span.kind is trace.SpanKind.CLIENT
    assert a[ga.GEN_AI_OPERATION_NAME] == "chat"
    assert a[ga.GEN_AI_PROVIDER_NAME] == "fake"
    assert a[ga.GEN_AI_REQUEST_MODEL] == "otel-priced"
    assert a[ga.GEN_AI_RESPONSE_MODEL] == "otel-priced"
    assert a[ga.GEN_AI_REQUEST_MAX_TOKENS] == 7
    assert a[ga.GEN_AI_USAGE_INPUT_TOKENS] == 2 and a[ga.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert a["llmctx.cost_usd"] == pytest.approx(2 * 1 + 3 * 2)
    assert a["llmctx.session.id"] == s.id
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time >= span.start_time


def test_session_span_rolls_up_its_subtree_at_its_end(otel: Telemetry) -> None:
    """The root session's span has the tokens and dollars of every call below it, child
    sessions included, and its status."""
    model = FakeModel("otel-priced", reply="a b")
    with llmctx.price_override("otel-priced", input_per_mtok="1000000", output_per_mtok="1000000"):
        with llmctx.session("root", store="memory:", budget=llmctx.Budget(usd="100")):
            model.complete("one")
            with llmctx.session("child"):
                model.complete("two three")
    a = otel.named("invoke_agent root").attributes or {}
    # Not gen_ai.usage.*: backends add those up over a trace and would count them twice.
    assert a["llmctx.usage.input_tokens"] == 3 and a["llmctx.usage.output_tokens"] == 4
    assert ga.GEN_AI_USAGE_INPUT_TOKENS not in a
    assert a["llmctx.cost_usd"] == pytest.approx(7.0)
    assert a["llmctx.session.calls"] == 2 and a["llmctx.session.status"] == "completed"
    assert a["llmctx.budget.usd.limit"] == 100.0


def test_unpriced_call_omits_the_cost_instead_of_zero(otel: Telemetry) -> None:
    """A call llmctx cannot price has no llmctx.cost_usd (never 0) and says why; its session
    span has no cost either."""
    with llmctx.session("s", store="memory:"), pytest.warns(llmctx.UnknownPriceWarning):
        with llmctx.track_call(provider="acme", model="no-such-model-otel") as call:
            call.finish(usage=llmctx.Usage(input_tokens=3, output_tokens=1, requests=1))
    a = otel.named("chat no-such-model-otel").attributes or {}
    assert "llmctx.cost_usd" not in a and "no price" in str(a["llmctx.cost_note"])
    assert "llmctx.cost_usd" not in (otel.named("invoke_agent s").attributes or {})


def test_failed_call_and_failed_session_have_error_status(otel: Telemetry) -> None:
    """An exception from the model makes the call span and the session span errors with
    error.type, and the exception still reaches the caller."""
    model = FakeModel(fail_with=TimeoutError("upstream timed out"))
    with pytest.raises(TimeoutError), llmctx.session("s", store="memory:"):
        model.complete("hi")
    call = otel.named("chat fake-model")
    session = otel.named("invoke_agent s")
    for span in (call, session):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "TimeoutError"
    assert "upstream timed out" in (call.status.description or "")


def test_cancelled_session_ends_its_span_and_restores_the_context(otel: Telemetry) -> None:
    """A task cancelled inside a session ends the session's span (cancelled, error status) and
    leaves no llmctx span current in the caller."""

    async def main() -> None:
        started = asyncio.Event()

        async def work() -> None:
            async with llmctx.session("doomed", store="memory:"):
                started.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(work())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert trace.get_current_span() is trace.INVALID_SPAN

    asyncio.run(main())
    span = otel.named("invoke_agent doomed")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["llmctx.session.status"] == "cancelled"


def test_keyboard_interrupt_in_a_session_ends_its_span_and_holds_nothing(otel: Telemetry) -> None:
    """Ctrl-C inside a session ends the session's span (cancelled), restores the context and
    leaves the exporter holding no session; the next session is traced normally."""
    with pytest.raises(KeyboardInterrupt), llmctx.session("ctrl-c", store="memory:"):
        FakeModel().complete("x")
        raise KeyboardInterrupt
    span = otel.named("invoke_agent ctrl-c")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["llmctx.session.status"] == "cancelled"
    assert trace.get_current_span() is trace.INVALID_SPAN
    installed = llmctx.otel._installed
    assert installed is not None and not installed.telemetry._sessions
    with llmctx.session("next", store="memory:"):
        FakeModel().complete("y")
    assert parent_of(otel.named("invoke_agent next")) is None


def test_threads_started_with_llmctx_helpers_parent_under_the_session(otel: Telemetry) -> None:
    """Calls made in ContextThreadPoolExecutor workers and llmctx.wrap threads are children of
    the session span they were submitted from."""
    model = FakeModel()
    with llmctx.session("pooled", store="memory:"):
        with llmctx.ContextThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(lambda i: model.complete(f"word {i}"), range(6)))
        thread = threading.Thread(target=llmctx.wrap(lambda: model.complete("in a thread")))
        thread.start()
        thread.join()
    session = otel.named("invoke_agent pooled")
    calls = [s for s in otel.finished() if s.name == "chat fake-model"]
    assert len(calls) == 7
    assert {parent_of(c) for c in calls} == {session.context.span_id}


def test_asyncio_tasks_parent_under_their_own_sessions(otel: Telemetry) -> None:
    """Concurrent tasks, each in its own child session, put their calls under their own
    session's span, not a sibling's."""
    model = FakeModel()

    async def agent(name: str) -> None:
        async with llmctx.session(name):
            for _ in range(3):
                await model.acomplete(f"from {name}")
                await asyncio.sleep(0)

    async def main() -> None:
        async with llmctx.session("fleet", store="memory:"):
            await asyncio.gather(agent("a"), agent("b"), agent("c"))

    asyncio.run(main())
    sessions = {
        s.attributes["gen_ai.agent.name"]: s
        for s in otel.finished()
        if s.attributes and s.name.startswith("invoke_agent")
    }  # type: ignore[index]
    for name in ("a", "b", "c"):
        session = sessions[name]
        children = [
            s
            for s in otel.finished()
            if s.name == "chat fake-model" and parent_of(s) == session.context.span_id
        ]
        assert len(children) == 3
        assert parent_of(session) == sessions["fleet"].context.span_id


def test_stream_span_ends_when_the_stream_does(otel: Telemetry) -> None:
    """A streamed call has no span while it is consumed; its span ends when the stream ends
    (after its session exited), still under that session, with the time to first chunk."""
    model = FakeModel(reply="one two three four")
    with llmctx.session("streaming", store="memory:"):
        stream = model.stream("go")
        first = next(iter(stream))
    assert first and not [s for s in otel.finished() if s.name == "chat fake-model"]
    rest = list(stream)
    assert len(rest) == 3
    span = otel.named("chat fake-model")
    session = otel.named("invoke_agent streaming")
    assert parent_of(span) == session.context.span_id
    assert span.end_time is not None and session.end_time is not None
    assert span.end_time > session.end_time  # ended when the stream did, after the session
    assert (span.attributes or {})[ga.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert ga.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK in (span.attributes or {})


def test_stream_closed_early_ends_its_span_at_close(otel: Telemetry) -> None:
    """A stream abandoned after one chunk ends its span when it is closed, with the usage it
    was charged (estimated)."""
    model = FakeModel(reply="one two three four")
    with llmctx.session("s", store="memory:"):
        stream = model.stream("go")
        for _ in stream:
            break
        assert not [s for s in otel.finished() if s.name == "chat fake-model"]
        stream.close()
    a = otel.named("chat fake-model").attributes or {}
    assert a[ga.GEN_AI_USAGE_OUTPUT_TOKENS] == 1 and a["llmctx.usage.estimated"] is True


# -- the openai SDK over a fake transport ----------------------------------------------------


def _openai_client(handler: Any, *, api_key: str = "sk-test-not-a-real-key-000000") -> Any:
    openai = pytest.importorskip("openai")
    httpx2 = pytest.importorskip("httpx2")
    client = openai.OpenAI(
        api_key=api_key,
        base_url="https://llm.example.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    return llmctx.instrument(client)


def _chat_reply(text: str, *, model: str = "gpt-4o-mini-2024-07-18") -> dict[str, Any]:
    return {
        "id": "chatcmpl-otel",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 3,
            "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }


def test_openai_call_has_response_model_and_cache_tokens(otel: Telemetry) -> None:
    """An OpenAI chat completion's span has the dated response model and the cache-read
    tokens the provider reported."""
    httpx2 = pytest.importorskip("httpx2")
    client = _openai_client(lambda request: httpx2.Response(200, json=_chat_reply("hi")))
    with llmctx.price_override("gpt-4o-mini", input_per_mtok="1", output_per_mtok="2"):
        with llmctx.session("s", store="memory:"):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=20,
                temperature=0.5,
            )
    a = otel.named("chat gpt-4o-mini").attributes or {}
    assert a[ga.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[ga.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert a[ga.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert a[ga.GEN_AI_REQUEST_MAX_TOKENS] == 20 and a[ga.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert a[ga.GEN_AI_USAGE_INPUT_TOKENS] == 11 and a[ga.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert a[ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 4
    assert a["llmctx.cost_usd"] > 0


def test_budget_refusal_is_an_error_span_with_an_event_and_sends_nothing(
    otel: Telemetry,
) -> None:
    """A call the budget refuses never reaches the network; its span has error status,
    error.type BudgetExceeded and an llmctx.call.refused event with the budget's numbers."""
    httpx2 = pytest.importorskip("httpx2")
    sent: list[Any] = []

    def handler(request: Any) -> Any:
        sent.append(request)
        return httpx2.Response(200, json=_chat_reply("hi"))

    client = _openai_client(handler)
    with llmctx.session("tight", store="memory:", budget=llmctx.Budget(tokens=5)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=50
            )
    assert sent == []
    span = otel.named("chat gpt-4o-mini")
    assert parent_of(span) == otel.named("invoke_agent tight").context.span_id
    assert span.status.status_code is StatusCode.ERROR
    a = span.attributes or {}
    assert a["error.type"] == "BudgetExceeded" and a["llmctx.call.status"] == "refused"
    assert ga.GEN_AI_USAGE_INPUT_TOKENS not in a
    (event,) = span.events
    assert event.name == "llmctx.call.refused"
    e = event.attributes or {}
    assert e["llmctx.budget.dimension"] == "tokens" and e["llmctx.budget.limit"] == 5
    assert e["llmctx.budget.requested"] > 5 and e["llmctx.session.id"] == s.id
    assert otel.metrics()["llmctx.calls.refused"][0].value == 1


def test_async_refusal_is_traced_too(otel: Telemetry) -> None:
    """An async call refused by its budget is the same error span with the refusal event."""
    model = FakeModel()

    async def main() -> None:
        async with llmctx.session("tight", store="memory:", budget=llmctx.Budget(tokens=3)):
            with pytest.raises(llmctx.BudgetExceeded):
                async with llmctx.track_call(provider="fake", model="m", input_tokens=10):
                    pass
            await model.acomplete("a")  # fits after all? no: 1 + 64 > 3, refused as well

    with pytest.raises(llmctx.BudgetExceeded):
        asyncio.run(main())
    refused = [s for s in otel.finished() if s.name.startswith("chat ")]
    assert len(refused) == 2
    assert all(s.events[0].name == "llmctx.call.refused" for s in refused)


SECRETS_BLOB = (
    "key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCDEF and "
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX3ZhbHVlX2hlcmU "
    "db postgresql://app:Sup3rS3cretPw@db:5432/app aws AKIAIOSFODNN7EXAMPLQ"
)
SECRET_VALUES = (
    "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX3ZhbHVlX2hlcmU",
    "Sup3rS3cretPw",
    "AKIAIOSFODNN7EXAMPLQ",
)


def _every_value(spans: list[ReadableSpan]) -> str:
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.append(span.status.description or "")
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
    return "\n".join(parts)


def test_no_secret_reaches_any_span_attribute_event_or_status(otel: Telemetry) -> None:
    """With content capture on, secrets quoted in the session name, tags, prompt, reply, the
    API key, an error and a refusal reach no span name, attribute, event or status."""
    pytest.importorskip("detect_secrets")
    from test_redact_corpus import CORPUS, EXTRA, _secrets

    httpx2 = pytest.importorskip("httpx2")
    blob = " | ".join(
        [SECRETS_BLOB] + [line for _, line in CORPUS] + [line for _, line, _ in EXTRA]
    )
    otel.instrument(capture_content=True)
    client = _openai_client(
        lambda request: httpx2.Response(200, json=_chat_reply(f"echo {blob}")),
        api_key=SECRET_VALUES[0],
    )
    with llmctx.price_override("gpt-4o-mini", input_per_mtok="1", output_per_mtok="2"):
        with llmctx.session(f"run {blob}", store="memory:", tags={"note": blob}):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": blob}]
            )
            with pytest.raises(RuntimeError):
                FakeModel(fail_with=RuntimeError(blob)).complete(blob)
            with (
                pytest.raises(llmctx.BudgetExceeded),
                llmctx.session(f"tight {blob}", budget=llmctx.Budget(tokens=1)),
            ):
                FakeModel().complete(blob)
    text = _every_value(otel.finished())
    assert "[REDACTED]" in text and "gen_ai.input.messages" in text
    for secret in [*SECRET_VALUES, *_secrets()]:
        assert secret not in text, secret


def test_content_is_not_captured_by_default(otel: Telemetry) -> None:
    """Without the flag or the environment variable, no prompt or reply text is on a span."""
    with llmctx.session("s", store="memory:"):
        FakeModel(reply="the secret plan").complete("tell me the plan")
    text = _every_value(otel.finished())
    assert "plan" not in text and ga.GEN_AI_INPUT_MESSAGES not in text


def test_content_capture_by_flag_follows_the_message_shape(otel: Telemetry) -> None:
    """capture_content=True puts the prompt and the reply on the call span as the
    conventions' role + parts JSON."""
    otel.instrument(capture_content=True)
    with llmctx.session("s", store="memory:"):
        FakeModel(reply="the plan").complete([{"role": "user", "content": "what plan"}])
    a = otel.named("chat fake-model").attributes or {}
    assert json.loads(str(a[ga.GEN_AI_INPUT_MESSAGES])) == [
        {"role": "user", "parts": [{"type": "text", "content": "what plan"}]}
    ]
    assert json.loads(str(a[ga.GEN_AI_OUTPUT_MESSAGES])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "the plan"}]}
    ]


def test_content_capture_by_the_conventions_environment_variable(
    otel: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true turns capture on when the
    flag is not given; capture_content=False still wins over it."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    otel.instrument()
    with llmctx.session("on", store="memory:"):
        FakeModel(reply="visible").complete("prompt text")
    otel.instrument(capture_content=False)
    with llmctx.session("off", store="memory:"):
        FakeModel(reply="hidden").complete("prompt text")
    on, off = (
        [s for s in otel.finished() if s.name == "chat fake-model" and parent_of(s) == sid]
        for sid in (
            otel.named("invoke_agent on").context.span_id,
            otel.named("invoke_agent off").context.span_id,
        )
    )
    assert "visible" in str((on[0].attributes or {})[ga.GEN_AI_OUTPUT_MESSAGES])
    assert ga.GEN_AI_OUTPUT_MESSAGES not in (off[0].attributes or {})


def test_captured_content_is_cut_to_the_limit(otel: Telemetry) -> None:
    """A prompt longer than content_limit is cut, and the attribute says how much was cut."""
    otel.instrument(capture_content=True, content_limit=200)
    with llmctx.session("s", store="memory:"):
        FakeModel(reply="ok").complete("word " * 1000)
    value = str((otel.named("chat fake-model").attributes or {})[ga.GEN_AI_INPUT_MESSAGES])
    assert len(value) < 260 and value.endswith("more characters]")


def test_record_content_false_keeps_content_off_spans(otel: Telemetry) -> None:
    """A session with record_content=False captures no content even with capture on."""
    otel.instrument(capture_content=True)
    with llmctx.session("private", store="memory:", record_content=False):
        FakeModel(reply="private reply").complete("private prompt")
    assert "private reply" not in _every_value(otel.finished())


# -- MCP tools -------------------------------------------------------------------------------


def test_mcp_tool_call_is_an_execute_tool_span(otel: Telemetry) -> None:
    """A hub tool call on a real MCP server process is an `execute_tool {server.tool}` span
    under the session, with gen_ai.tool.name; a tool error is an error span."""
    from llmctx.mcp import Hub

    config = {"mcpServers": {"t": {"command": sys.executable, "args": [str(TINY_SERVER)]}}}

    async def main() -> None:
        async with Hub.from_config(config) as hub, llmctx.session("tools", store="memory:"):
            await hub.call("t.echo", {"text": "hello"})

    asyncio.run(main())
    span = otel.named("execute_tool t.echo")
    a = span.attributes or {}
    assert a[ga.GEN_AI_OPERATION_NAME] == "execute_tool" and a[ga.GEN_AI_TOOL_NAME] == "t.echo"
    assert span.kind is trace.SpanKind.INTERNAL
    assert parent_of(span) == otel.named("invoke_agent tools").context.span_id
    assert ga.GEN_AI_TOOL_CALL_ARGUMENTS not in a  # content capture is off


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_names_and_values(otel: Telemetry) -> None:
    """Token usage by type, operation duration, time to first chunk and cost are recorded
    under the conventions' names with the call's attributes."""
    model = FakeModel("otel-priced", reply="a b c")
    with llmctx.price_override("otel-priced", input_per_mtok="1000000", output_per_mtok="1000000"):
        with llmctx.session("m", store="memory:"):
            model.complete("one two")
            list(model.stream("x"))
    m = otel.metrics()
    tokens = {p.attributes["gen_ai.token.type"]: p for p in m["gen_ai.client.token.usage"]}
    assert tokens["input"].sum == 3 and tokens["input"].count == 2
    assert tokens["output"].sum == 6
    assert tokens["input"].attributes[ga.GEN_AI_REQUEST_MODEL] == "otel-priced"
    (duration,) = m["gen_ai.client.operation.duration"]
    assert duration.count == 2 and duration.attributes[ga.GEN_AI_OPERATION_NAME] == "chat"
    (first,) = m["gen_ai.client.operation.time_to_first_chunk"]
    assert first.count == 1
    (cost,) = m["llmctx.cost"]
    assert cost.value == pytest.approx(9.0)


def test_metric_exemplars_point_at_the_call_span(otel: Telemetry) -> None:
    """A duration or token-usage exemplar links to the call's own span (not the session's),
    so a backend jumps from a slow or costly point to that call."""
    with llmctx.session("ex", store="memory:"):
        FakeModel(reply="a b").complete("one")
    call = otel.named("chat fake-model")
    m = otel.metrics()
    points = [*m["gen_ai.client.operation.duration"], *m["gen_ai.client.token.usage"]]
    exemplars = [e for p in points for e in p.exemplars]
    assert exemplars, "the SDK's default trace-based exemplar filter keeps sampled points"
    assert {e.span_id for e in exemplars} == {call.context.span_id}


def test_reinstrument_on_the_same_providers_keeps_gauges_and_cost(otel: Telemetry) -> None:
    """uninstrument() then instrument() on the same meter provider keeps reporting: the
    budget gauges show the new sessions and the cost total goes on adding up (the SDK keeps
    the first observable instruments of a name, so they must not belong to the first set-up)."""
    model = FakeModel("otel-priced", reply="a b c")
    with llmctx.price_override("otel-priced", input_per_mtok="1000000", output_per_mtok="1000000"):
        with llmctx.session("first", store="memory:"):
            model.complete("one two")  # 2 + 3 tokens: $5
        llmctx.otel.uninstrument()
        otel.instrument()
        with llmctx.session("again", store="memory:", budget=llmctx.Budget(tokens=100)) as s:
            model.complete("one")  # 1 + 3 tokens: $4
            m = otel.metrics()
            assert [p.attributes["llmctx.session.id"] for p in m["llmctx.budget.limit"]] == [s.id]
    (cost,) = otel.metrics()["llmctx.cost"]
    assert cost.value == pytest.approx(9.0)


def test_budget_gauges_report_each_running_budget(otel: Telemetry) -> None:
    """While a budgeted session runs, llmctx.budget.limit / spent / reserved report its
    dimensions; once it ended it is no longer reported."""
    with llmctx.session("b", store="memory:", budget=llmctx.Budget(tokens=1000, requests=5)) as s:
        FakeModel(reply="a b").complete("one two three")
        m = otel.metrics()
        limit = {p.attributes["llmctx.budget.dimension"]: p.value for p in m["llmctx.budget.limit"]}
        spent = {p.attributes["llmctx.budget.dimension"]: p.value for p in m["llmctx.budget.spent"]}
        assert limit == {"tokens": 1000, "requests": 5}
        assert spent == {"tokens": 5, "requests": 1}
        assert {p.attributes["llmctx.session.id"] for p in m["llmctx.budget.reserved"]} == {s.id}
    assert "llmctx.budget.limit" not in otel.metrics() or not otel.metrics()["llmctx.budget.limit"]


def test_every_budget_of_a_session_is_reported_with_call_caps(otel: Telemetry) -> None:
    """A session with two budgets reports each (told apart by llmctx.budget.index), call
    caps included, and its span carries the limit that applies in each dimension."""
    budgets = [llmctx.Budget(tokens=1000, calls=3), llmctx.Budget(tokens=500, requests=5)]
    with llmctx.session("two", store="memory:", budget=budgets):
        FakeModel(reply="a b").complete("one two three")
        m = otel.metrics()
    limit = {
        (p.attributes["llmctx.budget.index"], p.attributes["llmctx.budget.dimension"]): p.value
        for p in m["llmctx.budget.limit"]
    }
    assert limit == {(0, "tokens"): 1000, (0, "calls"): 3, (1, "tokens"): 500, (1, "requests"): 5}
    spent = {
        (p.attributes["llmctx.budget.index"], p.attributes["llmctx.budget.dimension"]): p.value
        for p in m["llmctx.budget.spent"]
    }
    assert spent[(0, "calls")] == 1 and spent[(1, "tokens")] == 5
    a = otel.named("invoke_agent two").attributes or {}
    assert a["llmctx.budget.tokens.limit"] == 500 and a["llmctx.budget.calls.limit"] == 3
    assert a["llmctx.budget.requests.limit"] == 5 and a["llmctx.session.calls"] == 1


def test_session_span_counts_every_call_past_the_in_memory_window(otel: Telemetry) -> None:
    """llmctx.session.calls counts all of a session's calls, not the window it keeps."""
    model = FakeModel(reply="a")
    with llmctx.session("long", store="memory:", keep_calls=2):
        for _ in range(5):
            model.complete("x")
    assert (otel.named("invoke_agent long").attributes or {})["llmctx.session.calls"] == 5


# -- instrument / uninstrument ---------------------------------------------------------------


def test_instrument_twice_is_one_exporter_and_uninstrument_stops(otel: Telemetry) -> None:
    """A second instrument() with the same providers adds nothing (one span per call);
    after uninstrument() calls and sessions make no spans."""
    otel.instrument()
    with llmctx.session("once", store="memory:"):
        FakeModel().complete("a")
    assert [s.name for s in otel.finished()] == ["chat fake-model", "invoke_agent once"]
    llmctx.otel.uninstrument()
    llmctx.otel.uninstrument()
    assert not llmctx.otel.instrumented()
    with llmctx.session("after", store="memory:"):
        FakeModel().complete("b")
    assert len(otel.finished()) == 2


def test_uninstrument_inside_a_session_still_ends_its_span(otel: Telemetry) -> None:
    """A session running when uninstrument() is called still ends its span at its exit."""
    with llmctx.session("running", store="memory:"):
        llmctx.otel.uninstrument()
    assert otel.named("invoke_agent running").end_time is not None
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_calls_outside_any_session_are_traced_while_instrumented(otel: Telemetry) -> None:
    """With no session, an instrumented SDK call is still a span, under the user's span."""
    httpx2 = pytest.importorskip("httpx2")
    client = _openai_client(lambda request: httpx2.Response(200, json=_chat_reply("hi")))
    with otel.tracer.start_as_current_span("job"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    span = otel.named("chat gpt-4o-mini")
    assert parent_of(span) == otel.named("job").context.span_id
    assert "llmctx.session.id" not in (span.attributes or {})


def test_bad_content_limit_is_a_config_error() -> None:
    """instrument(content_limit=0) says what it takes."""
    with pytest.raises(llmctx.ConfigError, match="positive number of characters"):
        llmctx.otel.instrument(content_limit=0)
    assert not llmctx.otel.instrumented()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"tracer_provider": "http://localhost:4318"}, "takes an OpenTelemetry TracerProvider"),
        ({"meter_provider": TracerProvider()}, "takes an OpenTelemetry MeterProvider"),
        ({"capture_content": "yes"}, "takes True, False or None"),
    ],
)
def test_a_wrong_instrument_argument_is_a_config_error(kwargs: dict[str, Any], says: str) -> None:
    """A URL where a provider goes, a provider of the other kind, or "yes" for content capture
    is refused with what the argument takes, and leaves nothing instrumented (it was an
    AttributeError from inside the SDK, or accepted silently)."""
    with pytest.raises(llmctx.ConfigError, match=says):
        llmctx.otel.instrument(**kwargs)
    assert not llmctx.otel.instrumented()


# -- replay of stored sessions ---------------------------------------------------------------


def test_replay_of_a_sqlite_session_keeps_its_timestamps_and_tree(tmp_path: Path) -> None:
    """A session recorded in SQLite (without OpenTelemetry) replays as the same span tree
    with the stored start and end times; exporting again gives the same ids."""
    db = tmp_path / "calls.db"
    store = SQLiteStore(db)
    model = FakeModel("otel-priced", reply="a b c")
    with llmctx.price_override("otel-priced", input_per_mtok="1000000", output_per_mtok="1000000"):
        with llmctx.session("recorded", store=store) as root:
            model.complete("one")
            with llmctx.session("sub") as sub:
                model.complete("two three")
    rows = store.session_tree(root.id)
    calls = store.list_calls([r.id for r in rows])
    sent = InMemorySpanExporter()
    summary = llmctx.otel.export_sessions(store, rows, exporter=sent)
    assert (summary.sessions, summary.calls, summary.spans) == (2, 2, 4)
    spans = {s.name: s for s in sent.get_finished_spans() if not s.name.startswith("chat")}
    replayed_root = spans["invoke_agent recorded"]
    replayed_sub = spans["invoke_agent sub"]
    stored_root = store.get_session(root.id)
    assert stored_root is not None and stored_root.ended_at is not None
    assert replayed_root.start_time == int(stored_root.started_at.timestamp() * 1e9)
    assert replayed_root.end_time == int(stored_root.ended_at.timestamp() * 1e9)
    assert parent_of(replayed_sub) == replayed_root.context.span_id
    chats = [s for s in sent.get_finished_spans() if s.name == "chat otel-priced"]
    by_id = {c.id: c for c in calls}
    for span in chats:
        a = span.attributes or {}
        stored = by_id[str(a["llmctx.call.id"])]
        assert span.start_time == int(stored.started_at.timestamp() * 1e9)
        end = stored.started_at + timedelta(seconds=stored.latency_s or 0)
        assert span.end_time == int(end.timestamp() * 1e9)
        assert a["llmctx.replayed"] is True and a["llmctx.cost_usd"] > 0
    assert {parent_of(c) for c in chats} == {
        replayed_root.context.span_id,
        replayed_sub.context.span_id,
    }
    assert (replayed_sub.attributes or {})["llmctx.session.id"] == sub.id
    again = InMemorySpanExporter()
    llmctx.otel.export_sessions(store, rows, exporter=again)
    assert sorted(s.context.span_id for s in again.get_finished_spans()) == sorted(
        s.context.span_id for s in sent.get_finished_spans()
    )
    store.close()


def test_replay_of_a_child_session_alone_lands_in_its_roots_trace(tmp_path: Path) -> None:
    """Exporting only a child session gives it the trace id its root gets."""
    store = SQLiteStore(tmp_path / "calls.db")
    with llmctx.session("root", store=store) as root, llmctx.session("child") as child:
        FakeModel().complete("x")
    whole, part = InMemorySpanExporter(), InMemorySpanExporter()
    llmctx.otel.export_sessions(store, store.session_tree(root.id), exporter=whole)
    llmctx.otel.export_sessions(store, store.session_tree(child.id), exporter=part)
    assert {s.context.trace_id for s in whole.get_finished_spans()} == {
        s.context.trace_id for s in part.get_finished_spans()
    }
    store.close()


def test_export_cli_otlp_to_an_unreachable_endpoint_fails_clearly(tmp_path: Path) -> None:
    """`sessions export --format otlp` to a port nobody listens on exits 1 with one error that
    says the endpoint did not accept the spans and why (connection refused), without the
    exporter's retry log lines; each wrong combination of options names its own fix."""
    import socket

    from typer.testing import CliRunner

    from llmctx._cli.app import app

    db = tmp_path / "calls.db"
    store = SQLiteStore(db)
    with llmctx.session("x", store=store):
        FakeModel().complete("hi")
    store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "sessions",
            "export",
            "--format",
            "otlp",
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--db",
            str(db),
        ],
    )
    assert result.exit_code == 1
    output = " ".join(result.output.split())  # rich wraps the error at the terminal width
    assert "did not accept the spans (connection refused, after" in output
    assert "Transient error" not in output and "retrying in" not in output
    wrong = runner.invoke(app, ["sessions", "export", "--endpoint", "http://x:1", "--db", str(db)])
    assert wrong.exit_code == 1
    assert "--endpoint goes with --format otlp" in " ".join(wrong.output.split())
    bare = runner.invoke(app, ["sessions", "export", "--format", "otlp", "--db", str(db)])
    assert bare.exit_code == 1
    assert "--format otlp needs --endpoint URL" in " ".join(bare.output.split())
    otlp_to = ["sessions", "export", "--format", "otlp", "--endpoint", "http://x:1"]
    to_file = runner.invoke(app, [*otlp_to, "-o", str(tmp_path / "f.txt"), "--db", str(db)])
    assert to_file.exit_code == 1
    assert "leave --output out" in " ".join(to_file.output.split())
    assert not (tmp_path / "f.txt").exists()


def test_a_local_model_call_span_carries_its_finish_reason(otel: Telemetry) -> None:
    """A real llama.cpp call's span has gen_ai.response.finish_reasons as the model ended it."""
    model = llmctx.local_model(n_ctx=512)
    with llmctx.session("local", store="memory:"):
        result = model.create_chat_completion(
            messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0.0
        )
    (span,) = [s for s in otel.finished() if s.name.startswith("chat ")]
    reasons = (span.attributes or {})[ga.GEN_AI_RESPONSE_FINISH_REASONS]
    assert list(reasons) == [result["choices"][0]["finish_reason"]]  # type: ignore[arg-type]


def test_export_to_an_endpoint_answering_an_error_names_the_status(tmp_path: Path) -> None:
    """An HTTP server that answers 404 to the OTLP POST (a wrong path, say): export_sessions
    raises OTLPExportError naming the status, and the password in the URL never appears."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotHere(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(404, "Not Found")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    store = SQLiteStore(tmp_path / "calls.db")
    with llmctx.session("x", store=store) as s:
        FakeModel().complete("hi")
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotHere)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://user:hunter2-secret@127.0.0.1:{server.server_address[1]}/v1/traces"
        with pytest.raises(llmctx.otel.OTLPExportError) as caught:
            llmctx.otel.export_sessions(store, store.session_tree(s.id), endpoint=url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        store.close()
    message = str(caught.value)
    assert "HTTP 404 Not Found" in message
    assert "hunter2-secret" not in message
