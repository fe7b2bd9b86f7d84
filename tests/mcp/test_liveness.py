"""Liveness: call timeouts by default, pings that find a hung (SIGSTOPped) server and restart it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest
from mcp_helpers import gone, tiny
from typer.testing import CliRunner

from llmctx._cli.app import app
from llmctx.mcp import Hub, ServerCrashed, ServerState, ToolTimeout, load_config, result_text
from llmctx.mcp.config import DEFAULT_CALL_TIMEOUT

pytestmark = pytest.mark.anyio


def test_a_call_has_a_timeout_unless_the_config_says_null() -> None:
    """callTimeout defaults to 60 s; JSON null means no limit; a number is taken as given."""
    config = load_config(
        {
            "mcpServers": {
                "plain": {"command": "x"},
                "none": {"command": "x", "callTimeout": None},
                "set": {"command": "x", "callTimeout": 5},
            }
        }
    )
    limits = {name: s.call_timeout for name, s in config.servers.items()}
    assert limits == {"plain": DEFAULT_CALL_TIMEOUT, "none": None, "set": 5}
    assert DEFAULT_CALL_TIMEOUT == 60


async def test_config_timeout_applies_and_a_call_can_override_it_or_lift_it() -> None:
    """A call without timeout= stops at the server's callTimeout; timeout=None lifts it."""
    config = {"mcpServers": {"t": tiny(callTimeout=0.3)}}
    async with Hub.from_config(config) as hub:
        with anyio.fail_after(20):
            with pytest.raises(ToolTimeout) as info:
                await hub.call("t.slow", {"seconds": 30})
            assert info.value.timeout == 0.3
            lifted = await hub.call("t.slow", {"seconds": 0.6}, timeout=None)
            assert result_text(lifted) == "done"
            longer = await hub.call("t.slow", {"seconds": 0.6}, timeout=5)
            assert result_text(longer) == "done"
        assert hub.status()["t"].crashes == 0


async def test_a_sigstopped_server_is_found_unhealthy_killed_and_restarted() -> None:
    """A hung server fails the call in flight with a reason, is restarted, and shows the hang."""
    config = {"mcpServers": {"t": tiny(pingInterval=0.3, callTimeout=None)}}
    async with Hub.from_config(config) as hub:
        with anyio.fail_after(30):
            # Wait for one answered ping so the status has a round trip to show.
            while hub.status()["t"].last_ping_seconds is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            pid = hub.status()["t"].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # the hub's exit kills it even if this test fails
            with pytest.raises(ServerCrashed, match="stopped answering pings") as info:
                await hub.call("t.echo", {"text": "into the void"})
            assert gone(pid)  # killed (SIGKILL reaches a stopped process)
            assert info.value.reason is not None
            back = await hub.call("t.echo", {"text": "back"})
            assert result_text(back) == "back"
        status = hub.status()["t"]
        assert status.state is ServerState.READY
        assert status.hangs == 1 and status.restarts == 1
        assert status.pid != pid
        assert "stopped answering pings" in (status.last_error or "")


async def test_pings_off_leave_a_quiet_server_alone() -> None:
    """pingInterval 0 sends no pings (last_ping_seconds stays None) and the server stays ready."""
    async with Hub.from_config({"mcpServers": {"t": tiny(pingInterval=0)}}) as hub:
        with anyio.fail_after(10):
            assert result_text(await hub.call("t.echo", {"text": "x"})) == "x"
        status = hub.status()["t"]
        assert status.last_ping_seconds is None and status.state is ServerState.READY


def test_check_json_shows_state_pings_and_stderr(tmp_path: Path) -> None:
    """`llmctx mcp check --json` lists each server's state, hang count and its stderr tail."""
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"t": tiny()}}))
    result = CliRunner().invoke(app, ["mcp", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["name"] == "t" and entry["state"] == "ready"
    assert entry["hangs"] == 0 and entry["tool_count"] == 4
    assert "tiny: ready" in entry["stderr"]
