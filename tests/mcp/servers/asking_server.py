"""Test fixture: an MCP server (official SDK) whose tools ask the client things back.

Tools: ``roots()`` (asks ``roots/list`` and returns the root URIs, one per line),
``ask(prompt, max_tokens=32)`` (asks ``sampling/createMessage`` and returns the model's text)
and ``flaky()`` (an ``isError`` result on the first call, then ``"fine"``: for retries).
"""

from __future__ import annotations

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("asking")
_calls = {"flaky": 0}


@server.tool()
async def roots(ctx: Context) -> str:
    """The client's roots, one URI per line."""
    listed = await ctx.session.list_roots()
    return "\n".join(str(r.uri) for r in listed.roots)


@server.tool()
async def ask(prompt: str, ctx: Context, max_tokens: int = 32) -> str:
    """Ask the client's model; return its text."""
    reply = await ctx.session.create_message(
        messages=[
            types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
        ],
        max_tokens=max_tokens,
    )
    content = reply.content
    return content.text if isinstance(content, types.TextContent) else str(content)


@server.tool()
def flaky() -> str:
    """Fail the first time, then succeed."""
    _calls["flaky"] += 1
    if _calls["flaky"] == 1:
        raise ToolError("not yet")
    return "fine"


if __name__ == "__main__":
    server.run("stdio")
