"""A WebSocket client transport for MCP (the SDK 2.x dropped its own).

One JSON-RPC message per text frame, subprotocol ``mcp``, as the SDK 1.x transport did. Needs
the ``websockets`` package and the asyncio backend.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from .._redact import redact_known

__all__ = ["websocket_client"]

_CLOSE_TIMEOUT = 2.0


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """The ``websockets.client`` logger with the handshake's header values masked.

    At DEBUG level ``websockets`` logs every handshake header, ``Authorization`` included.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(logging.getLogger("websockets.client"), {})
        self._secrets = [s for s in secrets if s]

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log through the wrapped logger with every secret in the arguments masked."""
        if self._secrets and args:
            args = tuple(redact_known(a, self._secrets) if isinstance(a, str) else a for a in args)
        super().log(level, msg, *args, **kwargs)


@asynccontextmanager
async def websocket_client(
    url: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[
    tuple[
        MemoryObjectReceiveStream[SessionMessage | Exception],
        MemoryObjectSendStream[SessionMessage],
    ]
]:
    """Connect to an MCP server over WebSocket.

    Args:
        url: a ``ws://`` or ``wss://`` URL.
        headers: extra HTTP headers for the opening handshake (e.g. ``Authorization``).

    Yields:
        ``(read_stream, write_stream)`` for a ``ClientSession``.

    Raises:
        OSError: the server could not be reached.
        ImportError: ``websockets`` is not installed (``pip install 'llmctx[ws]'``).

    On exit the socket is closed (bounded by a short timeout, even under cancellation).
    """
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed
        from websockets.typing import Subprotocol
    except ImportError as exc:
        raise ImportError(
            "the ws transport needs the websockets package (14 or later): pip install 'llmctx[ws]'"
        ) from exc

    read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
    socket: Any = await connect(
        url,
        subprotocols=[Subprotocol("mcp")],
        additional_headers=dict(headers or {}),
        close_timeout=_CLOSE_TIMEOUT,
        logger=_RedactingLogger(list((headers or {}).values())),
    )

    async def reader() -> None:
        async with read_send:
            try:
                async for frame in socket:
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(frame, by_name=False)
                    except ValueError as exc:
                        await read_send.send(exc)
                        continue
                    await read_send.send(SessionMessage(message))
            except (ConnectionClosed, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

    async def writer() -> None:
        async with write_receive:
            try:
                async for message in write_receive:
                    await socket.send(
                        message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    )
            except ConnectionClosed:
                pass

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            try:
                yield read_receive, write_send
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            await socket.close()
        for stream in (read_send, read_receive, write_send, write_receive):
            stream.close()
