"""LiteLLM and DSPy against the local llama.cpp server, charged by ``llmctx.instrument()``.

LiteLLM is covered by llmctx's hook on ``litellm.completion`` / ``acompletion`` (its raw-HTTP
providers, such as ``hosted_vllm``, never touch an SDK llmctx patches). DSPy is run with
``engine="litellm"``; its default engine (a vendored HTTP client) is not covered
(docs/integrations.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

litellm = pytest.importorskip("litellm")

from fw_support import API_KEY, MAX_TOKENS, PROMPT, SERVED_MODEL, assert_exact, refused  # noqa: E402

import llmctx  # noqa: E402

MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.mark.parametrize("prefix", ["openai", "hosted_vllm"])
def test_completion_records_each_request_with_the_servers_usage(
    llama_server: Any, seen: Any, prefix: str
) -> None:
    """litellm.completion (through the OpenAI SDK or raw HTTP): one exact record per request, no double charge."""
    with llmctx.session("litellm", store="memory:") as s:
        reply = litellm.completion(
            model=f"{prefix}/{SERVED_MODEL}",
            api_base=llama_server.base_url,
            api_key=API_KEY,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
        )
    assert_exact(s.calls, seen())
    (call,) = s.calls
    assert call.provider == prefix and call.model == SERVED_MODEL
    assert call.request["messages"] == MESSAGES
    assert call.usage.input_tokens == reply.usage.prompt_tokens
    assert call.usage.output_tokens == reply.usage.completion_tokens


def test_async_stream_is_charged_once_with_ttft(llama_server: Any, seen: Any) -> None:
    """acompletion(stream=True) over raw HTTP: one record for the stream, with time to first token."""

    async def main() -> llmctx.Session:
        async with llmctx.session("litellm-stream", store="memory:") as s:
            stream = await litellm.acompletion(
                model=f"hosted_vllm/{SERVED_MODEL}",
                api_base=llama_server.base_url,
                api_key=API_KEY,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                stream=True,
            )
            async for _ in stream:
                pass
        return s

    s = asyncio.run(main())
    (call,) = s.calls
    assert seen() == 1 and call.ttft_s is not None and call.metadata["stream"]


@pytest.mark.parametrize("prefix", ["openai", "hosted_vllm"])
def test_budget_refusal_is_raised_unchanged_and_not_retried(
    llama_server: Any, seen: Any, store: Any, prefix: str
) -> None:
    """BudgetExceeded comes out of litellm.completion as itself (not a litellm error), num_retries=3, refused once."""
    with llmctx.session("tight", store=store, budget=llmctx.Budget(tokens=5)) as s:
        with pytest.raises(llmctx.BudgetExceeded):
            litellm.completion(
                model=f"{prefix}/{SERVED_MODEL}",
                api_base=llama_server.base_url,
                api_key=API_KEY,
                messages=MESSAGES,
                max_tokens=MAX_TOKENS,
                num_retries=3,
            )
    assert seen() == 0 and len(refused(store, s)) == 1


def test_dspy_predict_is_charged_and_stopped(llama_server: Any, seen: Any, store: Any) -> None:
    """dspy.Predict (engine='litellm'): exact records; a tight budget stops it before sending, once, with num_retries=3.

    DSPy wraps every engine exception in its own ``LMUnexpectedError``: the BudgetExceeded is
    its ``__cause__``, not the exception raised.
    """
    dspy = pytest.importorskip("dspy")
    lm = dspy.LM(
        f"openai/{SERVED_MODEL}",
        api_base=llama_server.base_url,
        api_key=API_KEY,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        cache=False,
        engine="litellm",
        num_retries=3,
    )
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        with llmctx.session("dspy", store="memory:") as s:
            predict(question=PROMPT)
        assert_exact(s.calls, seen())
        assert PROMPT in str(s.calls[0].request["messages"])
        before = seen()
        with llmctx.session("dspy-tight", store=store, budget=llmctx.Budget(tokens=50)) as tight:
            with pytest.raises(dspy.utils.exceptions.LMError) as info:
                predict(question=PROMPT)
    assert isinstance(info.value.__cause__, llmctx.BudgetExceeded)
    assert seen() == before and len(refused(store, tight)) == 1
