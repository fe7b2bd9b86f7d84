"""LangChain's ``ChatOpenAI`` against the local llama.cpp server, charged by ``llmctx.instrument()``.

``langchain-openai`` makes its own ``openai`` clients (and calls them through
``with_raw_response``); its ``max_retries`` is the SDK's retry loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from fw_support import API_KEY, MAX_TOKENS, PROMPT, SERVED_MODEL, assert_exact, refused
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

import llmctx


def chat(server: Any, **kwargs: Any) -> ChatOpenAI:
    # llama.cpp's server reads max_tokens; langchain sends max_completion_tokens: send both.
    return ChatOpenAI(
        model=SERVED_MODEL,
        base_url=server.base_url,
        api_key=API_KEY,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        extra_body={"max_tokens": MAX_TOKENS},
        **kwargs,
    )


def test_invoke_records_each_request_with_the_servers_usage(llama_server: Any, seen: Any) -> None:
    """invoke: one record per server request, LangChain's messages as the prompt, its usage_metadata as the tokens."""
    llm = chat(llama_server)
    with llmctx.session("lc", store="memory:") as s:
        reply = llm.invoke([SystemMessage("Answer in one word."), HumanMessage(PROMPT)])
    assert_exact(s.calls, seen())
    (call,) = s.calls
    assert [m["role"] for m in call.request["messages"]] == ["system", "user"]
    assert call.request["messages"][1]["content"] == PROMPT
    assert reply.usage_metadata is not None
    assert call.usage.input_tokens == reply.usage_metadata["input_tokens"]
    assert call.usage.output_tokens == reply.usage_metadata["output_tokens"]


def test_stream_is_charged_once_with_ttft(llama_server: Any, seen: Any) -> None:
    """.stream: one record for the whole stream, with time to first token."""
    llm = chat(llama_server)
    with llmctx.session("lc-stream", store="memory:") as s:
        text = "".join(str(chunk.content) for chunk in llm.stream(PROMPT))
    assert text
    (call,) = s.calls
    assert seen() == 1 and call.ttft_s is not None and call.metadata["stream"]
    assert call.usage.output_tokens > 0


def test_budget_stops_invoke_before_the_server_sees_it(
    llama_server: Any, seen: Any, store: Any
) -> None:
    """A budget too small raises BudgetExceeded out of invoke, with max_retries=3, refused once, nothing sent."""
    llm = chat(llama_server, max_retries=3)
    with llmctx.session("tight", store=store, budget=llmctx.Budget(tokens=20)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            llm.invoke(PROMPT)
        with pytest.raises(llmctx.BudgetExceeded):
            list(llm.stream(PROMPT))
    assert seen() == 0 and s.usage.requests == 0 and len(refused(store, s)) == 2


def test_concurrent_ainvoke_runs_charge_their_own_sessions(llama_server: Any, seen: Any) -> None:
    """10 gathered ainvoke calls in 10 child sessions: each charged to its own, all rolled up to the parent."""
    llm = chat(llama_server)

    async def one(i: int) -> llmctx.Session:
        async with llmctx.session(f"call-{i}") as s:
            await llm.ainvoke(f"{PROMPT} ({i})")
        return s

    async def main() -> tuple[llmctx.Session, list[llmctx.Session]]:
        async with llmctx.session("parent", store="memory:") as parent:
            runs = await asyncio.gather(*(one(i) for i in range(10)))
        return parent, list(runs)

    parent, runs = asyncio.run(main())
    for i, run in enumerate(runs):
        (call,) = run.calls
        assert call.request["messages"][-1]["content"].endswith(f"({i})")
    assert parent.usage.requests == 10 == seen()
    assert parent.usage.total_tokens == sum(r.usage.total_tokens for r in runs)
