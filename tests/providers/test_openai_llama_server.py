"""The real ``openai`` SDK, instrumented, against llama.cpp's own OpenAI-compatible server.

The server (fixture ``llama_server`` in conftest.py) serves the bundled SmolLM2 model on
loopback. Requests the server saw are counted from its uvicorn access log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest

openai = pytest.importorskip("openai")

import llmctx  # noqa: E402
from llmctx.providers import instrument  # noqa: E402
from llmctx.providers._sdk import MAX_SUBSTITUTES  # noqa: E402
from llmctx.stores import MemoryStore  # noqa: E402

SERVED_MODEL = "SmolLM2-135M-Instruct"  # the --model_alias the conftest starts the server with
MESSAGES = [{"role": "user", "content": "Name one colour."}]
MAX_TOKENS = 8


@pytest.fixture(autouse=True)
def _price() -> Iterator[None]:
    """Price the served model so costs are checked too: $1 per million in, $2 per million out."""
    with llmctx.price_override(SERVED_MODEL, input_per_mtok="1", output_per_mtok="2"):
        yield


@pytest.fixture
def client(llama_server: Any) -> Any:
    """An instrumented openai.OpenAI pointed at the local server."""
    return instrument(
        openai.OpenAI(base_url=llama_server.base_url, api_key="sk-local-unused-0000000000")
    )


@pytest.fixture
def async_client(llama_server: Any) -> Any:
    """An instrumented openai.AsyncOpenAI pointed at the local server."""
    return instrument(
        openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="sk-local-unused-0000000000")
    )


T = TypeVar("T")


async def closing_after(client: Any, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, then close ``client``'s connections on the same event loop.

    An AsyncOpenAI client left open is closed later by the garbage collector on whatever
    loop runs then, which fails that (unrelated) test with "Event loop is closed".
    """
    try:
        return await work
    finally:
        await client.close()


def cost_of(usage: llmctx.Usage) -> Decimal:
    return (Decimal(usage.input_tokens) * 1 + Decimal(usage.output_tokens) * 2) / 10**6


def test_sync_create_totals_equal_server_usage(client: Any) -> None:
    """Session totals are exactly the usage the server reported, priced, not estimated."""
    budget = llmctx.Budget(tokens=2_000, usd="1")
    with llmctx.session("srv", store="memory:", budget=budget) as s:
        reply = client.chat.completions.create(
            model=SERVED_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
    assert reply.usage is not None
    assert s.usage.input_tokens == reply.usage.prompt_tokens
    assert s.usage.output_tokens == reply.usage.completion_tokens
    assert s.usage.requests == 1 and s.cost == cost_of(s.usage)
    (record,) = s.calls
    assert record.provider == "openai" and record.model == SERVED_MODEL
    assert record.response == reply.choices[0].message.content and not record.estimated
    assert record.request["messages"] == MESSAGES
    assert "sk-local" not in str(record.to_dict())
    # What the server said ended the reply, as OpenTelemetry's finish_reasons read it.
    assert record.metadata["finish_reasons"] == [reply.choices[0].finish_reason]
    snap = budget.ledger.snapshot()
    assert snap.reservations == 0 and snap.spent.tokens == reply.usage.total_tokens


def test_sync_stream_is_estimated_and_keeps_the_sdk_stream(client: Any, llama_server: Any) -> None:
    """The server sends no usage in streams: usage is estimated from the text and marked so."""
    budget = llmctx.Budget(tokens=2_000)
    user_args: dict[str, Any] = {
        "model": SERVED_MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
    }
    with llmctx.session(store="memory:", budget=budget) as s:
        with client.chat.completions.create(**user_args, stream=True) as stream:
            assert isinstance(stream, openai.Stream)
            assert stream.response.status_code == 200
            chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.choices for c in chunks)  # no usage-only chunk leaked to the user
    assert "stream_options" not in user_args  # the user's arguments were not touched
    (record,) = s.calls
    assert record.estimated and record.status == "ok" and record.response == text
    ended = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert ended and record.metadata["finish_reasons"] == ended[-1:]
    assert record.usage.output_tokens >= 1 and record.usage.input_tokens > 0
    assert record.ttft_s is not None and record.ttfb_s is not None
    assert record.ttfb_s <= record.ttft_s <= (record.latency_s or 0)
    assert budget.ledger.snapshot().reservations == 0


def test_budget_stops_the_call_before_the_server_sees_it(client: Any, llama_server: Any) -> None:
    """A token budget too small for prompt + max_tokens raises; the server logs no request."""
    before = llama_server.requests_seen()
    budget = llmctx.Budget(tokens=MAX_TOKENS)
    with llmctx.session(store="memory:", budget=budget) as s:
        with pytest.raises(llmctx.BudgetExceeded) as caught:
            client.chat.completions.create(
                model=SERVED_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
            )
    assert caught.value.dimension == "tokens"
    assert llama_server.requests_seen() == before
    assert s.usage.requests == 0 and budget.ledger.snapshot().reservations == 0
    # The counter does move when a call is allowed through.
    with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=2_000)):
        client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=2)
    assert llama_server.requests_seen() == before + 1


def test_money_budget_with_unknown_price_fails_closed(client: Any, llama_server: Any) -> None:
    """A money budget and a model without a price: UnknownPrice, and nothing is sent."""
    before = llama_server.requests_seen()
    with llmctx.session(store="memory:", budget=llmctx.Budget(usd="1")):
        with pytest.raises(llmctx.UnknownPrice):
            client.chat.completions.create(
                model="no-such-priced-model", messages=MESSAGES, max_tokens=2
            )
    assert llama_server.requests_seen() == before


def test_async_create_and_stream(async_client: Any) -> None:
    """AsyncOpenAI: a create and a stream are charged; the stream's usage is estimated."""

    async def main() -> tuple[Any, Any, str]:
        async with llmctx.session(store="memory:", budget=llmctx.Budget(tokens=4_000)) as s:
            reply = await async_client.chat.completions.create(
                model=SERVED_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
            )
            stream = await async_client.chat.completions.create(
                model=SERVED_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
            )
            assert isinstance(stream, openai.AsyncStream)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            await stream.close()
        return s, reply, "".join(parts)

    s, reply, text = asyncio.run(closing_after(async_client, main()))
    first, second = s.calls
    assert first.usage.input_tokens == reply.usage.prompt_tokens and not first.estimated
    assert first.usage.output_tokens == reply.usage.completion_tokens
    assert second.estimated and second.response == text
    assert s.usage == first.usage + second.usage
    assert s.budget is not None and s.budget.ledger.snapshot().reservations == 0


def test_async_consumer_cancelled_mid_stream_is_settled(async_client: Any) -> None:
    """A task cancelled while holding an open stream (inside ``async with``) leaves nothing reserved."""

    async def main() -> Any:
        budget = llmctx.Budget(tokens=4_000)
        got_one = asyncio.Event()
        async with llmctx.session(store="memory:", budget=budget) as s:

            async def consume() -> None:
                stream = await async_client.chat.completions.create(
                    model=SERVED_MODEL, messages=MESSAGES, max_tokens=64, stream=True
                )
                async with stream:
                    async for _ in stream:
                        got_one.set()
                        await asyncio.Event().wait()  # stuck mid-stream until cancelled

            task = asyncio.create_task(consume())
            await asyncio.wait_for(got_one.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return s

    s = asyncio.run(closing_after(async_client, main()))
    (record,) = s.calls
    assert record.estimated and record.metadata.get("abandoned") is True
    assert record.usage.input_tokens > 0
    assert s.budget is not None and s.budget.ledger.snapshot().reservations == 0


def test_records_name_the_server_host_and_port_never_its_credentials(llama_server: Any) -> None:
    """A call through a client whose base URL carries a user, password and path records only
    server_address (the host) and server_port (an int), sync and async alike."""
    port = int(llama_server.base_url.rsplit(":", 1)[1].split("/", 1)[0])
    base = f"http://user:hunter2hunter2@127.0.0.1:{port}/v1"
    sync_client = instrument(openai.OpenAI(base_url=base, api_key="sk-local-unused-0000000000"))
    async_client = instrument(
        openai.AsyncOpenAI(base_url=base, api_key="sk-local-unused-0000000000")
    )

    async def async_call() -> None:
        await async_client.chat.completions.create(
            model=SERVED_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
        )

    with llmctx.session("where", store="memory:") as s:
        sync_client.chat.completions.create(
            model=SERVED_MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        asyncio.run(closing_after(async_client, async_call()))
    assert len(s.calls) == 2
    for record in s.calls:
        assert record.metadata["server_address"] == "127.0.0.1"
        assert record.metadata["server_port"] == port
        assert record.status == "ok" and "hunter2" not in str(record.to_dict())


def test_server_port_defaults_to_the_schemes() -> None:
    """An OpenAI client on its default base URL names api.openai.com and port 443; a google-genai
    style client (base URL in its http options) is read too; a URL's user, password, path and
    query never come out; no base URL gives nothing."""
    from types import SimpleNamespace

    from llmctx.providers._base import server_metadata

    default = openai.OpenAI(api_key="sk-local-unused-0000000000")
    assert server_metadata(default) == {"server_address": "api.openai.com", "server_port": 443}
    genai_like = SimpleNamespace(
        _http_options=SimpleNamespace(base_url="https://generativelanguage.googleapis.com/")
    )
    assert server_metadata(genai_like) == {
        "server_address": "generativelanguage.googleapis.com",
        "server_port": 443,
    }
    with_secrets = SimpleNamespace(base_url="https://u:pw-1234@llm.example:8443/v1?key=k-5678")
    assert server_metadata(with_secrets) == {"server_address": "llm.example", "server_port": 8443}
    assert server_metadata(object()) == {}


# -- Budget(on_exceed=...): the substitute request goes through the charge path again --------


def test_a_smaller_request_goes_out_instead_of_the_refused_one(
    client: Any, llama_server: Any
) -> None:
    """on_exceed's smaller max_tokens is sent, charged and recorded; the refusal is kept."""
    seen: list[dict[str, Any]] = []

    def smaller(refusal: llmctx.BudgetExceeded) -> dict[str, Any]:
        assert refusal.request is not None
        seen.append(refusal.request)
        return {"max_tokens": 4}

    before = llama_server.requests_seen()
    store = MemoryStore()
    with llmctx.session(store=store, budget=llmctx.Budget(tokens=80, on_exceed=smaller)) as s:
        reply = client.chat.completions.create(
            model=SERVED_MODEL, messages=MESSAGES, max_tokens=200
        )
    assert reply.usage.completion_tokens <= 4
    assert llama_server.requests_seen() == before + 1  # only the substitute reached the server
    assert [r["max_tokens"] for r in seen] == [200] and seen[0]["messages"] == MESSAGES
    assert s.usage.output_tokens == reply.usage.completion_tokens and s.usage.requests == 1
    calls = store.list_calls([s.id], refused=True)
    assert sorted(c.status for c in calls) == ["ok", "refused"]
    ok = next(c for c in calls if c.status == "ok")
    assert ok.request["max_tokens"] == 4 and ok.usage.output_tokens <= 4


def test_on_exceed_returning_none_raises_the_refusal(client: Any, llama_server: Any) -> None:
    """None from on_exceed raises BudgetExceeded as without it; nothing reaches the server."""
    before = llama_server.requests_seen()
    budget = llmctx.Budget(tokens=20, on_exceed=lambda refusal: None)
    with llmctx.session(store="memory:", budget=budget), pytest.raises(llmctx.BudgetExceeded):
        client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=200)
    assert llama_server.requests_seen() == before


def test_substitutes_that_never_fit_stop_after_the_most_allowed(
    client: Any, llama_server: Any
) -> None:
    """A substitute that is refused every time ends with the last refusal, after the maximum."""
    asked: list[int] = []

    def still_too_big(refusal: llmctx.BudgetExceeded) -> dict[str, Any]:
        asked.append(refusal.request["max_tokens"])  # type: ignore[index]
        return {"max_tokens": 150}

    before = llama_server.requests_seen()
    store = MemoryStore()
    budget = llmctx.Budget(tokens=20, on_exceed=still_too_big)
    with llmctx.session(store=store, budget=budget) as s:
        with pytest.raises(llmctx.BudgetExceeded) as caught:
            client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=200)
    assert len(asked) == MAX_SUBSTITUTES
    assert any("substitute requests" in note for note in caught.value.__notes__)
    assert llama_server.requests_seen() == before
    refused = store.list_calls([s.id], refused=True)
    assert len(refused) == MAX_SUBSTITUTES + 1 and {c.status for c in refused} == {"refused"}


def test_async_client_sends_the_substitute(llama_server: Any) -> None:
    """The async SDK path takes the substitute too."""
    aclient = instrument(
        openai.AsyncOpenAI(base_url=llama_server.base_url, api_key="sk-local-unused-0000000000")
    )

    async def main() -> Any:
        try:
            budget = llmctx.Budget(tokens=80, on_exceed=lambda r: {"max_tokens": 3})
            async with llmctx.session(store="memory:", budget=budget) as s:
                reply = await aclient.chat.completions.create(
                    model=SERVED_MODEL, messages=MESSAGES, max_tokens=500
                )
            return reply, s
        finally:
            await aclient.close()

    reply, s = asyncio.run(main())
    assert reply.usage.completion_tokens <= 3 and s.usage.requests == 1


def test_bad_on_exceed_is_a_clear_error(client: Any) -> None:
    """A non-callable on_exceed, or one returning a non-mapping, is a ConfigError."""
    with pytest.raises(llmctx.ConfigError, match="on_exceed"):
        llmctx.Budget(tokens=10, on_exceed="cheaper")  # type: ignore[arg-type]
    budget = llmctx.Budget(tokens=20, on_exceed=lambda r: "gpt-4o-mini")  # type: ignore[arg-type,return-value]
    with llmctx.session(store="memory:", budget=budget):
        with pytest.raises(llmctx.ConfigError, match="request fields to change"):
            client.chat.completions.create(model=SERVED_MODEL, messages=MESSAGES, max_tokens=200)
