"""One supervised MCP server: an owner task that holds its transport and ``ClientSession``.

The owner task (:meth:`ManagedServer.run`, started by the hub with ``TaskGroup.start``) is the
only task that enters and exits the transport and the session, so no cancel scope is ever
exited in a foreign task. Calls from other tasks go straight to the ``ClientSession``: the SDK
matches responses to requests by id, so concurrent requests from any task are safe.

Lifecycle::

    starting ──► ready ──(crash)──► restarting ──► ready ...
       │           │                    │
       ▼           ▼                    ▼  (breaker open: too many crashes in the window)
     failed     stopped              failed
"""

from __future__ import annotations

import enum
import fnmatch
import importlib.metadata
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.exceptions import MCPError

from .._redact import dsn_secrets, redact_known, redact_text
from ._errors import ServerCrashed, ServerStartError, ServerUnavailable, ToolError, ToolTimeout
from ._transports import StderrLog, open_transport
from .config import ServerConfig

__all__ = ["ManagedServer", "ServerState", "ServerStatus", "SessionCallbacks"]

logger = logging.getLogger("llmctx.mcp")

_T = TypeVar("_T")

#: First restart delay after a crash; doubles per crash inside the window, capped.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 10.0
_MAX_PAGES = 1000  # a server whose cursor never ends must not hang startup


class ServerState(enum.StrEnum):
    """Where a server is in its lifecycle."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ServerStatus:
    """A snapshot of one server, as :meth:`llmctx.mcp.Hub.status` reports it.

    Attributes:
        name: the config key.
        transport: ``stdio``, ``sse``, ``http`` or ``ws``.
        state: the lifecycle state.
        startup_seconds: how long the last successful start took (spawn to tools listed).
        ready_since: wall-clock time (``time.time()``) of the last successful start.
        restarts: successful restarts after crashes.
        crashes: crashes seen (connection or process lost while ready).
        tool_count: tools exposed after include/exclude filters.
        pid: process id of a stdio server while it runs.
        last_error: the last failure, secrets not included.
    """

    name: str
    transport: str
    state: ServerState
    startup_seconds: float | None
    ready_since: float | None
    restarts: int
    crashes: int
    tool_count: int
    pid: int | None
    last_error: str | None


@dataclass(frozen=True)
class SessionCallbacks:
    """Callbacks passed through to every server's ``ClientSession`` (see the SDK for shapes)."""

    sampling_callback: Any = None
    elicitation_callback: Any = None
    list_roots_callback: Any = None
    logging_callback: Any = None
    message_handler: Callable[[IncomingMessage], Awaitable[None]] | None = None


@dataclass
class _Listing:
    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)


class ManagedServer:
    """One server of a hub: config, state, current session and supervisor loop.

    Built by the hub; users reach it through :class:`llmctx.mcp.Hub`.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        callbacks: SessionCallbacks | None = None,
        on_listing_changed: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.stderr = StderrLog(config.name)
        self._callbacks = callbacks or SessionCallbacks()
        self._on_listing_changed = on_listing_changed
        self._state = ServerState.STARTING
        self._changed = anyio.Event()
        self._stop = anyio.Event()
        self._session: ClientSession | None = None
        self._signals: MemoryObjectSendStream[str] | None = None
        self._startup_scope: anyio.CancelScope | None = None
        self._listing = _Listing()
        self._serves_resources = False
        self._startup_seconds: float | None = None
        self._ready_since: float | None = None
        self._restarts = 0
        self._crashes = 0
        self._crash_times: deque[float] = deque()
        self._last_error: str | None = None
        self._last_returncode: int | None = None
        self._pid: int | None = None

    # ----------------------------------------------------------------- inspection

    @property
    def state(self) -> ServerState:
        """The current lifecycle state."""
        return self._state

    def status(self) -> ServerStatus:
        """Return a snapshot of state, timings, counters and the last error."""
        return ServerStatus(
            name=self.name,
            transport=self.config.transport,
            state=self._state,
            startup_seconds=self._startup_seconds,
            ready_since=self._ready_since,
            restarts=self._restarts,
            crashes=self._crashes,
            tool_count=len(self._listing.tools),
            pid=self._pid if self._state is ServerState.READY else None,
            last_error=self._last_error,
        )

    @property
    def tools(self) -> list[types.Tool]:
        """The server's tools after include/exclude filters (empty until ready)."""
        return list(self._listing.tools)

    @property
    def resources(self) -> list[types.Resource]:
        """The server's resources (empty when it has none or is not ready)."""
        return list(self._listing.resources)

    @property
    def serves_resources(self) -> bool:
        """Whether the server advertised the resources capability at its last start."""
        return self._serves_resources

    @property
    def prompts(self) -> list[types.Prompt]:
        """The server's prompts (empty when it has none or is not ready)."""
        return list(self._listing.prompts)

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        """Ask the owner task to stop the server; returns at once (never blocks)."""
        self._stop.set()
        if self._startup_scope is not None:
            self._startup_scope.cancel()
        if self._signals is not None:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                self._signals.send_nowait("stop")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the server until :meth:`stop` (or cancellation): start, supervise, restart.

        ``task_status.started()`` fires once the first start attempt ended, ready or failed,
        so ``TaskGroup.start`` never raises for a server that failed to start: the hub reads
        the state and applies its policy.

        On cancellation the session and the transport are closed (the transport's shutdown is
        shielded and bounded; a stdio server's process group is killed).
        """
        first = True
        try:
            while not self._stop.is_set():
                ok = await self._serve_once(first, task_status)
                if first and not ok:
                    task_status.started()
                    return
                first = False
                if self._stop.is_set():
                    break
                delay = self._next_backoff()
                if delay is None:
                    return
                with anyio.move_on_after(delay):
                    await self._stop.wait()
        except Exception as exc:  # an owner must never take the hub's task group down
            logger.exception("MCP server %r: supervisor failed", self.name)
            self._last_error = f"supervisor error: {exc!r}"
            self._set_state(ServerState.FAILED)
            if first:
                task_status.started()
        finally:
            self._session = None
            if self._state is not ServerState.FAILED:
                self._set_state(ServerState.STOPPED)

    async def _serve_once(self, first: bool, task_status: anyio.abc.TaskStatus[None]) -> bool:
        """One generation: connect, serve until stop or crash. Returns whether it got ready."""
        self._set_state(ServerState.STARTING if first else ServerState.RESTARTING)
        signals_send, signals = anyio.create_memory_object_stream[str](math.inf)
        self._signals = signals_send
        began = anyio.current_time()
        ready = False

        def on_closed(returncode: int | None) -> None:
            # Runs before the transport fails the in-flight calls, so they see the crash,
            # and new calls wait for the restart instead of using the dead session.
            self._last_returncode = returncode
            if not self._stop.is_set() and self._session is not None:
                self._session = None
                self._set_state(ServerState.RESTARTING)
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                signals_send.send_nowait("closed")

        startup = anyio.CancelScope(deadline=began + self.config.timeout)
        self._startup_scope = startup
        try:
            with startup, signals, signals_send:
                async with AsyncExitStack() as stack:
                    read, write = await stack.enter_async_context(
                        open_transport(self.config, self.stderr, on_closed, self._set_pid)
                    )
                    session = await stack.enter_async_context(self._make_session(read, write))
                    await session.initialize()
                    await self._refresh(session)
                    if self._stop.is_set():
                        return False
                    # Startup is over: the session lives until stop or crash, unbounded.
                    startup.deadline = math.inf
                    self._startup_scope = None
                    self._startup_seconds = anyio.current_time() - began
                    self._ready_since = time.time()
                    self._session = session
                    if not first:
                        self._restarts += 1
                    ready = True
                    self._set_state(ServerState.READY)
                    if first:
                        task_status.started()
                    await self._serve(session, signals)
                    self._session = None
                    if not self._stop.is_set():
                        self._record_crash()
                        self._set_state(ServerState.RESTARTING)
        except Exception as exc:
            self._session = None
            self._last_error = _describe(exc, self.config, self.stderr.tail(1))
            if not ready:
                logger.warning("MCP server %r failed to start: %s", self.name, self._last_error)
                if first:
                    self._set_state(ServerState.FAILED)
                else:
                    self._record_crash()
                return ready
            if self._stop.is_set():
                # A transport torn down by our own stop may fail on the way out (a DELETE to
                # a server that is gone): not a crash.
                logger.debug("MCP server %r: closed with %s", self.name, self._last_error)
            else:
                logger.warning("MCP server %r: connection lost: %s", self.name, self._last_error)
                self._record_crash()
                self._set_state(ServerState.RESTARTING)
            return True
        finally:
            self._signals = None
            self._startup_scope = None
        if not ready and startup.cancelled_caught and not self._stop.is_set():
            self._last_error = (
                f"not ready within {self.config.timeout:g}s (the config's timeout); "
                "raise it for slow starters such as npx/uvx servers"
            )
            logger.warning("MCP server %r failed to start: %s", self.name, self._last_error)
            if first:
                self._set_state(ServerState.FAILED)
            else:
                self._record_crash()
        return ready

    async def _serve(self, session: ClientSession, signals: Any) -> None:
        async for signal in signals:
            if signal in ("stop", "closed"):
                if signal == "closed":
                    self._last_error = _crash_text(self._last_returncode, self.stderr.tail(3))
                    logger.warning("MCP server %r crashed: %s", self.name, self._last_error)
                return
            try:
                await self._refresh(session)
            except MCPError as exc:
                logger.warning("MCP server %r: re-listing failed: %s", self.name, exc)

    def _make_session(self, read: Any, write: Any) -> ClientSession:
        cb = self._callbacks

        async def on_message(message: IncomingMessage) -> None:
            if isinstance(
                message,
                types.ToolListChangedNotification
                | types.ResourceListChangedNotification
                | types.PromptListChangedNotification,
            ):
                signals = self._signals
                if signals is not None:
                    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        signals.send_nowait("relist")
            if cb.message_handler is not None:
                await cb.message_handler(message)

        return ClientSession(
            read,
            write,
            sampling_callback=cb.sampling_callback,
            elicitation_callback=cb.elicitation_callback,
            list_roots_callback=cb.list_roots_callback,
            logging_callback=cb.logging_callback,
            message_handler=on_message,
            client_info=types.Implementation(name="llmctx", version=_version()),
        )

    async def _refresh(self, session: ClientSession) -> None:
        caps = session.server_capabilities
        listing = _Listing()
        if caps is None or caps.tools is not None:
            tools: list[types.Tool] = await _all_pages(session.list_tools, lambda r: r.tools)
            listing.tools = [t for t in tools if self._keep(t.name)]
        self._serves_resources = caps is not None and caps.resources is not None
        if caps is not None and caps.resources is not None:
            try:
                listing.resources = await _all_pages(session.list_resources, lambda r: r.resources)
            except MCPError as exc:
                logger.warning("MCP server %r: listing resources failed: %s", self.name, exc)
        if caps is not None and caps.prompts is not None:
            try:
                listing.prompts = await _all_pages(session.list_prompts, lambda r: r.prompts)
            except MCPError as exc:
                logger.warning("MCP server %r: listing prompts failed: %s", self.name, exc)
        self._listing = listing
        if self._on_listing_changed is not None:
            self._on_listing_changed()

    def _keep(self, tool: str) -> bool:
        include = self.config.include
        if include is not None and not any(fnmatch.fnmatchcase(tool, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(tool, p) for p in self.config.exclude)

    def _record_crash(self) -> None:
        self._crashes += 1
        now = anyio.current_time()
        self._crash_times.append(now)
        while self._crash_times and self._crash_times[0] < now - self.config.restart_window:
            self._crash_times.popleft()

    def _next_backoff(self) -> float | None:
        """Delay before the next restart, or ``None`` when the breaker opens (state failed)."""
        recent = len(self._crash_times)
        if recent > self.config.max_restarts:
            self._last_error = (
                f"crashed {recent} times within {self.config.restart_window:g}s; gave up "
                f"(maxRestarts={self.config.max_restarts}). Last: {self._last_error}"
            )
            logger.error("MCP server %r: %s", self.name, self._last_error)
            self._set_state(ServerState.FAILED)
            return None
        return float(min(BACKOFF_BASE * 2 ** max(recent - 1, 0), BACKOFF_MAX))

    def _connection_lost(self, session: ClientSession) -> None:
        """Treat ``session`` as dead after a request on it failed with a closed connection.

        A stdio or WebSocket transport reports the end itself (``on_closed``), so by the time
        the request fails the session is already retired. Streamable HTTP is one request per
        call: a server that died leaves its read stream open, and the failed request is the
        only sign. Without this the server would stay "ready" forever and never restart.
        """
        if self._session is not session or self._signals is None:
            return
        self._session = None
        self._set_state(ServerState.RESTARTING)
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._signals.send_nowait("closed")

    def _set_pid(self, pid: int) -> None:
        self._pid = pid

    def _set_state(self, state: ServerState) -> None:
        self._state = state
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # ----------------------------------------------------------------- calls

    async def session(self, wait: float | None = None) -> ClientSession:
        """Return the live session, waiting while the server starts or restarts.

        Args:
            wait: the longest time to wait for it to become ready (default: the config's
                ``timeout`` plus the longest backoff).

        Raises:
            ServerUnavailable: the server is failed or stopped, or did not get ready in time.
        """
        limit = self.config.timeout + BACKOFF_MAX if wait is None else wait
        with anyio.move_on_after(limit):
            while True:
                if self._state is ServerState.READY and self._session is not None:
                    return self._session
                if self._state in (ServerState.FAILED, ServerState.STOPPED) or self._stop.is_set():
                    raise ServerUnavailable(self.name, str(self._state), self._last_error)
                await self._changed.wait()
        raise ServerUnavailable(self.name, str(self._state), f"not ready after {limit:g}s")

    async def request(
        self,
        what: str,
        send: Callable[[ClientSession], Awaitable[_T]],
        timeout: float | None,  # noqa: ASYNC109 (a per-call limit is API)
    ) -> _T:
        """Run one request on the live session, translating failures into hub errors.

        Args:
            what: the dotted name, for messages.
            send: sends the request on the session it is given.
            timeout: seconds before :class:`ToolTimeout` (the request is cancelled on the
                server, the session stays up); ``None`` waits as long as the server takes.

        Raises:
            ServerCrashed: the connection died while the request was in flight.
            ServerUnavailable: the server is not running, or was stopped meanwhile.
            ToolTimeout: the timeout passed.
            ToolError: the server answered with a JSON-RPC error.

        On cancellation the server is sent a cancel notification; the session stays up.
        """
        session = await self.session()
        try:
            if timeout is None:
                return await send(session)
            with anyio.fail_after(timeout):
                return await send(session)
        except TimeoutError:
            raise ToolTimeout(what, timeout or 0.0) from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                if self._stop.is_set():
                    raise ServerUnavailable(
                        self.name, "stopped", "the hub is shutting down"
                    ) from None
                self._connection_lost(session)
                raise ServerCrashed(
                    self.name, returncode=self._last_returncode, stderr=self.stderr.tail()
                ) from None
            raise ToolError(what, exc.message, code=exc.code) from None


async def _all_pages(fetch: Any, items: Callable[[Any], Sequence[_T]]) -> list[_T]:
    out: list[_T] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await fetch(
            params=types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None
        )
        out.extend(items(page))
        cursor = page.next_cursor
        if not cursor:
            break
    return out


def _version() -> str:
    try:
        return importlib.metadata.version("llmctx")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _crash_text(returncode: int | None, tail: Sequence[str]) -> str:
    code = f"exited with status {returncode}" if returncode is not None else "connection closed"
    return code + (f"; stderr: {' | '.join(tail)}" if tail else "")


def _describe(exc: BaseException, config: ServerConfig, tail: Sequence[str] = ()) -> str:
    """A one-line, secret-free account of why a start failed.

    ``tail`` is the server's last stderr line (for streamable HTTP: the last HTTP error
    status), added when the exception alone says nothing useful.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError) and config.transport == "stdio":
        return (
            f"command {config.command!r} not found; install it or give its full path "
            "(children get a minimal PATH unless inheritEnv is true)"
        )
    if isinstance(exc, PermissionError) and config.transport == "stdio":
        return f"command {config.command!r} is not executable"
    if isinstance(exc, MCPError) and exc.code == types.CONNECTION_CLOSED:
        return "the server closed the connection during the handshake (see its stderr)"
    if isinstance(exc, ServerStartError):
        return exc.reason
    # First line only: httpx appends a "For more information check: ..." line.
    text = (str(exc) or type(exc).__name__).strip().splitlines()[0]
    if config.url:
        text = redact_known(text, dsn_secrets(config.url))
    # Not every env value is a secret: masking a "1" everywhere would only mangle the message.
    text = redact_known(text, (*config.headers.values(), *config.env.values()), min_length=4)
    text = f"{type(exc).__name__}: {redact_text(text)}"
    if isinstance(exc, MCPError) and config.transport == "http" and tail:
        text += f" ({tail[-1]}; check the url and the headers)"
    return text
