"""The real ``anthropic`` SDK, instrumented, through its own HTTP transport hook.

The SDK is given ``http_client=httpx2.Client(transport=httpx2.MockTransport(handler))`` (the
SDK uses ``httpx2``; its ``http_client`` argument is the documented way to replace the
transport). The response bodies below follow the shapes in Anthropic's API reference: the
``Message`` object of "Messages > Create" and the event sequence of "Streaming Messages"
(``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` with
``text_delta`` / ``input_json_delta``, ``content_block_stop``, ``message_delta`` with cumulative
``usage``, ``message_stop``, and the ``error`` event for a mid-stream overload). A fake
transport is used because no Anthropic server can run here; what is checked is llmctx's side:
usage, cost, records and reservations.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

anthropic = pytest.importorskip("anthropic")
httpx2 = pytest.importorskip("httpx2")

import llmctx  # noqa: E402
from llmctx.providers import instrument, is_instrumented, uninstrument  # noqa: E402
from llmctx.stores import MemoryStore  # noqa: E402

MODEL = "claude-sonnet-4-6"


@pytest.fixture(autouse=True)
def _price() -> Iterator[None]:
    """A fixed price so costs are exact: $3 per million input tokens, $15 per million output."""
    with llmctx.price_override(MODEL, input_per_mtok="3", output_per_mtok="15"):
        yield


def message_json(text: str = "Hi! My name is Claude.", **usage: int) -> dict[str, Any]:
    """A ``Message`` as the API returns it (Messages > Create, 200 response)."""
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6-20260101",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 11, **usage},
    }


def sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    """Server-sent events as the Messages API streams them."""
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def stream_events(
    texts: tuple[str, ...] = ("Hello", "!"), *, output_tokens: int = 15
) -> list[tuple[str, dict[str, Any]]]:
    """The event sequence of a text reply (Streaming Messages, "Basic streaming request")."""
    start = message_json(text="")
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = {"input_tokens": 25, "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for piece in texts:
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens // 2},
            },
        ),
        (
            # A second message_delta: usage is cumulative, so this replaces the first.
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


class Transport:
    """Answers every request with the next canned response and remembers the requests."""

    def __init__(self, respond: Callable[[dict[str, Any]], Any]) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.requests.append(body)
        return self.respond(body)


def json_or_sse(body: dict[str, Any]) -> Any:
    if body.get("stream"):
        return httpx2.Response(
            200, content=sse(stream_events()), headers={"content-type": "text/event-stream"}
        )
    return httpx2.Response(200, json=message_json())


def client_for(transport: Transport) -> Any:
    http = httpx2.Client(transport=httpx2.MockTransport(transport))
    return instrument(anthropic.Anthropic(api_key="sk-ant-test-key-000000000000", http_client=http))


def async_client_for(handler: Any) -> Any:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return instrument(
        anthropic.AsyncAnthropic(api_key="sk-ant-test-key-000000000000", http_client=http)
    )


MESSAGES = [{"role": "user", "content": "Hello, Claude"}]


def no_reservations(budget: llmctx.Budget) -> bool:
    snap = budget.ledger.snapshot()
    return snap.reservations == 0 and snap.reserved.tokens == 0


# ---------------------------------------------------------------------------------------------


def test_create_charges_reported_usage_and_records_the_call(memory_store: MemoryStore) -> None:
    """messages.create is charged the usage Anthropic reported, priced, and recorded redacted."""
    transport = Transport(json_or_sse)
    client = client_for(transport)
    budget = llmctx.Budget(usd="1", tokens=10_000)
    with llmctx.session("a", store=memory_store, budget=budget) as s:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert isinstance(message, anthropic.types.Message)
    assert s.usage.input_tokens == 25 and s.usage.output_tokens == 11 and s.usage.requests == 1
    assert s.cost == Decimal(25 * 3 + 11 * 15) / 10**6
    (record,) = s.calls
    assert record.provider == "anthropic" and record.model == MODEL and record.status == "ok"
    assert record.response == "Hi! My name is Claude." and not record.estimated
    assert record.request["messages"] == MESSAGES
    assert "sk-ant-test" not in json.dumps(record.to_dict())
    assert memory_store.list_calls([s.id])[0].id == record.id
    assert no_reservations(budget)


def test_cache_tokens_count_as_input() -> None:
    """Cache reads and writes are added to input tokens (Anthropic reports them apart)."""
    transport = Transport(
        lambda body: httpx2.Response(
            200,
            json=message_json(cache_read_input_tokens=100, cache_creation_input_tokens=50),
        )
    )
    client = client_for(transport)
    with llmctx.session(store="memory:") as s:
        client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert s.usage.input_tokens == 175
    assert s.usage.cache_read_tokens == 100 and s.usage.cache_write_tokens == 50


def test_budget_refuses_before_sending() -> None:
    """A call whose worst case does not fit the budget raises and never reaches the transport."""
    transport = Transport(json_or_sse)
    client = client_for(transport)
    budget = llmctx.Budget(tokens=500)
    with llmctx.session(store="memory:", budget=budget) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            client.messages.create(model=MODEL, max_tokens=1_000, messages=MESSAGES)
    assert transport.requests == []
    assert s.usage.requests == 0 and no_reservations(budget)


def test_on_exceed_sends_the_cheaper_request_instead(memory_store: MemoryStore) -> None:
    """Budget(on_exceed=...) swaps in a smaller max_tokens: only that request is sent."""
    transport = Transport(json_or_sse)
    client = client_for(transport)
    budget = llmctx.Budget(tokens=500, on_exceed=lambda refusal: {"max_tokens": 100})
    with llmctx.session(store=memory_store, budget=budget) as s:
        message = client.messages.create(model=MODEL, max_tokens=1_000, messages=MESSAGES)
    assert message.content[0].text == "Hi! My name is Claude."
    assert [r["max_tokens"] for r in transport.requests] == [100]
    statuses = sorted(c.status for c in memory_store.list_calls([s.id], refused=True))
    assert statuses == ["ok", "refused"] and s.usage.output_tokens == 11


def test_a_substitute_llmctx_cannot_charge_is_never_sent(memory_store: MemoryStore) -> None:
    """A substitute that cannot be planned (or has no usable max_tokens) is not sent uncharged:
    the refusal is raised, or the worst case reserved, and nothing reaches the transport."""
    for change in ({"messages": 12345}, {"max_tokens": "lots"}):
        transport = Transport(json_or_sse)
        client = client_for(transport)
        budget = llmctx.Budget(tokens=500, on_exceed=lambda refusal, change=change: change)
        with llmctx.session(store=memory_store, budget=budget):
            with pytest.raises(llmctx.BudgetExceeded):
                client.messages.create(model=MODEL, max_tokens=1_000, messages=MESSAGES)
        assert transport.requests == [], change


def test_stream_usage_is_overwritten_not_added(memory_store: MemoryStore) -> None:
    """Cumulative message_delta usage replaces earlier values; ttft is the first text delta."""
    client = client_for(Transport(json_or_sse))
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store=memory_store, budget=budget) as s:
        stream = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
        assert isinstance(stream, anthropic.Stream)
        kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    (record,) = s.calls
    assert record.usage.input_tokens == 25 and record.usage.output_tokens == 15
    assert record.response == "Hello!" and not record.estimated
    assert record.ttft_s is not None and record.ttfb_s is not None
    assert record.ttfb_s <= record.ttft_s
    assert no_reservations(budget)


def test_messages_stream_helper_keeps_its_api() -> None:
    """messages.stream() still gives text_stream and get_final_message(), and is charged."""
    client = client_for(Transport(json_or_sse))
    with llmctx.session(store="memory:") as s:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
            assert stream.response.status_code == 200
    assert text == "Hello!"
    assert final.usage.output_tokens == 15
    assert s.usage.output_tokens == 15 and s.usage.requests == 1


def test_tool_use_stream_records_the_tool_call() -> None:
    """input_json_delta pieces are assembled into the recorded tool call's arguments."""
    start = message_json(text="")
    start["content"], start["usage"] = [], {"input_tokens": 40, "output_tokens": 1}
    events = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part},
                },
            )
            for part in ('{"location": "San Fra', 'ncisco, CA"}')
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    transport = Transport(
        lambda body: httpx2.Response(
            200, content=sse(events), headers={"content-type": "text/event-stream"}
        )
    )
    client = client_for(transport)
    with llmctx.session(store="memory:") as s:
        with client.messages.stream(model=MODEL, max_tokens=200, messages=MESSAGES) as stream:
            stream.until_done()
    (record,) = s.calls
    assert record.tool_calls == [
        {
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "arguments": '{"location": "San Francisco, CA"}',
        }
    ]
    assert record.usage.output_tokens == 89 and record.metadata["stop_reason"] == "tool_use"


def test_stream_consumed_after_its_session_exited_charges_that_session() -> None:
    """A stream opened in a session and read after the block ended is charged to that session."""
    client = client_for(Transport(json_or_sse))
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        stream = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
    assert s.usage.requests == 0 and budget.ledger.snapshot().reservations == 1
    with llmctx.session(store="memory:") as other:
        for _ in stream:
            pass
    assert s.usage.output_tokens == 15 and other.usage.requests == 0
    assert no_reservations(budget)


def test_consumer_breaking_early_is_charged_estimated_on_close() -> None:
    """Breaking out and closing the stream settles it: input as reported, output estimated."""
    client = client_for(Transport(json_or_sse))
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        with client.messages.create(
            model=MODEL, max_tokens=100, messages=MESSAGES, stream=True
        ) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    break
    (record,) = s.calls
    assert record.status == "ok" and record.estimated and record.metadata["abandoned"]
    assert record.usage.input_tokens == 25 and record.response == "Hello"
    assert no_reservations(budget)
    assert budget.ledger.snapshot().spent.tokens == record.usage.total_tokens


def test_abandoned_stream_is_settled_when_collected() -> None:
    """A stream dropped unclosed mid-way is settled when it is garbage-collected."""
    import gc

    client = client_for(Transport(json_or_sse))
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        stream = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
        next(iter(stream))
        del stream
        gc.collect()
        assert no_reservations(budget)
    assert s.calls[0].metadata["abandoned"] and s.calls[0].estimated


def test_error_event_mid_stream_records_failure_and_settles() -> None:
    """An overloaded_error event mid-stream propagates; the call is recorded failed, settled."""
    events = [
        *stream_events()[:4],
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
    ]
    transport = Transport(
        lambda body: httpx2.Response(
            200, content=sse(events), headers={"content-type": "text/event-stream"}
        )
    )
    client = client_for(transport)
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        with pytest.raises(anthropic.APIStatusError):
            for _ in client.messages.create(
                model=MODEL, max_tokens=100, messages=MESSAGES, stream=True
            ):
                pass
    (record,) = s.calls
    assert record.status == "error" and "Overloaded" in (record.error or "")
    assert record.usage.input_tokens == 25 and record.estimated
    assert no_reservations(budget)


def test_http_error_releases_the_reservation() -> None:
    """A 400 answer raises the SDK's error, records it, and leaves nothing reserved."""
    transport = Transport(
        lambda body: httpx2.Response(
            400,
            json={
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
            },
        )
    )
    client = client_for(transport)
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert s.calls[0].status == "error" and no_reservations(budget)
    assert budget.ledger.snapshot().spent.tokens == 0


def test_async_stream_cancelled_mid_way_releases_or_settles() -> None:
    """Cancelling a task that is reading an async stream records it cancelled, nothing held."""
    head = sse(stream_events()[:4])
    blocked = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield head
        blocked.set()
        await asyncio.Event().wait()  # the server goes quiet: only cancellation ends this
        yield b""  # pragma: no cover

    async def handler(request: Any) -> Any:
        return httpx2.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    async def main() -> llmctx.Budget:
        client = async_client_for(handler)
        budget = llmctx.Budget(tokens=10_000)
        async with llmctx.session(store="memory:", budget=budget) as s:

            async def consume() -> None:
                stream = await client.messages.create(
                    model=MODEL, max_tokens=100, messages=MESSAGES, stream=True
                )
                async for _ in stream:
                    pass

            task = asyncio.create_task(consume())
            await asyncio.wait_for(blocked.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert s.calls[0].status == "cancelled"
        assert s.calls[0].response == "Hello"
        return budget

    budget = asyncio.run(asyncio.wait_for(main(), 20))
    assert no_reservations(budget)


def test_async_create_and_stream() -> None:
    """AsyncAnthropic: create and messages.stream are charged like the sync client."""

    async def handler(request: Any) -> Any:
        return json_or_sse(json.loads(request.content))

    async def main() -> tuple[Any, str]:
        client = async_client_for(handler)
        async with llmctx.session(store="memory:") as s:
            await client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
            async with client.messages.stream(
                model=MODEL, max_tokens=100, messages=MESSAGES
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
        return s, text

    s, text = asyncio.run(main())
    assert text == "Hello!"
    assert s.usage.requests == 2 and s.usage.output_tokens == 11 + 15


def test_instrument_twice_is_a_noop_and_uninstrument_restores() -> None:
    """A second instrument() changes nothing; uninstrument() puts the SDK method back."""
    transport = Transport(json_or_sse)
    client = client_for(transport)
    patched = client.request
    assert instrument(client) is client and client.request is patched
    assert is_instrumented(client)
    assert uninstrument(client) and not is_instrumented(client)
    assert "request" not in vars(client)
    with llmctx.session(store="memory:") as s:
        client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert s.usage.requests == 0 and len(transport.requests) == 1
    assert not uninstrument(client)


def test_untracked_endpoints_pass_through() -> None:
    """count_tokens is not a model call: it is sent as is and not charged."""
    transport = Transport(lambda body: httpx2.Response(200, json={"input_tokens": 12}))
    client = client_for(transport)
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=1)) as s:
        assert client.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens == 12
    assert s.usage.requests == 0 and len(transport.requests) == 1


def test_no_session_means_no_bookkeeping() -> None:
    """Outside any session or recorder, calls go straight to the SDK and nothing is recorded."""
    transport = Transport(json_or_sse)
    client = client_for(transport)
    message = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert message.content[0].text == "Hi! My name is Claude."
    with llmctx.record() as rec:
        client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert len(rec.calls) == 1 and rec.calls[0].usage.output_tokens == 11


def test_rate_limiter_is_used_and_settled() -> None:
    """With a limiter, each call takes a reservation and settles it with the real tokens."""
    limiter = llmctx.RateLimiter(rpm=600, tpm=100_000)
    transport = Transport(
        lambda body: httpx2.Response(
            200,
            json=message_json(),
            headers={"anthropic-ratelimit-requests-remaining": "999"},
        )
    )
    client = instrument(
        anthropic.Anthropic(
            api_key="sk-ant-test-key-000000000000",
            http_client=httpx2.Client(transport=httpx2.MockTransport(transport)),
        ),
        limiter=limiter,
    )
    client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    stats = limiter.statistics()
    assert stats.admitted == 1 and stats.in_flight == 0


def test_bookkeeping_failure_never_breaks_the_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception inside llmctx's response reading is logged; the user still gets the reply."""
    from llmctx.providers import anthropic as adapter_module

    def broken(plan: Any, message: Any) -> Any:
        raise RuntimeError("bug in the extractor")

    monkeypatch.setattr(adapter_module, "_extract", broken)
    client = client_for(Transport(json_or_sse))
    budget = llmctx.Budget(tokens=10_000)
    with llmctx.session(store="memory:", budget=budget) as s:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert message.content[0].text == "Hi! My name is Claude."
    assert "bug in the extractor" in caplog.text
    assert s.usage.requests == 1 and s.calls[0].estimated and no_reservations(budget)
