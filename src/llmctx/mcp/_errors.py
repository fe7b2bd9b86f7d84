"""Errors raised by :mod:`llmctx.mcp`; every one derives from :class:`llmctx.LLMCtxError`.

The tree (under the library root)::

    LLMCtxError
    ├── ConfigError
    │   └── MCPConfigError           a bad mcpServers config; names the server and the field
    └── MCPHubError                  anything that goes wrong while the hub runs
        ├── ServerStartError         a server could not be started (strict policy, or on call)
        ├── ServerUnavailable        the server is failed, stopped or disabled
        ├── ServerCrashed            the server died (or hung and was killed) with the call
        │                            in flight
        ├── ToolNotFound (also KeyError)
        │                            no tool, prompt or resource by that name
        ├── ToolTimeout (also TimeoutError)
        │                            a call ran past its timeout (the session stays up)
        ├── ToolRefused              an interceptor refused the call (nothing was sent)
        └── ToolError                the server answered with an error (protocol or ``isError``)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from .._exceptions import ConfigError, LLMCtxError

__all__ = [
    "MCPConfigError",
    "MCPHubError",
    "ServerCrashed",
    "ServerStartError",
    "ServerUnavailable",
    "ToolError",
    "ToolNotFound",
    "ToolRefused",
    "ToolTimeout",
]


class MCPConfigError(ConfigError):
    """An mcpServers config is invalid; ``server`` and ``field`` say where.

    Attributes:
        server: the config key of the offending server, or ``None`` for a file-level error.
        field: the offending field (dotted path inside the server entry), or ``None``.
    """

    def __init__(
        self, message: str, *, server: str | None = None, field: str | None = None
    ) -> None:
        self.server = server
        self.field = field
        where = ""
        if server is not None:
            where = f"mcpServers.{server}"
            if field:
                where += f".{field}"
            where += ": "
        elif field:
            where = f"{field}: "
        super().__init__(where + message)


class MCPHubError(LLMCtxError):
    """Base of every runtime error of the MCP hub."""


class ServerStartError(MCPHubError):
    """A server could not be started (spawn, connect or handshake failed, or timed out)."""

    def __init__(self, server: str, reason: str, stderr: Sequence[str] = ()) -> None:
        self.server = server
        self.reason = reason
        self.stderr = tuple(stderr)
        tail = _format_tail(self.stderr)
        super().__init__(
            f"MCP server {server!r} failed to start: {reason}{tail}. "
            "Check its command/url in the config; `llmctx mcp check CONFIG` shows every "
            "server's state"
        )


class ServerUnavailable(MCPHubError):
    """The server is not running (failed, stopped, disabled or given up on by the breaker)."""

    def __init__(self, server: str, state: str, reason: str | None = None) -> None:
        self.server = server
        self.state = state
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"MCP server {server!r} is {state}{why}; it cannot take calls. "
            "Fix the cause shown in hub.status() and restart the hub"
        )


class ServerCrashed(MCPHubError):
    """The server process or connection died while a call was in flight.

    Attributes:
        server: the config key of the server.
        returncode: the exit status of a stdio server, when known.
        stderr: the last lines the server wrote to stderr (oldest first).
        reason: what happened, when it was not a plain crash (a hung server that stopped
            answering pings and was killed), else ``None``.
    """

    def __init__(
        self,
        server: str,
        *,
        returncode: int | None = None,
        stderr: Sequence[str] = (),
        reason: str | None = None,
    ) -> None:
        self.server = server
        self.returncode = returncode
        self.stderr = tuple(stderr)
        self.reason = reason
        code = f" with exit status {returncode}" if returncode is not None else ""
        what = reason if reason is not None else f"crashed{code}"
        super().__init__(
            f"MCP server {server!r} {what} while the call was in flight"
            f"{_format_tail(self.stderr)}. The hub restarts it with backoff; retry the call "
            "if it is safe to repeat"
        )


class ToolNotFound(MCPHubError, KeyError):
    """No tool (or prompt, or resource, or server) by that name on any running server.

    Attributes:
        name: the name that was looked up.
        kind: ``"tool"``, ``"prompt"``, ``"resource"`` or ``"server"``.
    """

    _HINTS: ClassVar[dict[str, str]] = {
        "tool": "Names are 'server.tool' (or the model-facing 'server__tool'); "
        "`llmctx mcp tools CONFIG` lists them",
        "prompt": "Names are 'server.prompt'; hub.prompts() lists them",
        "resource": "hub.resources() and hub.resource_templates() list what the servers "
        "serve; pass server= to read from one server",
        "server": "Names are the keys of mcpServers in the config",
    }

    def __init__(
        self,
        name: str,
        known: Sequence[str] = (),
        *,
        kind: str = "tool",
        detail: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        hint = f"; known: {', '.join(sorted(known)[:20])}" if known else ""
        what = detail if detail is not None else f"no MCP {kind} named {name!r}"
        super().__init__(f"{what}{hint}. {self._HINTS.get(kind, self._HINTS['tool'])}")

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class ToolTimeout(MCPHubError, TimeoutError):
    """A call ran past its timeout; the server was asked to cancel it and stays up."""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        super().__init__(
            f"MCP call {name!r} did not answer within {timeout:g}s; it was cancelled on the "
            "server, whose session stays open. If the tool is just slow, raise the limit: "
            "timeout= on the call, or callTimeout in the server's config"
        )


class ToolRefused(MCPHubError):
    """An interceptor refused a call; nothing was sent to the server.

    Attributes:
        name: the dotted name of the tool.
        reason: why, as the interceptor said it.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"MCP call {name!r} was refused: {reason}")


class ToolError(MCPHubError):
    """The server answered a call with an error.

    Attributes:
        name: the dotted name of the tool.
        code: the JSON-RPC error code, or ``None`` for a tool result with ``isError`` set.
        result: the tool result, for an ``isError`` result.
    """

    def __init__(
        self, name: str, message: str, *, code: int | None = None, result: object = None
    ) -> None:
        self.name = name
        self.code = code
        self.result = result
        kind = f"error {code}" if code is not None else "a tool error"
        super().__init__(f"MCP call {name!r} returned {kind}: {message}")


def _format_tail(lines: Sequence[str], keep: int = 5) -> str:
    if not lines:
        return ""
    return f" (last stderr lines: {' | '.join(lines[-keep:])})"
