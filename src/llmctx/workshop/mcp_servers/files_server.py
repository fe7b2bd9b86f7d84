"""A read-only files MCP server confined to one root directory (official ``mcp`` SDK).

Tools: ``read_file(path)`` and ``list_dir(path=".")``; paths resolving outside the root are
refused. Run over stdio: ``python files_server.py ROOT``. A cut-down copy of the repository's
``examples/mcp_servers/files_server.py``, for workshop module 08.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

MAX_BYTES = 100_000


def build(root: str) -> MCPServer:
    """Register the tools, confined to ``root``."""
    base = Path(root).resolve(strict=True)
    server = MCPServer("files", instructions="Read-only access to the files under one root.")

    def confine(path: str) -> Path:
        candidate = (base / path).resolve()
        if candidate != base and base not in candidate.parents:
            raise ToolError(f"path {path!r} is outside the served root; use a relative path")
        return candidate

    @server.tool()
    def read_file(path: str) -> str:
        """Read a UTF-8 text file under the root (at most 100 kB)."""
        target = confine(path)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file")
        return target.read_bytes()[:MAX_BYTES].decode("utf-8", errors="replace")

    @server.tool()
    def list_dir(path: str = ".") -> list[str]:
        """List the names in a directory under the root."""
        target = confine(path)
        if not target.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        return sorted(entry.name for entry in target.iterdir())

    return server


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: files_server.py ROOT")
    build(sys.argv[1]).run("stdio")
