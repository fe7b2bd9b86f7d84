"""Test fixture: an official-SDK MCP server served over the network on a free loopback port.

Usage::

    python net_server.py http|sse|ws [PORT]

It binds ``127.0.0.1:PORT`` itself (default 0: a free port, no race), then prints ``PORT <n>`` on stdout once it
accepts connections. If ``NET_SERVER_TOKEN`` is set, every request (and the WebSocket
handshake) must carry ``Authorization: Bearer <token>``; anything else gets HTTP 401, with the
header's presence (never its value) logged to stderr.

Transports: ``http`` is the SDK's streamable HTTP app, ``sse`` its HTTP+SSE app, both under
uvicorn. The SDK 2.x has no WebSocket server, so ``ws`` bridges each ``websockets`` connection
(subprotocol ``mcp``, one JSON-RPC message per text frame, as the SDK 1.x transport did) to
the same SDK server's ``run`` over in-memory streams.

Tools: ``echo``, ``slow`` (sleep, then answer), ``crash`` (a stderr line, then
``os._exit(3)`` mid-call) and ``auth_seen`` (whether the request carried the token).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage

TOKEN = os.environ.get("NET_SERVER_TOKEN")

server = MCPServer("net")


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
    """Die mid-call, as a crashing server does."""
    print("net_server: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def auth_seen() -> str:
    """Whether this server requires a token (if it does, the request had it, or it got 401)."""
    return "required" if TOKEN else "not required"


def _authorized(header: str | None) -> bool:
    return TOKEN is None or header == f"Bearer {TOKEN}"


def _bind() -> socket.socket:
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restarted server takes its predecessor's port while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _announce(sock: socket.socket) -> None:
    print(f"PORT {sock.getsockname()[1]}", flush=True)


class _RequireToken:
    """ASGI middleware: 401 for any HTTP request without the bearer token."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            raw = headers.get(b"authorization")
            if not _authorized(raw.decode() if raw is not None else None):
                print(
                    f"net_server: 401 (authorization header present: {raw is not None})",
                    file=sys.stderr,
                    flush=True,
                )
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


async def _serve_http(kind: str) -> None:
    import uvicorn

    app = server.streamable_http_app() if kind == "http" else server.sse_app()
    sock = _bind()
    config = uvicorn.Config(_RequireToken(app), log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)

    async def announce_when_started() -> None:
        while not uv.started:  # noqa: ASYNC110 (uvicorn has no started event)
            await anyio.sleep(0.01)
        _announce(sock)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce_when_started)
        await uv.serve(sockets=[sock])


async def _serve_ws() -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
    from websockets.typing import Subprotocol

    lowlevel = server._lowlevel_server

    def check(connection: ServerConnection, request: Request) -> Response | None:
        if _authorized(request.headers.get("Authorization")):
            return None
        print("net_server: 401 on the WebSocket handshake", file=sys.stderr, flush=True)
        return connection.respond(401, "unauthorized\n")

    async def bridge(connection: ServerConnection) -> None:
        read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)

        async def reader() -> None:
            async with read_send:
                try:
                    async for frame in connection:
                        try:
                            message = types.jsonrpc_message_adapter.validate_json(
                                frame, by_name=False
                            )
                        except ValueError as exc:
                            await read_send.send(exc)
                            continue
                        await read_send.send(SessionMessage(message))
                except ConnectionClosed:
                    pass

        async def writer() -> None:
            async with write_receive:
                try:
                    async for message in write_receive:
                        await connection.send(
                            message.message.model_dump_json(by_alias=True, exclude_unset=True)
                        )
                except ConnectionClosed:
                    pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            await lowlevel.run(read_receive, write_send, lowlevel.create_initialization_options())
            tg.cancel_scope.cancel()

    sock = _bind()
    async with serve(
        bridge, sock=sock, subprotocols=[Subprotocol("mcp")], process_request=check
    ) as ws_server:
        _announce(sock)
        await ws_server.serve_forever()


def main() -> None:
    """Serve on the transport named by the first argument (port: the second) until killed."""
    kind = sys.argv[1] if len(sys.argv) > 1 else "http"
    if kind in ("http", "sse"):
        anyio.run(_serve_http, kind)
    elif kind == "ws":
        anyio.run(_serve_ws)
    else:
        sys.exit(f"unknown transport {kind!r}; use http, sse or ws")


if __name__ == "__main__":
    main()
