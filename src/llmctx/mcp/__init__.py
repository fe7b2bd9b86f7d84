"""MCP fleets: many Model Context Protocol servers from one config, as one async context manager.

::

    from llmctx.mcp import Hub

    async with Hub.from_config("mcp.json", profile="dev", policy="best_effort") as hub:
        print(hub.status())
        result = await hub.call("notes.add_note", {"title": "t", "body": "b"})

See ``docs/mcp.md`` for the config format, the lifecycle and the error types.
"""

from __future__ import annotations

from ._errors import (
    MCPConfigError,
    MCPHubError,
    ServerCrashed,
    ServerStartError,
    ServerUnavailable,
    ToolError,
    ToolNotFound,
    ToolTimeout,
)
from ._ws import websocket_client
from .config import HubConfig, ServerConfig, Transport, load_config
from .hub import Hub, HubTool, ToolCallResult, result_text
from .server import ManagedServer, ServerState, ServerStatus

__all__ = [
    "Hub",
    "HubConfig",
    "HubTool",
    "MCPConfigError",
    "MCPHubError",
    "ManagedServer",
    "ServerConfig",
    "ServerCrashed",
    "ServerStartError",
    "ServerState",
    "ServerStatus",
    "ServerUnavailable",
    "ToolCallResult",
    "ToolError",
    "ToolNotFound",
    "ToolTimeout",
    "Transport",
    "load_config",
    "result_text",
    "websocket_client",
]
