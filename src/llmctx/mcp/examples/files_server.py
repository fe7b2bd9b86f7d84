"""A read-only files MCP server confined to one root directory (official ``mcp`` SDK).

Tools: ``read_file(path)`` and ``list_dir(path=".")``. Paths are relative to the root;
anything that resolves outside it (``..``, absolute paths, symlinks pointing out) is refused.

Run it over stdio::

    python files_server.py ROOT         # or set FILES_ROOT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

MAX_BYTES = 1_000_000


def build(root: str | os.PathLike[str]) -> MCPServer:
    """Register the tools, confined to ``root``."""
    base = Path(root).resolve(strict=True)
    if not base.is_dir():
        raise SystemExit(f"files_server: root {str(base)!r} is not a directory")
    server = MCPServer("files", instructions=f"Read-only access to the files under {base}.")

    def confine(path: str) -> Path:
        candidate = (base / path).resolve()
        if candidate != base and base not in candidate.parents:
            raise ToolError(f"path {path!r} is outside the served root; use a relative path")
        return candidate

    @server.tool()
    def read_file(path: str) -> str:
        """Read a UTF-8 text file under the root (at most 1 MB)."""
        target = confine(path)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file")
        data = target.read_bytes()[:MAX_BYTES]
        return data.decode("utf-8", errors="replace")

    @server.tool()
    def list_dir(path: str = ".") -> list[dict[str, Any]]:
        """List a directory under the root: name, type and size of each entry."""
        target = confine(path)
        if not target.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        return [
            {
                "name": entry.name,
                "type": "dir" if entry.is_dir() else "file",
                "size": entry.stat().st_size if entry.is_file() else None,
            }
            for entry in sorted(target.iterdir())
        ]

    return server


def main() -> None:
    """Entry point: serve over stdio."""
    root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FILES_ROOT")
    if not root:
        raise SystemExit("usage: files_server.py ROOT (or set FILES_ROOT)")
    build(root).run("stdio")


if __name__ == "__main__":
    main()
