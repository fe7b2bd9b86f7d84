"""The MCP hub against real server subprocesses: startup, calls, crashes, shutdown, schemas."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_helpers import EXAMPLES, SERVERS, gone, live_children, new_children, stdio, tiny

import llmctx
from llmctx.mcp import (
    Hub,
    ServerCrashed,
    ServerStartError,
    ServerState,
    ServerUnavailable,
    ToolNotFound,
    ToolTimeout,
)
from llmctx.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sdk_servers_start_concurrently_and_answer(tmp_path: Path) -> None:
    """The example servers start together, list name-spaced tools and answer routed calls."""
    (tmp_path / "hello.txt").write_text("hello from the root")
    config = {
        "mcpServers": {
            "notes": stdio(EXAMPLES / "notes_server.py", str(tmp_path / "notes.db")),
            "files": stdio(EXAMPLES / "files_server.py", str(tmp_path)),
            "tiny": tiny(),
        }
    }
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            status = hub.status()
            assert {s.state for s in status.values()} == {ServerState.READY}
            assert all(s.startup_seconds is not None for s in status.values())
            names = {t.qualified for t in hub.tools()}
            assert {"notes.add_note", "notes.search_notes", "files.read_file", "tiny.echo"} <= names

            added = await hub.call("notes.add_note", {"title": "groceries", "body": "milk"})
            assert not added.is_error
            found = await hub.call("notes__search_notes", {"query": "MILK"})
            assert "groceries" in llmctx.mcp.result_text(found)
            read = await hub.call("files.read_file", {"path": "hello.txt"})
            assert llmctx.mcp.result_text(read) == "hello from the root"
            escaped = await hub.call("files.read_file", {"path": "../../../etc/passwd"})
            assert escaped.is_error and "outside the served root" in llmctx.mcp.result_text(escaped)

            note = await hub.read_resource("note://1", server="notes")
            assert "milk" in note.contents[0].text  # type: ignore[union-attr]
            with pytest.raises(ToolNotFound):
                await hub.call("notes.no_such_tool")
    assert all(s.state is ServerState.STOPPED for s in hub.status().values())


async def test_concurrent_calls_and_cancelling_one_keeps_the_session() -> None:
    """Calls overlap on one session; cancelling or timing out one leaves the server usable."""
    async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
        results: list[str] = []

        async def echo(i: int) -> None:
            results.append(llmctx.mcp.result_text(await hub.call("t.echo", {"text": str(i)})))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(echo, i)
            assert sorted(results, key=int) == [str(i) for i in range(20)]

            with anyio.move_on_after(0.2) as scope:
                await hub.call("t.slow", {"seconds": 30})
            assert scope.cancelled_caught
            with pytest.raises(ToolTimeout):
                await hub.call("t.slow", {"seconds": 30}, timeout=0.2)
            again = await hub.call("t.echo", {"text": "still here"})
            assert llmctx.mcp.result_text(again) == "still here"
            assert hub.status()["t"].crashes == 0


async def test_crash_mid_call_raises_and_server_comes_back() -> None:
    """A crash fails the in-flight call with ServerCrashed (stderr attached); the server restarts."""
    config = {"mcpServers": {"crashy": stdio(SERVERS / "crashy_server.py"), "t": tiny()}}
    async with Hub.from_config(config) as hub:
        async with anyio.create_task_group() as tg:
            # An unrelated slow call on the same server fails too, at once.
            errors: list[BaseException] = []

            async def slow() -> None:
                try:
                    await hub.call("t.slow", {"seconds": 60})
                except ServerCrashed as exc:
                    errors.append(exc)

            tg.start_soon(slow)
            await anyio.sleep(0)  # let the slow call go out before the crash
            with anyio.fail_after(5):
                with pytest.raises(ServerCrashed) as info:
                    await hub.call("t.crash")
        assert info.value.returncode == 1
        assert any("crashing on purpose" in line for line in info.value.stderr)
        assert len(errors) == 1 and isinstance(errors[0], ServerCrashed)

        with anyio.fail_after(10):
            back = await hub.call("t.echo", {"text": "back"})
        assert llmctx.mcp.result_text(back) == "back"
        status = hub.status()["t"]
        assert (status.state, status.crashes, status.restarts) == (ServerState.READY, 1, 1)

        with anyio.fail_after(30):
            with pytest.raises(ServerCrashed, match="crashing on purpose"):
                await hub.call("crashy.crash")


async def test_breaker_opens_after_repeated_crashes() -> None:
    """More crashes than maxRestarts within the window leave the server failed, not looping."""
    async with Hub.from_config({"mcpServers": {"t": tiny(maxRestarts=1)}}) as hub:
        with anyio.fail_after(20):
            for _ in range(2):
                with pytest.raises(ServerCrashed):
                    await hub.call("t.crash")
            with pytest.raises(ServerUnavailable, match="gave up"):
                await hub.call("t.echo", {"text": "x"})
        assert hub.status()["t"].state is ServerState.FAILED


@pytest.mark.parametrize("policy", ["strict", "best_effort"])
async def test_bad_servers_and_policy(policy: str) -> None:
    """Missing command, crash on start and unreachable URL fail clearly; best effort runs the rest."""
    config: dict[str, Any] = {
        "mcpServers": {
            "good": tiny(),
            "missing": {"command": "llmctx-no-such-command-xyz"},
            "dies": stdio(SERVERS / "crashy_server.py", "--crash-on-start"),
            "unreachable": {
                "type": "http",
                "url": f"http://127.0.0.1:{_closed_port()}/mcp",
                "timeout": 10,
            },
        }
    }
    hub = Hub.from_config(config, policy=policy)  # type: ignore[arg-type]
    with anyio.fail_after(60):
        if policy == "strict":
            with pytest.raises(ServerStartError) as info:
                async with hub:
                    pass
            assert "missing" in str(info.value) and "not found" in str(info.value)
            return
        async with hub:
            status = hub.status()
            assert status["good"].state is ServerState.READY
            for name in ("missing", "dies", "unreachable"):
                assert status[name].state is ServerState.FAILED, name
            assert "not found" in (status["missing"].last_error or "")
            assert "handshake" in (status["dies"].last_error or "")
            assert status["unreachable"].last_error
            assert "refusing to start" in " ".join(hub.server("dies").stderr.tail())
            with pytest.raises(ServerUnavailable):
                await hub.call("missing.anything")
            assert llmctx.mcp.result_text(await hub.call("good.echo", {"text": "ok"})) == "ok"


async def test_startup_timeout_is_honoured() -> None:
    """A server that does not finish the handshake within its timeout is failed, not awaited."""
    config = {"mcpServers": {"mute": {"command": "sleep", "args": ["60"], "timeout": 0.5}}}
    with anyio.fail_after(15):
        async with Hub.from_config(config, policy="best_effort") as hub:
            status = hub.status()["mute"]
            assert status.state is ServerState.FAILED
            assert "not ready within 0.5s" in (status.last_error or "")


async def test_no_child_or_grandchild_survives_the_hub() -> None:
    """After exit no child of this process remains and the servers' grandchildren are dead too."""
    config = {"mcpServers": {"sdk": stdio(SERVERS / "spawner_server.py"), "t": tiny()}}
    before = {p.pid for p in live_children()}
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            sdk_grandchild = int(llmctx.mcp.result_text(await hub.call("sdk.grandchild_pid")))
            tiny_grandchild = int(llmctx.mcp.result_text(await hub.call("t.spawn")))
            assert new_children(before)
    assert gone(sdk_grandchild) and gone(tiny_grandchild)
    assert new_children(before) == []


async def test_hub_exit_on_cancellation_kills_servers() -> None:
    """Cancelling the task that holds the hub still stops every server."""
    before = {p.pid for p in live_children()}
    with anyio.fail_after(30):
        with anyio.move_on_after(0.5) as scope:
            async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
                await hub.call("t.slow", {"seconds": 60})
        assert scope.cancelled_caught
    assert new_children(before) == []


async def test_tool_calls_are_charged_to_the_session() -> None:
    """Each hub call is recorded on the current session as a call of kind 'tool'."""
    async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
        async with llmctx.session("mcp-charge", store=MemoryStore()) as s:
            await hub.call("t.echo", {"text": "charged"})
            with pytest.raises(ToolTimeout):
                await hub.call("t.slow", {"seconds": 30}, timeout=0.1)
        records = s.calls
    assert [(r.kind, r.provider, r.model, r.status) for r in records] == [
        ("tool", "mcp", "t.echo", "ok"),
        ("tool", "mcp", "t.slow", "error"),
    ]
    assert records[0].response == "charged"
    assert records[0].cost == 0


async def test_tool_schemas_and_dispatch() -> None:
    """OpenAI/Anthropic exports use model-safe names, and dispatch routes both call shapes."""
    async with Hub.from_config({"mcpServers": {"my.tools": tiny()}}) as hub:
        openai_tools = hub.openai_tools()
        names = [t["function"]["name"] for t in openai_tools]
        assert "my_tools__echo" in names
        assert all(n.replace("_", "a").replace("-", "a").isalnum() and len(n) <= 64 for n in names)
        assert openai_tools[0]["function"]["parameters"]["type"] == "object"
        assert {t["name"] for t in hub.anthropic_tools()} == set(names)

        reply = await hub.dispatch(
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "my_tools__echo", "arguments": '{"text": "hi"}'},
            }
        )
        assert reply.to_openai() == {"role": "tool", "tool_call_id": "call_1", "content": "hi"}
        reply = await hub.dispatch(
            {"type": "tool_use", "id": "tu_1", "name": "my.tools.echo", "input": {"text": "yo"}}
        )
        assert reply.to_anthropic() == {
            "type": "tool_result",
            "tool_use_id": "tu_1",
            "content": "yo",
        }
        bad = await hub.dispatch(
            {"id": "c", "function": {"name": "my_tools__echo", "arguments": "{not json"}}
        )
        assert bad.is_error and "invalid arguments" in bad.content
        surrogate = await hub.dispatch(
            {"id": "c", "function": {"name": "my_tools__echo", "arguments": '{"text": "\\udcff"}'}}
        )
        assert surrogate.is_error and "not valid Unicode" in surrogate.content
        unknown = await hub.dispatch({"type": "tool_use", "id": "x", "name": "nope", "input": {}})
        assert unknown.is_error and "no MCP tool" in unknown.content


async def test_include_exclude_filters() -> None:
    """Per-server include/exclude patterns decide which tools are exposed."""
    config = {"mcpServers": {"t": tiny(include=["*"], exclude=["crash", "spawn"])}}
    async with Hub.from_config(config) as hub:
        assert sorted(t.name for t in hub.tools()) == ["echo", "slow"]
        with pytest.raises(ToolNotFound):
            await hub.call("t.crash")


async def test_interop_with_mcp_server_time() -> None:
    """The third-party mcp-server-time (PyPI) works through the hub."""
    import shutil
    import sys

    exe = shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("mcp-server-time is not installed (dev dependency)")
    config = {"mcpServers": {"time": {"command": exe, "args": ["--local-timezone", "UTC"]}}}
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            result = await hub.call("time.get_current_time", {"timezone": "Europe/Paris"})
    assert not result.is_error
    assert "Europe/Paris" in llmctx.mcp.result_text(result)


async def test_entering_twice_is_refused() -> None:
    """A hub is entered once; calls outside its block raise a clear RuntimeError."""
    hub = Hub.from_config({"mcpServers": {"t": tiny()}})
    async with hub:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with hub:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        await hub.call("t.echo")


async def test_stderr_is_captured_when_sys_stderr_has_no_file_descriptor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With sys.stderr replaced by an object without a fd, servers still start and their stderr
    lines reach the ring buffer and the `llmctx.mcp.server.<name>` logger."""
    import io
    import logging

    fake = io.StringIO()  # fileno() raises io.UnsupportedOperation, as under some notebooks/IDEs
    monkeypatch.setattr("sys.stderr", fake)
    caplog.set_level(logging.INFO, logger="llmctx.mcp.server.t")
    async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
        with anyio.fail_after(5):
            echoed = await hub.call("t.echo", {"text": "hi"})
            # The stderr reader task may trail the handshake; the log offers no event to wait
            # on, so poll, bounded by fail_after.
            while "tiny: ready" not in hub.server("t").stderr.tail():  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert llmctx.mcp.result_text(echoed) == "hi"
    assert any("tiny: ready" in r.getMessage() for r in caplog.records)
    assert "tiny: ready" not in fake.getvalue()  # captured, not copied to the process stderr
