"""Budget(on_exceed=...): a refused call's substitute request goes through the charge path
again, with the real ``openai`` SDK against llama.cpp's own server (fixture ``llama_server``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")

import llmctx  # noqa: E402
from llmctx.providers import instrument  # noqa: E402
from llmctx.providers._sdk import MAX_SUBSTITUTES  # noqa: E402
from llmctx.stores import MemoryStore  # noqa: E402

SERVED_MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Name one colour."}]


@pytest.fixture(autouse=True)
def _price() -> Iterator[None]:
    """Price the served model: $1 per million in, $2 per million out."""
    with llmctx.price_override(SERVED_MODEL, input_per_mtok="1", output_per_mtok="2"):
        yield


@pytest.fixture
def client(llama_server: Any) -> Any:
    """An instrumented openai.OpenAI pointed at the local server."""
    return instrument(
        openai.OpenAI(base_url=llama_server.base_url, api_key="sk-local-unused-0000000000")
    )


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
