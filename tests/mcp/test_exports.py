"""What the model receives: Responses tools and answers, limits, strict schemas, content parts."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from mcp_helpers import tiny

from llmctx.mcp import Hub
from llmctx.mcp._export import TRUNCATION_MARKER, export_name, strict_schema

pytestmark = pytest.mark.anyio


def _by_name(tools: list[dict[str, Any]], key: str = "name") -> dict[str, dict[str, Any]]:
    return {t[key] if key in t else t["function"]["name"]: t for t in tools}


async def test_responses_tools_and_function_call_output() -> None:
    """Responses tools are flat function tools; a function_call is answered with its output."""
    async with Hub.from_config({"mcpServers": {"t": tiny("--rich")}}) as hub:
        tools = _by_name(hub.responses_tools())
        echo = tools["t__echo"]
        assert echo["type"] == "function" and echo["parameters"]["type"] == "object"
        assert echo["strict"] is False and "function" not in echo
        with anyio.fail_after(20):
            reply = await hub.dispatch(
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "t__echo",
                    "arguments": '{"text": "hi"}',
                }
            )
        assert reply.format == "responses"
        expected = {"type": "function_call_output", "call_id": "call_1", "output": "hi"}
        assert reply.to_message() == expected
        assert reply.to_openai() == expected  # not a Chat role: tool message
        assert reply.to_chat() == {"role": "tool", "tool_call_id": "call_1", "content": "hi"}


async def test_long_descriptions_are_cut_with_a_marker_and_kept_whole_in_the_hub() -> None:
    """OpenAI exports cut a 2,000-character description to 1,024 with a marker; tools() keeps it."""
    async with Hub.from_config({"mcpServers": {"t": tiny("--rich")}}) as hub:
        full = hub.resolve("t.long").description
        assert len(full) > 2000
        for exported in (
            _by_name(hub.openai_tools())["t__long"]["function"]["description"],
            _by_name(hub.responses_tools())["t__long"]["description"],
            _by_name(hub.gemini_tools())["t__long"]["description"],
        ):
            assert len(exported) <= 1024 and exported.endswith(TRUNCATION_MARKER)
            assert full.startswith(exported[: -len(TRUNCATION_MARKER)])
        assert _by_name(hub.anthropic_tools())["t__long"]["description"] == full
        assert (
            len(_by_name(hub.anthropic_tools(max_description=100))["t__long"]["description"]) <= 100
        )


async def test_schema_key_is_stripped_and_strict_mode_closes_schemas() -> None:
    """$schema never reaches a provider; strict exports close objects and make optionals nullable."""
    async with Hub.from_config({"mcpServers": {"t": tiny("--rich")}}) as hub:
        for tools in (hub.openai_tools(), hub.anthropic_tools(), hub.gemini_tools()):
            assert "$schema" not in str(tools)
        strict = _by_name(hub.openai_tools(strict=True))
        opt = strict["t__opt"]["function"]
        assert opt["strict"] is True
        assert opt["parameters"]["additionalProperties"] is False
        assert opt["parameters"]["required"] == ["text", "suffix"]
        assert opt["parameters"]["properties"]["suffix"]["type"] == ["string", "null"]
        assert "default" not in str(strict["t__long"]["function"]["parameters"])
        # A strict model sends null for "not given": dispatch drops it before the call.
        with anyio.fail_after(20):
            reply = await hub.dispatch(
                {
                    "id": "c",
                    "function": {"name": "t__opt", "arguments": '{"text": "a", "suffix": null}'},
                }
            )
        assert not reply.is_error and reply.content == "a"


def test_strict_conversion_refuses_what_strict_mode_cannot_say() -> None:
    """A free-form object or allOf is left non-strict rather than converted wrongly."""
    assert strict_schema({"type": "object"}) is None
    assert strict_schema({"type": "object", "properties": {}, "additionalProperties": True}) is None
    assert strict_schema({"type": "object", "properties": {"a": {"allOf": [{}]}}}) is None
    nested = strict_schema(
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"k": {"oneOf": [{"type": "string"}]}},
                    },
                }
            },
            "required": ["items"],
        }
    )
    assert nested is not None
    inner = nested["properties"]["items"]["items"]
    assert inner["additionalProperties"] is False and inner["required"] == ["k"]
    assert inner["properties"]["k"] == {
        "anyOf": [{"anyOf": [{"type": "string"}]}, {"type": "null"}]
    }


async def test_images_and_structured_content_become_content_parts() -> None:
    """An image goes as input_image / base64 image parts; structured-only content as JSON text."""
    async with Hub.from_config({"mcpServers": {"t": tiny("--rich")}}) as hub:
        with anyio.fail_after(20):
            picture = await hub.dispatch(
                {"type": "function_call", "call_id": "c1", "name": "t__picture", "arguments": "{}"}
            )
            anthropic = await hub.dispatch(
                {"type": "tool_use", "id": "tu", "name": "t.picture", "input": {}}
            )
            structured = await hub.dispatch(
                {"type": "tool_use", "id": "s", "name": "t.structured", "input": {}}
            )
    output = picture.to_responses()["output"]
    assert output[0] == {"type": "input_text", "text": "a dot"}
    assert output[1]["type"] == "input_image"
    assert output[1]["image_url"].startswith("data:image/png;base64,iVBOR")
    blocks = anthropic.to_anthropic()["content"]
    assert blocks[1]["type"] == "image"
    assert blocks[1]["source"]["media_type"] == "image/png"
    assert blocks[1]["source"]["data"].startswith("iVBOR")
    chat = picture.to_chat()["content"]
    assert isinstance(chat, str) and "a dot" in chat and "image/png" in chat
    assert structured.to_anthropic()["content"] == '{"n": 7}'


async def test_long_server_names_get_short_stable_names_and_collisions_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 70-character server name keeps whole tool names under 64 chars, stable across hubs;
    two servers that sanitise alike get distinct names and one warning, not one per re-list."""
    long = "an-mcp-server-with-a-really-long-descriptive-name-from-some-registry-x"
    config = {"mcpServers": {long: tiny(), "my.tools": tiny(), "my_tools": tiny()}}
    caplog.set_level(logging.WARNING, logger="llmctx.mcp")
    names: list[set[str]] = []
    for _ in range(2):
        async with Hub.from_config(config) as hub:
            exported = {t.exported for t in hub.tools()}
            names.append(exported)
            for _ in range(3):
                await hub.refresh()
            warnings = [r for r in caplog.records if "is taken by" in r.getMessage()]
    assert names[0] == names[1]  # stable
    long_names = sorted(n for n in names[0] if n.startswith("an-mcp"))
    assert len(long_names) == 4 and all(len(n) <= 64 for n in long_names)
    assert {n.rsplit("__", 1)[1] for n in long_names} == {"echo", "slow", "crash", "spawn"}
    assert "my_tools__echo" in names[0] and len(names[0]) == 12
    assert export_name(long, "echo") in names[0]
    # 4 colliding tools, warned once each per hub (2 hubs), not once per refresh.
    assert len(warnings) == 8
