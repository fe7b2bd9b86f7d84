"""The defects issue 14 found on the way, and the MCP traps of issue 16, each fixed and tested."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp_helpers import EXAMPLES, ROOT, stdio, tiny
from typer.testing import CliRunner

from llmctx._cli.app import app
from llmctx.mcp import Hub, ServerState, ToolNotFound, load_config, result_text
from llmctx.mcp._transports import SHUTDOWN_GRACE

pytestmark = pytest.mark.anyio
runner = CliRunner()


def _write(tmp_path: Path, config: dict[str, Any], name: str = "mcp.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return str(path)


async def test_a_dotted_server_name_works_for_prompts_and_calls() -> None:
    """hub.get_prompt('my.srv.x.greet') finds server 'my.srv.x' (no "no server 'my'")."""
    async with Hub.from_config({"mcpServers": {"my.srv.x": tiny("--rich")}}) as hub:
        with anyio.fail_after(20):
            prompt = await hub.get_prompt("my.srv.x.greet", {"who": "dots"})
            assert prompt.messages[0].content.text == "hello dots"  # type: ignore[union-attr]
            assert result_text(await hub.call("my.srv.x.echo", {"text": "ok"})) == "ok"
            with pytest.raises(ToolNotFound, match="no MCP prompt named 'my.srv.x.nope'"):
                await hub.get_prompt("my.srv.x.nope")


def test_cli_call_with_a_dotted_server_name(tmp_path: Path) -> None:
    """`llmctx mcp call CONFIG my.srv.echo` calls tool echo of server my.srv."""
    config = _write(tmp_path, {"mcpServers": {"my.srv": tiny(), "my": tiny()}})
    result = runner.invoke(app, ["mcp", "call", config, "my.srv.echo", '{"text": "dotted"}'])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "dotted"


async def test_non_json_stdout_is_logged_and_named_in_the_start_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server printing to stdout is named in the log and in 'not ready within' (not silent)."""
    caplog.set_level(logging.WARNING, logger="llmctx.mcp")
    config = {
        "mcpServers": {
            "noisy": tiny("--mute-stdout", timeout=1),
            "banner": tiny("--banner"),
        }
    }
    with anyio.fail_after(20):
        async with Hub.from_config(config, policy="best_effort") as hub:
            noisy = hub.status()["noisy"]
            assert noisy.state is ServerState.FAILED
            assert "not ready within 1s" in (noisy.last_error or "")
            assert "not JSON-RPC" in (noisy.last_error or "")
            assert "Server listening on stdio (logging to stdout)" in (noisy.last_error or "")
            # A banner before the protocol does not stop a server that then speaks it.
            assert hub.status()["banner"].state is ServerState.READY
    logged = [r.getMessage() for r in caplog.records if "not JSON-RPC" in r.getMessage()]
    assert any("tiny banner: not JSON" in m for m in logged)
    assert any("Server listening on stdio" in m for m in logged)


def test_check_prints_the_stderr_tail_of_a_failed_server(tmp_path: Path) -> None:
    """`mcp check` shows why a server died in the handshake (npm's 404), not just 'see stderr'."""
    dies = {
        "command": "sh",
        "args": ["-c", "echo 'npm error 404 Not Found - GET https://registry.npmjs.org/nope' >&2"],
    }
    config = _write(tmp_path, {"mcpServers": {"good": tiny(), "npx": dies}})
    result = runner.invoke(app, ["mcp", "check", config])
    assert result.exit_code == 1
    assert "404 Not Found" in result.stdout
    as_json = runner.invoke(app, ["mcp", "check", config, "--json"])
    failed = {e["name"]: e for e in json.loads(as_json.stdout)}["npx"]
    assert "404 Not Found" in failed["last_error"]
    assert any("404 Not Found" in line for line in failed["stderr"])


async def test_a_start_timeout_reports_without_the_stop_grace() -> None:
    """A server that ignores stdin close and SIGTERM past its start timeout is failed within the
    timeout plus a little, not timeout + 2 s grace + 1 s SIGTERM wait."""
    stubborn = tiny("--stubborn", "--mute-stdout", timeout=0.5)
    began = time.monotonic()
    with anyio.fail_after(0.5 + SHUTDOWN_GRACE):  # the old behaviour needed 0.5 + 2 + 1 s
        async with Hub.from_config({"mcpServers": {"s": stubborn}}, policy="best_effort") as hub:
            assert hub.status()["s"].state is ServerState.FAILED
            reported = time.monotonic() - began
    assert reported < 0.5 + SHUTDOWN_GRACE


async def test_a_call_right_after_an_idle_server_died_waits_for_the_restart() -> None:
    """A call sent after an idle server's death, before the hub noticed, gets the restarted
    server's answer instead of ServerCrashed."""
    async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
        pid = hub.status()["t"].pid
        assert pid is not None
        os.kill(pid, 9)
        # Block the event loop (no await) until the process is dead, so the hub's readers
        # cannot have noticed yet: the call below goes out in exactly that window.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
        assert hub.status()["t"].state is ServerState.READY  # not noticed yet
        with anyio.fail_after(20):
            answer = await hub.call("t.echo", {"text": "after the restart"})
        assert result_text(answer) == "after the restart"
        assert hub.status()["t"].restarts == 1


async def test_a_templated_resource_is_read_from_the_server_whose_template_fits(
    tmp_path: Path,
) -> None:
    """With two resource servers, a URI made from a template goes to that template's server."""
    config = {
        "mcpServers": {
            "notes": stdio(EXAMPLES / "notes_server.py", str(tmp_path / "n.db")),
            "tiny": tiny("--rich"),
        }
    }
    with anyio.fail_after(60):
        async with Hub.from_config(config) as hub:
            templates = {(s, t.uri_template) for s, t in hub.resource_templates()}
            assert {("notes", "note://{note_id}"), ("tiny", "tiny://item/{id}")} <= templates
            item = await hub.read_resource("tiny://item/42")
            assert item.contents[0].text == "item 42"  # type: ignore[union-attr]
            await hub.call("notes.add_note", {"title": "t", "body": "templated"})
            # note://1 is listed once the list-changed notification is handled; read it by
            # template either way.
            note = await hub.read_resource("note://1")
            assert "templated" in note.contents[0].text  # type: ignore[union-attr]
            with pytest.raises(ToolNotFound, match="no MCP resource named 'other://x'"):
                await hub.read_resource("other://x")


def test_cli_timeout_names_the_flag_and_tool_errors_go_to_stderr(tmp_path: Path) -> None:
    """A CLI timeout says --timeout (not timeout=); a tool error is on stderr after a marker."""
    config = _write(
        tmp_path,
        {"mcpServers": {"t": tiny(), "files": stdio(EXAMPLES / "files_server.py", str(tmp_path))}},
    )
    slow = runner.invoke(
        app, ["mcp", "call", config, "t.slow", '{"seconds": 5}', "--timeout", "0.3"]
    )
    assert slow.exit_code == 1
    assert "--timeout" in slow.stderr and "timeout=" not in slow.stderr
    failed = runner.invoke(app, ["mcp", "call", config, "files.read_file", '{"path": "nope"}'])
    assert failed.exit_code == 1
    assert "error: files.read_file returned an error:" in failed.stderr
    assert "'nope' is not a file" in failed.stderr
    assert failed.stdout == ""


def test_config_dir_is_the_config_files_directory(tmp_path: Path) -> None:
    """${CONFIG_DIR} expands to the absolute directory of the config file."""
    sub = tmp_path / "conf"
    sub.mkdir()
    path = _write(sub, {"mcpServers": {"n": {"command": "x", "args": ["${CONFIG_DIR}/n.db"]}}})
    assert load_config(path).servers["n"].args == (f"{sub.resolve()}/n.db",)


def test_missing_variables_only_matter_for_servers_that_run(tmp_path: Path) -> None:
    """A missing ${VAR} of a disabled or unrequested server does not block another one."""
    config = {
        "mcpServers": {
            "t": tiny(),
            "secret": {"type": "http", "url": "https://x.test/mcp", "headers": {"A": "${NOPE_1}"}},
            "off": {"command": "${NOPE_2}", "disabled": True},
        }
    }
    loaded = load_config(config, servers=["t", "off"])
    assert list(loaded.servers) == ["t", "off"] and [s.name for s in loaded.enabled()] == ["t"]
    path = _write(tmp_path, config)
    result = runner.invoke(app, ["mcp", "call", path, "t.echo", '{"text": "unblocked"}'])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "unblocked"
    with pytest.raises(Exception, match=r"NOPE_1"):
        load_config(config)


def _docs_config() -> dict[str, Any]:
    text = (ROOT / "docs" / "mcp.md").read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S)
    assert block is not None
    return dict(json.loads(block.group(1)))


async def test_the_docs_example_config_runs_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/mcp.md's config, copied anywhere and run from elsewhere, starts its dev servers
    (python -m ...) and keeps notes.db beside the config, not in the working directory."""
    conf_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    conf_dir.mkdir()
    elsewhere.mkdir()
    path = _write(conf_dir, _docs_config())
    monkeypatch.chdir(elsewhere)
    # The docs say `python`: the one of the active virtualenv, as for a user who activated it.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with anyio.fail_after(60):
        async with Hub.from_config(path, profile="dev") as hub:
            await hub.call("notes.add_note", {"title": "docs", "body": "example"})
            listing = result_text(await hub.call("files.list_dir", {}))
    assert (conf_dir / "notes.db").is_file()
    assert not (elsewhere / "notes.db").exists()
    assert "mcp.json" in listing
