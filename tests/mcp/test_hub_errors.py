"""Bad input to the hub is a ConfigError and misuse a UsageError, both under llmctx.LLMCtxError."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp_helpers import tiny

import llmctx
from llmctx.mcp import Hub
from llmctx.mcp.config import load_config

pytestmark = pytest.mark.anyio


async def test_call_with_arguments_that_are_not_a_mapping_is_a_config_error() -> None:
    """hub.call(name, "not a dict") names the problem and the fix; the server stays usable."""
    async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
        with anyio.fail_after(30):
            with pytest.raises(llmctx.ConfigError, match="must be a mapping") as info:
                await hub.call("t.echo", "not a dict")  # type: ignore[arg-type]
            assert "{'path': 'README.md'}" in str(info.value)
            ok = await hub.call("t.echo", {"text": "still here"})
            assert "still here" in llmctx.mcp.result_text(ok)


async def test_bad_policy_is_a_config_error() -> None:
    """Hub(policy="sometimes") raises ConfigError (also ValueError) naming the two policies."""
    with pytest.raises(llmctx.ConfigError, match="'strict' or 'best_effort'") as info:
        Hub.from_config({"mcpServers": {"t": tiny()}}, policy="sometimes")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


async def test_hub_misuse_is_a_usage_error() -> None:
    """A hub used outside its block, or entered twice, raises UsageError (also RuntimeError)."""
    hub = Hub.from_config({"mcpServers": {"t": tiny()}})
    with pytest.raises(llmctx.UsageError, match="inside `async with"):
        await hub.call("t.echo", {"text": "x"})
    async with hub:
        pass
    with pytest.raises(llmctx.UsageError, match="entered once") as info:
        async with hub:
            pass  # pragma: no cover
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, llmctx.LLMCtxError)


def test_deeply_nested_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config nested 100,000 deep raises ConfigError, not a bare RecursionError."""
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "mcp.json"
    path.write_text('{"mcpServers": {"a": {"command": "x", "args": ' + deep + "}}}")
    with pytest.raises(llmctx.ConfigError, match="nested too deeply"):
        load_config(path)


def test_deeply_nested_mapping_is_a_config_error() -> None:
    """An already-parsed mapping nested too deeply also raises ConfigError."""
    nested: dict[str, object] = {}
    for _ in range(50_000):
        nested = {"x": nested}
    with pytest.raises(llmctx.ConfigError):
        load_config({"mcpServers": {"a": {"command": "x", "env": nested}}})
    json.dumps({"ok": True})  # the interpreter's recursion state is intact afterwards


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"text": "caf\udcff"}, r"arguments\['text'\] contains '\\udcff'"),
        ({"text": "x", "n": float("nan")}, r"arguments\['n'\] is nan"),
        ({"text": "x", "deep": [{"k": object()}]}, r"arguments\['deep'\]\[0\]\['k'\] cannot"),
    ],
)
async def test_an_unsendable_argument_fails_that_call_alone(
    bad: dict[str, object], match: str
) -> None:
    """An argument JSON cannot carry (a lone surrogate, NaN, an object) raises ConfigError naming
    where it is; eight concurrent good calls succeed and the server is not restarted."""
    async with Hub.from_config({"mcpServers": {"t": tiny()}}) as hub:
        results: list[str] = []

        async def good(i: int) -> None:
            reply = await hub.call("t.echo", {"text": f"ok {i}"})
            results.append(llmctx.mcp.result_text(reply))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(good, i)
                with pytest.raises(llmctx.ConfigError, match=match):
                    await hub.call("t.echo", bad)
        assert sorted(results) == sorted(f"ok {i}" for i in range(8))
        assert hub.server("t").status().restarts == 0
