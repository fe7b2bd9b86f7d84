"""Two small MCP servers for workshop module 08, on the official ``mcp`` SDK.

Copies, cut down, of the repository's ``examples/mcp_servers`` (which are not shipped in the
package), so that ``llmctx workshop 8`` works after a plain install. They are scripts: the
hub starts them as ``[sys.executable, path_of(name), ...]`` over stdio.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path_of"]

_HERE = Path(__file__).resolve().parent


def path_of(name: str) -> Path:
    """Return the script of the server ``name`` (``"notes"`` or ``"files"``).

    Raises:
        FileNotFoundError: there is no such server script.
    """
    path = _HERE / f"{name}_server.py"
    if not path.is_file():
        raise FileNotFoundError(f"no workshop MCP server named {name!r} (looked for {path.name})")
    return path
