"""Per-server callbacks that know whom they serve, interceptors, tool filters, restart, refresh."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp_helpers import SERVERS, stdio, tiny

import llmctx
from llmctx.mcp import (
    CallbackContext,
    Hub,
    ServerCallbacks,
    ServerState,
    ToolCall,
    ToolError,
    ToolRefused,
    result_text,
)
from llmctx.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

ASKING = SERVERS / "asking_server.py"


async def test_a_roots_callback_for_one_server_reaches_only_that_server() -> None:
    """Roots given for server a answer a's request with a's context; server b is told the client
    has no roots (its own allowed directories stay its own)."""
    seen: list[tuple[str, str | None, tuple[str, ...]]] = []

    async def roots(ctx: CallbackContext) -> types.ListRootsResult:
        seen.append((ctx.server, ctx.tool, ctx.in_flight))
        assert ctx.request_id is not None  # the SDK context's fields read through
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/a")])

    config = {"mcpServers": {"a": stdio(ASKING), "b": stdio(ASKING)}}
    with anyio.fail_after(60):
        async with Hub.from_config(
            config, callbacks={"a": ServerCallbacks(list_roots=roots)}
        ) as hub:
            assert result_text(await hub.call("a.roots")) == "file:///srv/a"
            with pytest.raises(ToolError, match="roots not supported"):
                await hub.call("b.roots")
    assert seen == [("a", "a.roots", ("a.roots",))]


async def test_hub_wide_callbacks_apply_to_every_server_unless_one_has_its_own() -> None:
    """A hub-wide roots callback serves every server; a per-server one wins for its server."""

    def answering(uri: str) -> Any:
        async def roots(ctx: CallbackContext) -> types.ListRootsResult:
            return types.ListRootsResult(roots=[types.Root(uri=f"{uri}/{ctx.server}")])

        return roots

    config = {"mcpServers": {"a": stdio(ASKING), "b": stdio(ASKING)}}
    with anyio.fail_after(60):
        async with Hub.from_config(
            config,
            list_roots_callback=answering("file:///shared"),
            callbacks={"b": ServerCallbacks(list_roots=answering("file:///own"))},
        ) as hub:
            assert result_text(await hub.call("a.roots")) == "file:///shared/a"
            assert result_text(await hub.call("b.roots")) == "file:///own/b"


async def test_interceptors_refuse_rewrite_and_retry() -> None:
    """An interceptor sees server, tool and arguments; it can refuse (nothing sent), rewrite the
    arguments, or call again after an error; dispatch turns a refusal into an error reply."""
    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def log(call: ToolCall, proceed: Any) -> types.CallToolResult:
        seen.append((call.server, call.tool, dict(call.arguments)))
        return await proceed(None)

    async def policy(call: ToolCall, proceed: Any) -> types.CallToolResult:
        if call.tool == "crash":
            raise ToolRefused(call.qualified, "crashing is not allowed here")
        if call.tool == "echo":
            return await proceed({"text": call.arguments["text"].upper()})
        result = await proceed(None)
        while result.is_error and call.attempt < 3:
            result = await proceed(None)
        return result

    config = {"mcpServers": {"t": tiny(), "ask": stdio(ASKING)}}
    with anyio.fail_after(60):
        async with Hub.from_config(config, interceptors=[log, policy]) as hub:
            assert result_text(await hub.call("t.echo", {"text": "quiet"})) == "QUIET"
            with pytest.raises(ToolRefused, match="crashing is not allowed"):
                await hub.call("t.crash")
            assert hub.status()["t"].crashes == 0  # never sent
            assert result_text(await hub.call("ask.flaky")) == "fine"  # retried once
            reply = await hub.dispatch(
                {"type": "tool_use", "id": "x", "name": "t.crash", "input": {}}
            )
            assert reply.is_error and "refused" in reply.content
    assert seen[0] == ("t", "echo", {"text": "quiet"})
    assert [s[1] for s in seen] == ["echo", "crash", "flaky", "crash"]


async def test_a_refused_call_is_recorded_as_failed_on_the_session() -> None:
    """A refusal is charged to the session as a failed tool call (it is visible, not lost)."""

    async def refuse(call: ToolCall, proceed: Any) -> types.CallToolResult:
        raise ToolRefused(call.qualified, "no")

    async with Hub.from_config({"mcpServers": {"t": tiny()}}, interceptors=[refuse]) as hub:
        async with llmctx.session("refusals", store=MemoryStore()) as s:
            with pytest.raises(ToolRefused):
                await hub.call("t.echo", {"text": "x"})
        assert [(r.model, r.status) for r in s.calls] == [("t.echo", "error")]


async def test_callable_tool_filters_per_server_and_hub_wide() -> None:
    """A tool filter (server, tool) -> bool hides tools, hub-wide or per server."""
    config = {"mcpServers": {"a": tiny(), "b": tiny()}}
    async with Hub.from_config(
        config, tool_filter=lambda server, tool: not tool.description.startswith("Die")
    ) as hub:
        assert sorted(t.qualified for t in hub.tools() if t.name == "crash") == []
    async with Hub.from_config(config, tool_filter={"a": lambda s, t: t.name == "echo"}) as hub:
        assert [t.name for t in hub.tools() if t.server == "a"] == ["echo"]
        assert len([t for t in hub.tools() if t.server == "b"]) == 4


async def test_restart_one_server_and_revive_a_failed_one() -> None:
    """hub.restart(name) gives a ready server a new process and revives a failed one."""
    config = {"mcpServers": {"t": tiny(), "other": tiny(maxRestarts=0)}}
    async with Hub.from_config(config) as hub:
        with anyio.fail_after(30):
            old = hub.status()["t"].pid
            status = await hub.restart("t")
            assert status.state is ServerState.READY and status.pid not in (None, old)
            assert status.crashes == 0
            assert result_text(await hub.call("t.echo", {"text": "new"})) == "new"
            # A crash with maxRestarts=0 opens the breaker: the server is failed...
            with pytest.raises(llmctx.mcp.ServerCrashed):
                await hub.call("other.crash")
            await hub.server("other").wait_settled(after=hub.server("other").generation)
            assert hub.status()["other"].state is ServerState.FAILED
            # ... until restarted by hand.
            revived = await hub.restart("other")
            assert revived.state is ServerState.READY
            assert result_text(await hub.call("other.echo", {"text": "alive"})) == "alive"
        assert hub.status()["t"].state is ServerState.READY


async def test_refresh_relists_on_demand() -> None:
    """hub.refresh() re-lists a server's tools (the filter is applied again)."""
    hidden = {"echo"}
    config = {"mcpServers": {"t": tiny()}}
    async with Hub.from_config(config, tool_filter=lambda s, t: t.name not in hidden) as hub:
        assert "t.echo" not in {t.qualified for t in hub.tools()}
        hidden.clear()
        await hub.refresh("t")
        assert "t.echo" in {t.qualified for t in hub.tools()}


async def test_cancelling_a_restart_leaves_the_server_coming_back_and_nothing_leaked() -> None:
    """A hub.restart() cancelled while it waits still restarts the server; the hub's exit
    then leaves no process (the autouse fixture checks children, the watcher included)."""
    config = {"mcpServers": {"t": tiny("--delay", "0.5")}}
    async with Hub.from_config(config) as hub:
        with anyio.fail_after(30):
            with anyio.move_on_after(0.05) as scope:
                await hub.restart("t")
            assert scope.cancelled_caught
            assert result_text(await hub.call("t.echo", {"text": "back"})) == "back"
        assert hub.status()["t"].restarts == 1
