"""MCP sampling answered by a real local model goes through the charge path.

The server (``servers/asking_server.py``, the official SDK) asks the client for a completion
inside its ``ask`` tool; the hub answers with :func:`llmctx.mcp.model_sampler` on the bundled
SmolLM2 model. The model call is charged to the session of the tool call, and a budget that
cannot cover it refuses it before the model runs.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp_helpers import SERVERS, stdio

import llmctx
from llmctx.mcp import (
    CallbackContext,
    Hub,
    ServerCallbacks,
    ToolError,
    model_sampler,
    result_text,
)
from llmctx.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def model() -> Any:
    """The bundled local model, loaded once for this module."""
    return llmctx.local_model(n_ctx=512)


def _config() -> dict[str, Any]:
    return {
        "mcpServers": {
            "ask": stdio(SERVERS / "asking_server.py"),
            "quiet": stdio(SERVERS / "asking_server.py"),
        }
    }


async def test_sampling_is_charged_to_the_session_of_the_tool_call(model: Any) -> None:
    """The model's answer reaches the tool, and the session records it as an llm call with
    tokens, beside the tool call it served."""
    sampler = model_sampler(model, max_tokens=16)
    served: list[CallbackContext] = []

    async def sampling(ctx: CallbackContext, params: Any) -> Any:
        served.append(ctx)
        return await sampler(ctx, params)

    async with Hub.from_config(
        _config(), callbacks={"ask": ServerCallbacks(sampling=sampling)}
    ) as hub:
        async with llmctx.session(
            "sampling", store=MemoryStore(), budget=llmctx.Budget(tokens=5_000)
        ) as s:
            with anyio.fail_after(120):
                result = await hub.call("ask.ask", {"prompt": "Say hello.", "max_tokens": 16})
        assert not result.is_error, result_text(result)
        assert result_text(result).strip()
    kinds = [(r.kind, r.status) for r in s.calls]
    assert ("llm", "ok") in kinds and ("tool", "ok") in kinds
    llm = next(r for r in s.calls if r.kind == "llm")
    assert llm.provider == "llama-cpp" and llm.usage.output_tokens > 0
    assert s.usage.input_tokens > 0
    assert served[0].server == "ask" and served[0].tool == "ask.ask"
    assert served[0].charge_to is s


async def test_a_budget_refuses_sampling_before_the_model_runs(model: Any) -> None:
    """With a budget too small for the request, the model never runs and the call fails saying
    why (BudgetExceeded, the session's name); the session spent no tokens."""
    async with Hub.from_config(_config(), sampling_callback=model_sampler(model)) as hub:
        async with llmctx.session(
            "sampling-refused", store=MemoryStore(), budget=llmctx.Budget(tokens=10)
        ) as s:
            with anyio.fail_after(60), pytest.raises(ToolError) as info:
                await hub.call("ask.ask", {"prompt": "Write a long story.", "max_tokens": 64})
    assert "sampling refused by the client (BudgetExceeded)" in str(info.value)
    assert "token budget of session 'sampling-refused' exceeded" in str(info.value)
    assert s.usage.input_tokens == 0 and s.usage.output_tokens == 0
    assert not [r for r in s.calls if r.kind == "llm" and r.status == "ok"]


async def test_a_server_without_a_sampling_callback_is_not_offered_sampling(model: Any) -> None:
    """Sampling given for one server only: the other server's request is refused by the SDK."""
    config = _config()
    callbacks = {"ask": ServerCallbacks(sampling=model_sampler(model, max_tokens=8))}
    async with Hub.from_config(config, callbacks=callbacks) as hub:
        with anyio.fail_after(60), pytest.raises(ToolError, match="Sampling not supported"):
            await hub.call("quiet.ask", {"prompt": "hi"})
