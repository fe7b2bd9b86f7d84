"""The OpenAI Agents SDK's ``Runner`` against the local llama.cpp server, charged by ``llmctx.instrument()``.

The agent's model is ``OpenAIChatCompletionsModel`` over an ``AsyncOpenAI`` the test makes
(the Agents SDK's own way to use a non-OpenAI server); tracing export is off (no network).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("agents")

import openai
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from fw_support import API_KEY, MAX_TOKENS, PROMPT, SERVED_MODEL, assert_exact, refused

import llmctx

set_tracing_disabled(True)


def agent(server: Any, client: Any) -> Agent[Any]:
    model = OpenAIChatCompletionsModel(model=SERVED_MODEL, openai_client=client)
    return Agent(
        name="colours",
        instructions="Answer in one word.",
        model=model,
        model_settings=ModelSettings(max_tokens=MAX_TOKENS, temperature=0.0),
    )


def run(server: Any, work: Any, **client_kwargs: Any) -> Any:
    async def main() -> Any:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, **client_kwargs)
        try:
            return await work(agent(server, client))
        finally:
            await client.close()

    return asyncio.run(main())


def test_runner_run_records_each_request_with_the_servers_usage(
    llama_server: Any, seen: Any
) -> None:
    """Runner.run: one record per server request, the agent's instructions and input as the prompt, usage equal to the SDK's."""

    async def work(bot: Agent[Any]) -> tuple[llmctx.Session, Any]:
        async with llmctx.session("agents", store="memory:") as s:
            result = await Runner.run(bot, PROMPT)
        return s, result

    s, result = run(llama_server, work)
    assert_exact(s.calls, seen())
    (call,) = s.calls
    assert call.request["messages"][0] == {"role": "system", "content": "Answer in one word."}
    assert call.request["messages"][-1]["content"] == PROMPT
    usage = result.context_wrapper.usage
    assert (call.usage.input_tokens, call.usage.output_tokens) == (
        usage.input_tokens,
        usage.output_tokens,
    )


def test_run_streamed_is_charged_once_with_ttft(llama_server: Any, seen: Any) -> None:
    """Runner.run_streamed: one record for the streamed turn, with time to first token."""

    async def work(bot: Agent[Any]) -> llmctx.Session:
        async with llmctx.session("agents-stream", store="memory:") as s:
            streamed = Runner.run_streamed(bot, PROMPT)
            async for _ in streamed.stream_events():
                pass
        return s

    s = run(llama_server, work)
    (call,) = s.calls
    assert seen() == 1 and call.ttft_s is not None and call.metadata["stream"]


def test_budget_stops_the_run_before_the_server_sees_it(
    llama_server: Any, seen: Any, store: Any
) -> None:
    """A budget too small raises BudgetExceeded out of Runner.run (client max_retries=3): refused once, nothing sent."""

    async def work(bot: Agent[Any]) -> llmctx.Session:
        async with llmctx.session("tight", store=store, budget=llmctx.Budget(tokens=20)) as s:
            with pytest.raises(llmctx.BudgetExceeded):
                await Runner.run(bot, PROMPT)
        return s

    s = run(llama_server, work, max_retries=3)
    assert seen() == 0 and s.usage.requests == 0 and len(refused(store, s)) == 1


def test_nested_steps_and_concurrent_runs(llama_server: Any, seen: Any) -> None:
    """Two steps in child sessions roll up to the parent; 10 gathered runs in 10 sessions charge each its own."""

    async def work(bot: Agent[Any]) -> tuple[llmctx.Session, list[llmctx.Session]]:
        async with llmctx.session("parent", store="memory:") as parent:
            for step in ("plan", "act"):
                async with llmctx.session(step):
                    await Runner.run(bot, PROMPT)

        async def one(i: int) -> llmctx.Session:
            async with llmctx.session(f"run-{i}", store="memory:") as s:
                await Runner.run(bot, f"{PROMPT} ({i})")
            return s

        runs = await asyncio.gather(*(one(i) for i in range(10)))
        return parent, list(runs)

    parent, runs = run(llama_server, work)
    assert parent.usage.requests == 2
    for i, r in enumerate(runs):
        (call,) = r.calls
        assert call.session_id == r.id and call.request["messages"][-1]["content"].endswith(
            f"({i})"
        )
    assert seen() == 12
