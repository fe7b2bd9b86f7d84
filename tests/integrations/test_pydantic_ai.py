"""pydantic-ai's own Agent API against the local llama.cpp server, charged by ``llmctx.instrument()``.

pydantic-ai builds its own ``AsyncOpenAI`` inside ``OpenAIProvider``; nothing here hands a
client to llmctx. The server's access log says how many requests it saw.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from fw_support import API_KEY, MAX_TOKENS, PROMPT, SERVED_MODEL, assert_exact, refused
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

import llmctx


def agent(server: Any, **kwargs: Any) -> Agent[None, str]:
    # llama.cpp's server reads max_tokens, pydantic-ai sends max_completion_tokens: send both.
    settings = ModelSettings(
        max_tokens=MAX_TOKENS, temperature=0.0, extra_body={"max_tokens": MAX_TOKENS}
    )
    provider = OpenAIProvider(base_url=server.base_url, api_key=API_KEY)
    return Agent(
        OpenAIChatModel(SERVED_MODEL, provider=provider), model_settings=settings, **kwargs
    )


def test_run_sync_records_each_request_with_the_servers_usage(llama_server: Any, seen: Any) -> None:
    """Agent.run_sync: one record per server request, its prompt the agent's messages, tokens equal to pydantic-ai's usage."""
    bot = agent(llama_server, instructions="Answer in one word.")
    with llmctx.session("pai", store="memory:") as s:
        result = bot.run_sync(PROMPT)
    assert_exact(s.calls, seen())
    (call,) = s.calls
    messages = call.request["messages"]
    assert messages[0] == {"role": "system", "content": "Answer in one word."}
    assert messages[-1]["content"] == PROMPT
    assert call.usage.input_tokens == result.usage.input_tokens
    assert call.usage.output_tokens == result.usage.output_tokens and call.response == result.output


def test_run_stream_is_charged_once_with_ttft(llama_server: Any, seen: Any) -> None:
    """Agent.run_stream: one record for the stream, with time to first token."""
    bot = agent(llama_server)

    async def main() -> llmctx.Session:
        async with llmctx.session("pai-stream", store="memory:") as s:
            async with bot.run_stream(PROMPT) as result:
                text = "".join([d async for d in result.stream_text(delta=True)])
        assert text
        return s

    s = asyncio.run(main())
    (call,) = s.calls
    assert seen() == 1 and call.ttft_s is not None and call.metadata["stream"]
    assert call.usage.output_tokens > 0 and s.usage.requests == 1


def test_budget_stops_the_run_before_the_server_sees_it(
    llama_server: Any, seen: Any, store: Any
) -> None:
    """A budget too small raises BudgetExceeded out of run_sync, no request sent, refused once despite retries."""
    bot = agent(llama_server, retries=3)
    with llmctx.session("tight", store=store, budget=llmctx.Budget(tokens=20)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            bot.run_sync(PROMPT)
    assert seen() == 0 and s.usage.requests == 0 and len(refused(store, s)) == 1


def test_nested_steps_roll_up_and_concurrent_runs_stay_apart(llama_server: Any, seen: Any) -> None:
    """Steps in child sessions roll up to the parent; 10 gathered runs in 10 sessions charge each its own."""
    bot = agent(llama_server)

    async def one(i: int) -> llmctx.Session:
        async with llmctx.session(f"run-{i}", store="memory:") as s:
            await bot.run(f"{PROMPT} ({i})")
        return s

    async def main() -> tuple[llmctx.Session, list[llmctx.Session]]:
        async with llmctx.session("parent", store="memory:") as parent:
            for step in ("plan", "act"):
                async with llmctx.session(step):
                    await bot.run(PROMPT)
        runs = await asyncio.gather(*(one(i) for i in range(10)))
        return parent, list(runs)

    parent, runs = asyncio.run(main())
    assert parent.usage.requests == 2 and parent.usage.total_tokens > 0
    for i, run in enumerate(runs):
        (call,) = run.calls
        assert call.session_id == run.id and call.request["messages"][-1]["content"].endswith(
            f"({i})"
        )
    assert seen() == 12
