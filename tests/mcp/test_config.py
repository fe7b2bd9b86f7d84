"""The mcpServers config: parsing, expansion, profiles, environment and redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmctx import ConfigError
from llmctx.mcp import MCPConfigError, load_config


def test_expands_variables_with_and_without_defaults() -> None:
    """${VAR} takes the environment's value and ${VAR:-default} falls back to the default."""
    config = load_config(
        {
            "mcpServers": {
                "a": {
                    "command": "${BIN}",
                    "args": ["--db", "${DB:-notes.db}", "${USER_SET:-unused}"],
                    "env": {"TOKEN": "${TOKEN}"},
                }
            }
        },
        environ={"BIN": "/usr/bin/python3", "TOKEN": "s3cret", "USER_SET": "given"},
    )
    server = config.servers["a"]
    assert server.command == "/usr/bin/python3"
    assert server.args == ("--db", "notes.db", "given")
    assert server.env == {"TOKEN": "s3cret"}


def test_unset_variable_names_server_and_field() -> None:
    """An unset ${VAR} without a default is a ConfigError naming the server, field and variable."""
    with pytest.raises(MCPConfigError) as info:
        load_config(
            {
                "mcpServers": {
                    "remote": {
                        "url": "https://x.test/mcp",
                        "headers": {"Authorization": "Bearer ${NOPE_TOKEN}"},
                    }
                }
            },
            environ={},
        )
    assert isinstance(info.value, ConfigError)
    assert info.value.server == "remote"
    assert info.value.field == "headers.Authorization"
    assert "NOPE_TOKEN" in str(info.value)


def test_invalid_json_file_reports_position(tmp_path: Path) -> None:
    """A config file that is not JSON gives the line and column of the problem."""
    path = tmp_path / "mcp.json"
    path.write_text('{"mcpServers": {"a": {"command": "x",}}}')
    with pytest.raises(MCPConfigError, match=r"not valid JSON.*line 1 column"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError that says it cannot be read."""
    with pytest.raises(MCPConfigError, match="cannot read MCP config"):
        load_config(tmp_path / "nope.json")


def test_unknown_transport() -> None:
    """An unknown type names the server and the field and lists the valid transports."""
    with pytest.raises(MCPConfigError) as info:
        load_config({"mcpServers": {"odd": {"type": "carrier-pigeon", "url": "http://x"}}})
    assert (info.value.server, info.value.field) == ("odd", "type")
    assert "stdio, sse, http" in str(info.value)


@pytest.mark.parametrize(
    "entry",
    [{"type": "stdio"}, {"type": "stdio", "command": "  "}, {"args": ["x"]}],
)
def test_missing_command(entry: dict[str, object]) -> None:
    """A stdio server without a command is refused with field 'command'."""
    with pytest.raises(MCPConfigError) as info:
        load_config({"mcpServers": {"s": entry}})
    assert (info.value.server, info.value.field) == ("s", "command")


def test_unknown_field_and_bad_value_are_named() -> None:
    """Typos and wrong types are refused with the server and field in the message."""
    with pytest.raises(MCPConfigError, match=r"mcpServers\.s\.argz"):
        load_config({"mcpServers": {"s": {"command": "x", "argz": []}}})
    with pytest.raises(MCPConfigError, match=r"mcpServers\.s\.timeout"):
        load_config({"mcpServers": {"s": {"command": "x", "timeout": -1}}})


def test_transport_inferred_from_fields() -> None:
    """command means stdio; an http URL means http, one ending in /sse means sse; ws:// is ws."""
    config = load_config(
        {
            "mcpServers": {
                "a": {"command": "x"},
                "b": {"url": "https://h.test/mcp"},
                "c": {"url": "https://h.test/sse"},
                "d": {"url": "wss://h.test/ws"},
                "e": {"type": "streamable-http", "url": "http://h.test/mcp"},
            }
        }
    )
    kinds = {name: s.transport for name, s in config.servers.items()}
    assert kinds == {"a": "stdio", "b": "http", "c": "sse", "d": "ws", "e": "http"}


def test_ws_transport_needs_ws_url() -> None:
    """A ws server with an http URL is refused (field url)."""
    with pytest.raises(MCPConfigError, match=r"mcpServers\.w\.url"):
        load_config({"mcpServers": {"w": {"type": "ws", "url": "http://h.test"}}})


def test_profiles_select_and_override() -> None:
    """A profile selects a subset of servers and merges env overrides into them."""
    raw = {
        "mcpServers": {
            "a": {"command": "x", "env": {"KEEP": "1"}},
            "b": {"command": "y"},
            "c": {"command": "z", "disabled": True},
        },
        "profiles": {
            "dev": {
                "servers": ["a", "c"],
                "mcpServers": {"a": {"env": {"DEBUG": "1"}}, "c": {"disabled": False}},
            }
        },
    }
    config = load_config(raw, profile="dev")
    assert list(config.servers) == ["a", "c"]
    assert config.servers["a"].env == {"KEEP": "1", "DEBUG": "1"}
    assert [s.name for s in config.enabled()] == ["a", "c"]
    assert [s.name for s in load_config(raw).enabled()] == ["a", "b"]
    with pytest.raises(MCPConfigError, match="no profile named 'prod'.*'dev'"):
        load_config(raw, profile="prod")


def test_child_env_is_minimal_unless_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children do not see the parent's secrets unless inheritEnv is true."""
    monkeypatch.setenv("PARENT_SECRET", "hunter2")
    config = load_config(
        {
            "mcpServers": {
                "min": {"command": "x", "env": {"OWN": "1"}},
                "all": {"command": "x", "inheritEnv": True},
            }
        }
    )
    minimal = config.servers["min"].child_env()
    assert "PARENT_SECRET" not in minimal
    assert minimal["OWN"] == "1"
    assert "PATH" in minimal
    assert config.servers["all"].child_env()["PARENT_SECRET"] == "hunter2"


def test_env_file_relative_to_config(tmp_path: Path) -> None:
    """envFile is read relative to the config file; env wins over it."""
    (tmp_path / "srv.env").write_text("# comment\nexport A=from-file\nB='quoted'\n")
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {"mcpServers": {"s": {"command": "x", "envFile": "srv.env", "env": {"A": "from-env"}}}}
        )
    )
    env = load_config(path).servers["s"].child_env()
    assert env["A"] == "from-env"
    assert env["B"] == "quoted"
    (tmp_path / "bad.env").write_text("NOT A PAIR\n")
    path.write_text(json.dumps({"mcpServers": {"s": {"command": "x", "envFile": "bad.env"}}}))
    with pytest.raises(MCPConfigError, match=r"mcpServers\.s\.envFile: line 1"):
        load_config(path)


def test_secrets_are_redacted_in_repr() -> None:
    """repr() and redacted() never show env values, header values or URL credentials."""
    config = load_config(
        {
            "mcpServers": {
                "r": {
                    "url": "https://user:pw@h.test/mcp?key=abc",
                    "headers": {"Authorization": "Bearer tok-123"},
                },
                "s": {"command": "x", "env": {"API_KEY": "sk-live-999"}},
            }
        }
    )
    text = (
        repr(config) + repr(config.servers["r"].redacted()) + repr(config.servers["s"].redacted())
    )
    for secret in ("tok-123", "sk-live-999", "pw@", "key=abc"):
        assert secret not in text
    assert "Authorization" in text and "API_KEY" in text


def test_url_secrets_are_redacted_in_repr_and_errors() -> None:
    """Empty-user passwords and secret parameters of a server URL never reach repr or errors."""
    config = load_config(
        {"mcpServers": {"w": {"type": "ws", "url": "wss://:hunter2@h.test/mcp?api_key=k3y&v=2"}}}
    )
    text = repr(config) + repr(config.servers["w"].redacted())
    assert "hunter2" not in text and "k3y" not in text
    assert "wss://:[REDACTED]@h.test/mcp?api_key=[REDACTED]&v=2" in text
    with pytest.raises(MCPConfigError) as info:
        load_config({"mcpServers": {"h": {"type": "http", "url": "ftp://u:p@ss/w0rd@h.test/x"}}})
    assert "p@ss/w0rd" not in str(info.value)
    assert "ftp://u:[REDACTED]@h.test/x" in str(info.value)
