"""Test fixture: an MCP server that spawns a grandchild process (``sleep``) and reports its pid.

Tool: ``grandchild_pid()``. The grandchild is started at launch, stays in the server's process
group and outlives the server unless its owner kills the whole group.
"""

from __future__ import annotations

import subprocess
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("spawner")
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(3600)"],
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
)


@server.tool()
def grandchild_pid() -> int:
    """The pid of the grandchild process."""
    return child.pid


if __name__ == "__main__":
    server.run("stdio")
