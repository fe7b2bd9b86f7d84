"""``llmctx mcp check|tools|call`` against real server processes."""

from __future__ import annotations

import json
from pathlib import Path

from mcp_helpers import tiny
from typer.testing import CliRunner

from llmctx._cli.app import app

runner = CliRunner()


def _config(tmp_path: Path, **servers: object) -> str:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


def test_check_prints_table_and_fails_strictly(tmp_path: Path) -> None:
    """check shows each server's state and exits 1 if one failed, 0 with --best-effort."""
    config = _config(tmp_path, good=tiny(), bad={"command": "llmctx-no-such-command-xyz"})
    result = runner.invoke(app, ["mcp", "check", config])
    assert result.exit_code == 1, result.output
    assert "good" in result.output and "ready" in result.output and "failed" in result.output
    assert runner.invoke(app, ["mcp", "check", config, "--best-effort"]).exit_code == 0


def test_tools_lists_namespaced_names(tmp_path: Path) -> None:
    """tools lists server.tool names and the model-facing names, or OpenAI JSON."""
    config = _config(tmp_path, t=tiny())
    result = runner.invoke(app, ["mcp", "tools", config])
    assert result.exit_code == 0, result.output
    assert "t.echo" in result.output and "t__echo" in result.output
    as_json = runner.invoke(app, ["mcp", "tools", config, "--format", "openai"])
    assert json.loads(as_json.output)[0]["function"]["name"] == "t__echo"


def test_call_prints_result_and_reports_errors(tmp_path: Path) -> None:
    """call prints the tool's text; a bad config or unknown tool exits non-zero with a message."""
    config = _config(tmp_path, t=tiny(), bad={"command": "llmctx-no-such-command-xyz"})
    result = runner.invoke(app, ["mcp", "call", config, "t.echo", '{"text": "hi there"}'])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hi there"
    assert runner.invoke(app, ["mcp", "call", config, "t.nope"]).exit_code == 1
    assert runner.invoke(app, ["mcp", "call", config, "t.echo", "[1]"]).exit_code == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = runner.invoke(app, ["mcp", "check", str(broken)])
    assert result.exit_code == 2 and "not valid JSON" in result.output
