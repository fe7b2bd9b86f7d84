"""Test fixture: an MCP server that crashes on demand, and can be slow or chatty.

Tools: ``echo(text)``, ``slow(seconds)`` (sleeps, for cancellation tests), ``crash()`` (writes a
line to stderr, then ``os._exit(1)`` mid-call). With ``--crash-on-start`` it dies before the
handshake; ``--tools N`` registers N extra tools to exercise pagination-free bulk listings.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("crashy")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    """Die mid-call with exit status 1, after a line on stderr."""
    sys.stderr.write("crashy: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    print("crashy: starting", file=sys.stderr, flush=True)
    if "--crash-on-start" in sys.argv:
        print("crashy: refusing to start", file=sys.stderr, flush=True)
        sys.exit(3)
    server.run("stdio")
