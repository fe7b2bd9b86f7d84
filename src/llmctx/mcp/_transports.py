"""Client transports the hub opens: its own stdio (stderr pipe, process-group kill) and the SDK's.

Every transport here is an async context manager yielding ``(read_stream, write_stream)`` for a
``ClientSession`` and calling ``on_closed(returncode)`` once when the connection ends on its own
(process exit, EOF, dropped socket), after the stderr it could gather has been read, and before
the read stream closes, so in-flight calls fail with the crash already on record.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from subprocess import PIPE
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from .._redact import redact_url
from .config import ServerConfig

if TYPE_CHECKING:
    import httpx2

    from ._reaper import Reaper

__all__ = ["StderrLog", "open_transport"]

OnClosed = Callable[[int | None], None]
Streams = tuple[
    MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]
]

#: How long a server gets to exit by itself once its stdin is closed.
SHUTDOWN_GRACE = 2.0
#: How long SIGTERM gets before SIGKILL.
TERM_GRACE = 1.0
#: How long a dead server's stderr is drained before its crash is reported.
_STDERR_DRAIN = 0.25
_EXIT_POLL = 0.02
#: Non-JSON stdout lines: how many are logged at WARNING, kept, and how long each may be.
_NOISE_LOGGED = 5
_NOISE_KEPT = 3
_NOISE_CHARS = 200


class StderrLog:
    """A ring buffer of a server's stderr lines, each also sent to ``logging``.

    Lines go to the logger ``llmctx.mcp.server.<name>`` at INFO level. The buffer survives
    restarts, so the lines before a crash are still there after it. A streamable HTTP server
    has no stderr of ours to read: its buffer holds the HTTP error statuses it answered with
    (``HTTP 401 Unauthorized from POST http://host/mcp``, URL secrets masked, headers never).
    """

    def __init__(self, server: str, maxlen: int = 200) -> None:
        self._lines: deque[str] = deque(maxlen=maxlen)
        self._logger = logging.getLogger(f"llmctx.mcp.server.{server}")
        self._noise: deque[str] = deque(maxlen=_NOISE_KEPT)
        self.noise_count = 0

    def add(self, line: str) -> None:
        """Record one line (without its newline)."""
        self._lines.append(line)
        self._logger.info("%s", line)

    def add_noise(self, line: str) -> None:
        """Record a line a stdio server wrote to stdout that is not JSON-RPC.

        MCP stdio servers must write only protocol messages to stdout; a banner or a log line
        there is a common reason a server never gets ready. The first few are logged at
        WARNING (cut to 200 characters), later ones at DEBUG; the last few are kept for the
        start error (:meth:`noise`).
        """
        self.noise_count += 1
        shown = line if len(line) <= _NOISE_CHARS else line[:_NOISE_CHARS] + "..."
        self._noise.append(shown)
        level = logging.WARNING if self.noise_count <= _NOISE_LOGGED else logging.DEBUG
        self._logger.log(level, "not JSON-RPC on stdout (ignored): %s", shown)

    def noise(self) -> tuple[str, ...]:
        """The last non-JSON lines the server wrote to stdout, oldest first."""
        return tuple(self._noise)

    def tail(self, n: int = 20) -> tuple[str, ...]:
        """Return the last ``n`` lines, oldest first."""
        lines = tuple(self._lines)
        return lines[-n:] if n < len(lines) else lines


@asynccontextmanager
async def open_transport(
    config: ServerConfig,
    stderr: StderrLog,
    on_closed: OnClosed,
    on_pid: Callable[[int], None] | None = None,
    *,
    reaper: Reaper | None = None,
    graceful: Callable[[], bool] = lambda: True,
    auth: httpx2.Auth | None = None,
    headers: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Open the transport the config names.

    Args:
        config: the server entry.
        stderr: where a stdio server's stderr lines go.
        on_closed: called once if the connection ends by itself (not on our own exit).
        on_pid: called with the process id once a stdio server is spawned.
        reaper: the hub's watcher: a stdio server is registered with it and carries its
            marker, so it dies with the host process.
        graceful: asked at exit; ``False`` (a server that missed its start deadline or stopped
            answering pings) skips the polite stdin-close / SIGTERM steps and kills at once.
        auth: an ``httpx2.Auth`` for every HTTP request of an http/sse server.
        headers: an async callable giving extra headers for the WebSocket handshake.

    Yields:
        ``(read_stream, write_stream)`` for a ``ClientSession``.

    Raises:
        OSError: the command could not be spawned or the endpoint could not be reached.

    On exit (normal, error or cancellation) the connection is closed within a bounded time
    and, for stdio, the server's whole process group is killed.
    """
    if config.transport == "stdio":
        async with _open_stdio(config, stderr, on_closed, on_pid, reaper, graceful) as streams:
            yield streams
        return
    async with AsyncExitStack() as stack:
        if config.transport == "http":
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            client = await stack.enter_async_context(
                create_mcp_http_client(headers=dict(config.headers) or None, auth=auth)
            )
            # The SDK turns an HTTP error into a bare "Server returned an error response";
            # keep the status so a failed start can say "401 Unauthorized".
            client.event_hooks = {"response": [_http_error_recorder(stderr)]}
            inner = await stack.enter_async_context(
                streamable_http_client(config.url or "", http_client=client)
            )
        elif config.transport == "sse":
            from mcp.client.sse import sse_client

            inner = await stack.enter_async_context(
                sse_client(config.url or "", headers=dict(config.headers) or None, auth=auth)
            )
        else:
            from ._ws import websocket_client

            extra = dict(await headers()) if headers is not None else {}
            inner = await stack.enter_async_context(
                websocket_client(config.url or "", headers={**config.headers, **extra})
            )
        async with _watch_closed(inner[0], on_closed) as read_stream:
            yield read_stream, inner[1]


def _http_error_recorder(log: StderrLog) -> Callable[[Any], Awaitable[None]]:
    async def record(response: Any) -> None:
        # 405 is the spec's answer of a server without a GET stream or DELETE: not an error.
        if response.status_code >= 400 and response.status_code != 405:
            request = response.request
            log.add(
                f"HTTP {response.status_code} {response.reason_phrase} from "
                f"{request.method} {redact_url(str(request.url))}"
            )

    return record


@asynccontextmanager
async def _watch_closed(
    inner: Any, on_closed: OnClosed
) -> AsyncIterator[MemoryObjectReceiveStream[SessionMessage | Exception]]:
    """Relay a transport's read stream, reporting its end to ``on_closed``."""
    send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    exiting = False

    async def relay() -> None:
        async with send:
            try:
                async for item in inner:
                    await send.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                pass
            if not exiting:
                on_closed(None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(relay)
        try:
            yield receive
        finally:
            exiting = True
            tg.cancel_scope.cancel()
            receive.close()


@asynccontextmanager
async def _open_stdio(
    config: ServerConfig,
    stderr: StderrLog,
    on_closed: OnClosed,
    on_pid: Callable[[int], None] | None,
    reaper: Reaper | None,
    graceful: Callable[[], bool],
) -> AsyncIterator[Streams]:
    assert config.command is not None  # the config validator guarantees it
    # Shielded: a cancellation landing after the fork but before open_process returns would
    # leave a live child nobody owns. Spawning is quick and bounded.
    with anyio.CancelScope(shield=True):
        process = await _spawn(config, reaper.env if reaper is not None else {})
        if reaper is not None:
            reaper.watch(process.pid)
    if on_pid is not None:
        on_pid(process.pid)
    read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
    stderr_done = anyio.Event()
    stdout_done = anyio.Event()
    closing = False
    reported = False

    async def report_closed() -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        # Give the last stderr lines (the crash's reason) a moment to arrive; a grandchild
        # holding the pipe open must not delay the report past this bound.
        with anyio.move_on_after(_STDERR_DRAIN):
            await stdout_done.wait()
            await stderr_done.wait()
            while process.returncode is None:  # noqa: ASYNC110 (no event for a child exit)
                await anyio.sleep(_EXIT_POLL)
        if not closing:
            on_closed(process.returncode)
        read_send.close()

    async def stdout_reader() -> None:
        assert process.stdout is not None
        buffer = b""
        try:
            async for chunk in process.stdout:
                lines = (buffer + chunk).split(b"\n")
                buffer = lines.pop()
                for line in lines:
                    if not line.strip():
                        continue
                    message = _parse(line)
                    if isinstance(message, Exception):
                        # Not a protocol message (a banner, a stray print): name it in the
                        # log and the start error rather than let it vanish.
                        stderr.add_noise(line.decode(errors="replace").rstrip("\r"))
                        continue
                    await read_send.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        stdout_done.set()
        await report_closed()

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async for message in write_receive:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await process.stdin.send(data.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass

    async def stderr_reader() -> None:
        assert process.stderr is not None
        buffer = b""
        try:
            async for chunk in process.stderr:
                lines = (buffer + chunk).split(b"\n")
                buffer = lines.pop()
                for line in lines:
                    stderr.add(line.decode(errors="replace").rstrip("\r"))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            if buffer:
                stderr.add(buffer.decode(errors="replace").rstrip("\r"))
            stderr_done.set()

    async def exit_watcher() -> None:
        # Polling, not process.wait(): on asyncio that also waits for the pipes to close,
        # which a grandchild that inherited them can postpone forever.
        while process.returncode is None:  # noqa: ASYNC110 (no event exists for a child exit)
            await anyio.sleep(_EXIT_POLL)
        await report_closed()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout_reader)
            tg.start_soon(stdin_writer)
            tg.start_soon(stderr_reader)
            tg.start_soon(exit_watcher)
            try:
                yield read_receive, write_send
            finally:
                closing = True
                with anyio.CancelScope(shield=True):
                    await _stop_process(process, graceful())
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            _kill_group(process.pid)
            if reaper is not None:  # the group is dead: its id may be reused
                reaper.unwatch(process.pid)
            for stream in (read_send, read_receive, write_send, write_receive):
                stream.close()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    with suppress(Exception):
                        await pipe.aclose()
            _close_asyncio_transport(process)


async def _spawn(config: ServerConfig, marker: Mapping[str, str]) -> anyio.abc.Process:
    assert config.command is not None  # the config validator guarantees it
    return await anyio.open_process(
        [config.command, *config.args],
        stdin=PIPE,
        stdout=PIPE,
        stderr=PIPE,
        cwd=config.cwd,
        env={**config.child_env(), **marker},
        # Its own process group, so one killpg() reaches every grandchild too.
        start_new_session=sys.platform != "win32",
    )


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


async def _wait_exit(process: anyio.abc.Process, timeout: float) -> bool:  # noqa: ASYNC109 (a per-call limit is API)
    with anyio.move_on_after(timeout):
        while process.returncode is None:  # noqa: ASYNC110 (no event exists for a child exit)
            await anyio.sleep(_EXIT_POLL)
    return process.returncode is not None


async def _stop_process(process: anyio.abc.Process, graceful: bool = True) -> None:
    """Close stdin (the MCP way to ask for exit), then SIGTERM, then SIGKILL the group.

    Not ``graceful`` (a hung server, or one that missed its start deadline): SIGKILL at once,
    so the polite steps' grace periods are not added to the time the caller waits.
    """
    if not graceful and process.returncode is None:
        _signal_group(process, getattr(signal, "SIGKILL", signal.SIGTERM))
        await _wait_exit(process, TERM_GRACE)
    if process.returncode is None and process.stdin is not None:
        with suppress(Exception):
            await process.stdin.aclose()
        if not await _wait_exit(process, SHUTDOWN_GRACE):
            _signal_group(process, signal.SIGTERM)
            if not await _wait_exit(process, TERM_GRACE):
                _signal_group(process, getattr(signal, "SIGKILL", signal.SIGTERM))
                await _wait_exit(process, TERM_GRACE)
    # The server may be gone while its children live on in its group: sweep them.
    _kill_group(process.pid)


def _signal_group(process: anyio.abc.Process, sig: int) -> None:
    if sys.platform == "win32":
        with suppress(ProcessLookupError, OSError):
            process.send_signal(sig)
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _kill_group(pgid: int) -> None:
    if sys.platform == "win32":
        return
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _close_asyncio_transport(process: anyio.abc.Process) -> None:
    # Without this asyncio warns at GC about an unclosed subprocess transport.
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(Exception):
            close()
