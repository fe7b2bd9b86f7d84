"""MCP fleets: many Model Context Protocol servers from one config, as one async context manager.

::

    from llmctx.mcp import Hub

    async with Hub.from_config("mcp.json", profile="dev", policy="best_effort") as hub:
        print(hub.status())
        result = await hub.call("notes.add_note", {"title": "t", "body": "b"})

See ``docs/mcp.md`` for the config format, the lifecycle and the error types.
"""

from __future__ import annotations

from ._auth import (
    FileTokenStorage,
    HeaderAuth,
    HeaderProvider,
    MemoryTokenStorage,
    TokenStorage,
    default_token_dir,
    loopback_callback,
)
from ._errors import (
    MCPConfigError,
    MCPHubError,
    ServerCrashed,
    ServerStartError,
    ServerUnavailable,
    ToolError,
    ToolNotFound,
    ToolRefused,
    ToolTimeout,
)
from ._sampling import model_sampler
from ._ws import websocket_client
from .config import HubConfig, OAuthSettings, ServerConfig, Transport, load_config
from .hub import Hub, HubTool, Interceptor, Proceed, ToolCall, ToolCallResult, result_text
from .server import (
    CallbackContext,
    ManagedServer,
    ServerCallbacks,
    ServerState,
    ServerStatus,
    ToolFilter,
)

__all__ = [
    "CallbackContext",
    "FileTokenStorage",
    "HeaderAuth",
    "HeaderProvider",
    "Hub",
    "HubConfig",
    "HubTool",
    "Interceptor",
    "MCPConfigError",
    "MCPHubError",
    "ManagedServer",
    "MemoryTokenStorage",
    "OAuthSettings",
    "Proceed",
    "ServerCallbacks",
    "ServerConfig",
    "ServerCrashed",
    "ServerStartError",
    "ServerState",
    "ServerStatus",
    "ServerUnavailable",
    "TokenStorage",
    "ToolCall",
    "ToolCallResult",
    "ToolError",
    "ToolFilter",
    "ToolNotFound",
    "ToolRefused",
    "ToolTimeout",
    "Transport",
    "default_token_dir",
    "load_config",
    "loopback_callback",
    "model_sampler",
    "result_text",
    "websocket_client",
]
