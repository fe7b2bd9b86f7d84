"""One supervised MCP server: an owner task that holds its transport and ``ClientSession``.

The owner task (:meth:`ManagedServer.run`, started by the hub with ``TaskGroup.start``) is the
only task that enters and exits the transport and the session, so no cancel scope is ever
exited in a foreign task. Calls from other tasks go straight to the ``ClientSession``: the SDK
matches responses to requests by id, so concurrent requests from any task are safe.

Lifecycle::

    starting ──► ready ──(crash)──────────────► restarting ──► ready ...
       │           │ └──(pings unanswered)──► unhealthy ─┘ │
       ▼           ▼                                      ▼  (breaker open: too many crashes)
     failed     stopped                                 failed

Liveness: a ready server is pinged every ``pingInterval`` seconds; ``pingFailures`` pings in a
row unanswered within ``pingTimeout`` (default 90% of ``pingInterval / pingFailures``; after a
failure the next ping goes at once) make it ``unhealthy``: it is killed (a hung process gets no
grace period), its calls in flight fail with :class:`ServerCrashed`, and it is restarted like a
crashed one. A hung server is so found within two ping intervals.
"""

from __future__ import annotations

import enum
import fnmatch
import importlib.metadata
import logging
import math
import os
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client.session import ClientRequestContext, ClientSession, IncomingMessage
from mcp.shared.exceptions import MCPError

from .._context import get_session
from .._redact import dsn_secrets, redact_known, redact_text
from ._errors import ServerCrashed, ServerStartError, ServerUnavailable, ToolError, ToolTimeout
from ._transports import StderrLog, open_transport
from .config import ServerConfig

if TYPE_CHECKING:
    import httpx2

    from .._session import Session
    from ._reaper import Reaper

__all__ = [
    "CallbackContext",
    "ManagedServer",
    "ServerCallbacks",
    "ServerState",
    "ServerStatus",
    "ToolFilter",
]

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
    UNHEALTHY = "unhealthy"
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
        hangs: times the server stopped answering pings and was restarted.
        last_ping_seconds: round trip of the last answered ping (``None``: none yet, or
            pings are off).
        in_flight: calls (tools, resources, prompts) waiting for this server's answer.
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
    hangs: int = 0
    last_ping_seconds: float | None = None
    in_flight: int = 0


@dataclass(frozen=True)
class CallbackContext:
    """What a hub callback learns about the request it answers.

    A server asks the client things (sampling, elicitation, roots) or tells it things (log
    messages) while the hub serves calls; this says which server asked, and for which call.

    Attributes:
        server: the config key of the server that sent the request.
        tool: the dotted name (``server.tool``) of the call it came during, when exactly one
            call was in flight on that server (the protocol does not say which one over
            stdio; with several in flight this is ``None`` and ``in_flight`` lists them).
        in_flight: the dotted names of every call in flight on the server.
        charge_to: the llmctx session of that call (``tool``), else the session current when
            the hub was entered; model calls made to answer go there.
        request: the SDK's ``ClientRequestContext`` (``None`` for notifications). Its
            attributes (``session``, ``request_id``, ``meta``) are also readable here, so a
            callback written for the SDK's signature keeps working.
    """

    server: str
    tool: str | None = None
    in_flight: tuple[str, ...] = ()
    charge_to: Session | None = None
    request: ClientRequestContext | None = None

    def __getattr__(self, name: str) -> Any:
        # Only called for names the dataclass lacks: the SDK context's session, request_id...
        request = self.__dict__.get("request")
        if request is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(request, name)


SamplingCallback = Callable[
    [CallbackContext, types.CreateMessageRequestParams],
    Awaitable["types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData"],
]
ElicitationCallback = Callable[
    [CallbackContext, types.ElicitRequestParams],
    Awaitable["types.ElicitResult | types.ErrorData"],
]
ListRootsCallback = Callable[
    [CallbackContext], Awaitable["types.ListRootsResult | types.ErrorData"]
]
LoggingCallback = Callable[
    [CallbackContext, types.LoggingMessageNotificationParams], Awaitable[None]
]
#: ``(server, tool) -> keep?``: decides which tools of a server the hub exposes.
ToolFilter = Callable[[str, types.Tool], bool]


@dataclass(frozen=True)
class ServerCallbacks:
    """The callbacks one server's session gets; each receives a :class:`CallbackContext` first.

    A server is told the client supports sampling, elicitation or roots only when it has the
    callback, so a callback given for one server never reaches another.

    Attributes:
        sampling: ``async (ctx, CreateMessageRequestParams) -> CreateMessageResult | ErrorData``
            (:func:`llmctx.mcp.model_sampler` makes one that answers with a model, charged).
        elicitation: ``async (ctx, ElicitRequestParams) -> ElicitResult | ErrorData``.
        list_roots: ``async (ctx) -> ListRootsResult | ErrorData``.
        logging: ``async (ctx, LoggingMessageNotificationParams) -> None``.
        message_handler: ``async (message) -> None``, the SDK's, for every notification.
    """

    sampling: SamplingCallback | None = None
    elicitation: ElicitationCallback | None = None
    list_roots: ListRootsCallback | None = None
    logging: LoggingCallback | None = None
    message_handler: Callable[[IncomingMessage], Awaitable[None]] | None = None

    def merged_over(self, base: ServerCallbacks) -> ServerCallbacks:
        """These callbacks, with ``base``'s filling the ones not set here."""
        return ServerCallbacks(
            sampling=self.sampling or base.sampling,
            elicitation=self.elicitation or base.elicitation,
            list_roots=self.list_roots or base.list_roots,
            logging=self.logging or base.logging,
            message_handler=self.message_handler or base.message_handler,
        )


@dataclass
class _Listing:
    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)


@dataclass(frozen=True)
class _Call:
    name: str
    session: Session | None


_HAS_PROC = os.path.isdir("/proc/self")


def _dying(pid: int) -> bool:
    """Whether ``pid`` is a zombie the kernel does not report to ``waitid`` yet (Linux).

    A killed process's main thread is a zombie (``Z`` in ``/proc/PID/stat``) while its other
    threads are still being torn down, and ``waitid`` reports the process only after them;
    a child being reaped by the event loop's child watcher (``X``) is hidden from it too.
    """
    if not _HAS_PROC:
        return False  # no /proc (macOS, BSD): waitid alone decides
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True  # gone: reaped meanwhile
    except OSError:
        return False
    end = stat.rfind(b")")  # the command name may hold spaces and parentheses
    return stat[end + 2 : end + 3] in (b"Z", b"X")


class ManagedServer:
    """One server of a hub: config, state, current session and supervisor loop.

    Built by the hub; users reach it through :class:`llmctx.mcp.Hub`.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        callbacks: ServerCallbacks | None = None,
        on_listing_changed: Callable[[], None] | None = None,
        tool_filter: ToolFilter | None = None,
        reaper: Reaper | None = None,
        auth: httpx2.Auth | None = None,
        headers: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.stderr = StderrLog(config.name)
        self._callbacks = callbacks or ServerCallbacks()
        self._on_listing_changed = on_listing_changed
        self._tool_filter = tool_filter
        self.reaper = reaper
        self._auth = auth
        self._headers = headers
        self._calls: dict[int, _Call] = {}
        self._entry_session: Session | None = None
        self._abort = False
        self._hangs = 0
        self._last_ping: float | None = None
        self._unhealthy_reason: str | None = None
        self._running = False
        self.generation = 0
        """How many starts (first, restarts) the owner task has begun."""
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
            hangs=self._hangs,
            last_ping_seconds=self._last_ping,
            in_flight=len(self._calls),
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
    def resource_templates(self) -> list[types.ResourceTemplate]:
        """The server's resource templates (``resources/templates/list``; empty if none)."""
        return list(self._listing.templates)

    def matches_template(self, uri: str) -> bool:
        """Whether ``uri`` fits one of the server's resource templates (RFC 6570, simple)."""
        return any(_template_regex(t.uri_template).fullmatch(uri) for t in self._listing.templates)

    @property
    def running(self) -> bool:
        """Whether the owner task runs (``False`` once it gave up, or was stopped)."""
        return self._running

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
        self._signal("stop")

    def request_restart(self) -> bool:
        """Ask the owner task to close the current session and start afresh (never blocks).

        Returns:
            Whether the owner task is running to do it (``False``: start it again instead).
        """
        if not self._running or self._stop.is_set():
            return False
        if self._startup_scope is not None:  # still starting: begin again with a new process
            self._abort = True
            self._startup_scope.cancel()
        self._signal("restart")
        return True

    def reset(self) -> None:
        """Forget crashes and the breaker before the owner task is started again."""
        self._crash_times.clear()
        self._stop = anyio.Event()
        self._set_state(ServerState.STARTING)

    async def refresh(self) -> None:
        """Re-list the server's tools, resources and prompts now (a no-op unless ready).

        Raises:
            ToolError: the server answered a listing with an error.
        """
        session = self._session
        if session is None:
            return
        try:
            await self._refresh(session)
        except MCPError as exc:
            raise ToolError(f"{self.name} (listing)", exc.message, code=exc.code) from None

    async def wait_settled(self, *, after: int) -> None:
        """Wait until a start begun after generation ``after`` ended (ready or failed).

        Bounded by the config's ``timeout`` plus the longest backoff.
        """
        with anyio.move_on_after(self.config.timeout + BACKOFF_MAX):
            while not (
                self.generation > after
                and self._state in (ServerState.READY, ServerState.FAILED, ServerState.STOPPED)
            ) and not (not self._running and self._state is not ServerState.STARTING):
                await self._changed.wait()

    def _signal(self, what: str) -> None:
        if self._signals is not None:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                self._signals.send_nowait(what)

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
        self._running = True
        self._entry_session = get_session()
        try:
            while not self._stop.is_set():
                ok, restart_now = await self._serve_once(first, task_status)
                if first and not ok and not restart_now:
                    task_status.started()
                    return
                if ok:
                    first = False  # task_status.started() has fired
                if self._stop.is_set():
                    break
                if restart_now:  # asked for (hub.restart): no crash, no backoff
                    continue
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
            self._running = False
            if self._state is not ServerState.FAILED:
                self._set_state(ServerState.STOPPED)

    async def _serve_once(
        self, first: bool, task_status: anyio.abc.TaskStatus[None]
    ) -> tuple[bool, bool]:
        """One generation: connect, serve until stop, crash or restart request.

        Returns:
            ``(got ready, restart at once)``.
        """
        self.generation += 1
        self._set_state(ServerState.STARTING if first else ServerState.RESTARTING)
        signals_send, signals = anyio.create_memory_object_stream[str](math.inf)
        self._signals = signals_send
        began = anyio.current_time()
        ready = False
        restart = False
        self._abort = False
        self._unhealthy_reason = None

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

        def graceful() -> bool:
            # A server past its start deadline or hung gets no grace period: the caller is
            # waiting for the report (a 2 s start timeout must report after 2 s, not 5).
            return not self._abort and anyio.current_time() < startup.deadline

        try:
            with startup, signals, signals_send:
                async with AsyncExitStack() as stack:
                    read, write = await stack.enter_async_context(
                        open_transport(
                            self.config,
                            self.stderr,
                            on_closed,
                            self._set_pid,
                            reaper=self.reaper,
                            graceful=graceful,
                            auth=self._auth,
                            headers=self._headers,
                        )
                    )
                    session = await stack.enter_async_context(self._make_session(read, write))
                    await session.initialize()
                    await self._refresh(session)
                    if self._stop.is_set():
                        return False, False
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
                    async with anyio.create_task_group() as pinger:
                        if self.config.ping_interval:
                            pinger.start_soon(self._pinger, session)
                        outcome = await self._serve(session, signals)
                        pinger.cancel_scope.cancel()
                    self._session = None
                    if outcome == "restart":
                        restart = True
                    elif not self._stop.is_set():
                        self._record_crash()
                        if outcome != "unhealthy":  # that one shows until the next start
                            self._set_state(ServerState.RESTARTING)
        except Exception as exc:
            self._session = None
            self._last_error = _describe(exc, self.config, self.stderr.tail(3)) + _noise_note(
                self.stderr.noise(), self.stderr.noise_count
            )
            if not ready:
                logger.warning("MCP server %r failed to start: %s", self.name, self._last_error)
                if first:
                    self._set_state(ServerState.FAILED)
                else:
                    self._record_crash()
                return ready, False
            if self._stop.is_set() or restart:
                # A transport torn down by our own stop may fail on the way out (a DELETE to
                # a server that is gone): not a crash.
                logger.debug("MCP server %r: closed with %s", self.name, self._last_error)
            else:
                logger.warning("MCP server %r: connection lost: %s", self.name, self._last_error)
                self._record_crash()
                self._set_state(ServerState.RESTARTING)
            return True, restart
        finally:
            self._signals = None
            self._startup_scope = None
        if not ready and startup.cancelled_caught and not self._stop.is_set():
            if self._abort:  # hub.restart() while it was starting: begin again
                return False, True
            self._last_error = (
                f"not ready within {self.config.timeout:g}s (the config's timeout); "
                "raise it for slow starters such as npx/uvx servers"
            ) + _noise_note(self.stderr.noise(), self.stderr.noise_count)
            logger.warning("MCP server %r failed to start: %s", self.name, self._last_error)
            if first:
                self._set_state(ServerState.FAILED)
            else:
                self._record_crash()
        return ready, restart

    async def _serve(self, session: ClientSession, signals: Any) -> str:
        """Serve until a signal ends the generation; returns that signal."""
        async for what in signals:
            if what in ("stop", "closed", "restart"):
                if what == "closed":
                    self._last_error = _crash_text(self._last_returncode, self.stderr.tail(3))
                    logger.warning("MCP server %r crashed: %s", self.name, self._last_error)
                return str(what)
            if what == "unhealthy":
                self._hangs += 1
                self._last_error = self._unhealthy_reason
                logger.warning("MCP server %r is unhealthy: %s", self.name, self._last_error)
                self._session = None
                self._abort = True  # kill at once: a hung process ignores the polite steps
                self._set_state(ServerState.UNHEALTHY)
                if self.config.transport == "stdio" and self._pid is not None:
                    # Before the calls in flight fail, so their error means "it is gone".
                    with suppress(ProcessLookupError, PermissionError):
                        os.killpg(self._pid, signal.SIGKILL)
                return "unhealthy"
            try:
                await self._refresh(session)
            except MCPError as exc:
                logger.warning("MCP server %r: re-listing failed: %s", self.name, exc)
        return "closed"

    async def _pinger(self, session: ClientSession) -> None:
        """Ping the server; report it unhealthy after ``ping_failures`` misses in a row."""
        interval = self.config.ping_interval or 0.0
        limit = self.config.effective_ping_timeout or interval
        misses = 0
        began = anyio.current_time()
        while True:
            # Pings go on a fixed cadence (an interval after the previous one was sent, not
            # answered); after a miss the next goes at once. A hang is so found within
            # interval + failures * timeout: under two intervals with the default timeout.
            if misses == 0:
                await anyio.sleep_until(began + interval)
            began = anyio.current_time()
            try:
                with anyio.fail_after(limit):
                    await session.send_ping()
            except TimeoutError:
                misses += 1
            except MCPError as exc:
                if exc.code == types.CONNECTION_CLOSED:
                    return  # the transport reports the end itself
                misses = 0  # it answered, if only with an error: it is alive
            else:
                misses = 0
                self._last_ping = anyio.current_time() - began
            if misses >= self.config.ping_failures:
                self._unhealthy_reason = (
                    f"stopped answering pings ({misses} in a row unanswered within {limit:g}s); "
                    "killed and restarted (pingInterval / pingTimeout / pingFailures in the "
                    "config tune this)"
                )
                self._signal("unhealthy")
                return

    def _context(self, request: ClientRequestContext | None) -> CallbackContext:
        calls = list(self._calls.values())
        one = calls[0] if len(calls) == 1 else None
        return CallbackContext(
            server=self.name,
            tool=one.name if one is not None else None,
            in_flight=tuple(c.name for c in calls),
            charge_to=one.session if one is not None else self._entry_session,
            request=request,
        )

    def _make_session(self, read: Any, write: Any) -> ClientSession:
        cb = self._callbacks
        kwargs: dict[str, Any] = {}
        if cb.sampling is not None:
            sampling = cb.sampling

            async def on_sampling(context: ClientRequestContext, params: Any) -> Any:
                return await sampling(self._context(context), params)

            kwargs["sampling_callback"] = on_sampling
        if cb.elicitation is not None:
            elicitation = cb.elicitation

            async def on_elicitation(context: ClientRequestContext, params: Any) -> Any:
                return await elicitation(self._context(context), params)

            kwargs["elicitation_callback"] = on_elicitation
        if cb.list_roots is not None:
            list_roots = cb.list_roots

            async def on_list_roots(context: ClientRequestContext) -> Any:
                return await list_roots(self._context(context))

            kwargs["list_roots_callback"] = on_list_roots
        if cb.logging is not None:
            log = cb.logging

            async def on_logging(params: types.LoggingMessageNotificationParams) -> None:
                await log(self._context(None), params)

            kwargs["logging_callback"] = on_logging

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
            message_handler=on_message,
            client_info=types.Implementation(name="llmctx", version=_version()),
            **kwargs,
        )

    async def _refresh(self, session: ClientSession) -> None:
        caps = session.server_capabilities
        listing = _Listing()
        if caps is None or caps.tools is not None:
            tools: list[types.Tool] = await _all_pages(session.list_tools, lambda r: r.tools)
            listing.tools = [t for t in tools if self._keep(t)]
        self._serves_resources = caps is not None and caps.resources is not None
        if caps is not None and caps.resources is not None:
            try:
                listing.resources = await _all_pages(session.list_resources, lambda r: r.resources)
            except MCPError as exc:
                logger.warning("MCP server %r: listing resources failed: %s", self.name, exc)
            try:
                listing.templates = await _all_pages(
                    session.list_resource_templates, lambda r: r.resource_templates
                )
            except MCPError as exc:  # optional: many servers have no templates
                logger.debug("MCP server %r: no resource templates: %s", self.name, exc)
        if caps is not None and caps.prompts is not None:
            try:
                listing.prompts = await _all_pages(session.list_prompts, lambda r: r.prompts)
            except MCPError as exc:
                logger.warning("MCP server %r: listing prompts failed: %s", self.name, exc)
        self._listing = listing
        if self._on_listing_changed is not None:
            self._on_listing_changed()

    def _keep(self, tool: types.Tool) -> bool:
        include = self.config.include
        if include is not None and not any(fnmatch.fnmatchcase(tool.name, p) for p in include):
            return False
        if any(fnmatch.fnmatchcase(tool.name, p) for p in self.config.exclude):
            return False
        if self._tool_filter is None:
            return True
        try:
            return bool(self._tool_filter(self.name, tool))
        except Exception:  # a broken filter hides the tool rather than the server
            logger.exception("MCP server %r: tool filter failed on %r", self.name, tool.name)
            return False

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

    def _exited(self) -> bool:
        """Whether this stdio server's process has exited (peeked, not reaped)."""
        pid = self._pid
        if self.config.transport != "stdio" or pid is None or not hasattr(os, "waitid"):
            return False
        try:
            found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        except OSError:
            return False
        return found is not None or _dying(pid)

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
        token = object()
        self._calls[id(token)] = _Call(what, get_session())
        try:
            with anyio.fail_after(timeout) if timeout is not None else _no_limit():
                session = await self.session()
                if self._exited():
                    # It died while idle and the transport has not said so yet: this call was
                    # never in flight, so wait for the restart instead of failing it.
                    self._connection_lost(session)
                    session = await self.session()
                return await self._send(what, session, send)
        except TimeoutError:
            raise ToolTimeout(what, timeout or 0.0) from None
        finally:
            del self._calls[id(token)]

    async def _send(
        self, what: str, session: ClientSession, send: Callable[[ClientSession], Awaitable[_T]]
    ) -> _T:
        try:
            return await send(session)
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                if self._stop.is_set():
                    raise ServerUnavailable(
                        self.name, "stopped", "the hub is shutting down"
                    ) from None
                self._connection_lost(session)
                reason = self._unhealthy_reason
                raise ServerCrashed(
                    self.name,
                    returncode=None if reason else self._last_returncode,
                    stderr=self.stderr.tail(),
                    reason=reason,
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


class _no_limit:
    """A ``with`` that does nothing: the no-timeout twin of ``anyio.fail_after``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_TEMPLATE_VAR = re.compile(r"\{([+#./;?&]?)([^}]*)\}")
_template_cache: dict[str, re.Pattern[str]] = {}


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex for the URIs an RFC 6570 template expands to (levels 1-2 and query forms).

    ``{var}`` matches one path segment, ``{+var}`` / ``{#var}`` anything, ``{?a,b}`` /
    ``{&a}`` an optional query part; good enough to route a read to the server that serves it.
    """
    found = _template_cache.get(template)
    if found is not None:
        return found
    parts: list[str] = []
    pos = 0
    for match in _TEMPLATE_VAR.finditer(template):
        parts.append(re.escape(template[pos : match.start()]))
        op = match.group(1)
        if op in ("+", "#"):
            parts.append(".*")
        elif op in ("?", "&"):
            parts.append(r"(?:[?&][^#]*)?")
        elif op in (".", "/", ";"):
            parts.append(rf"(?:{re.escape(op)}[^/?#]*)*")
        else:
            parts.append(r"[^/?#]+")
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    found = re.compile("".join(parts))
    _template_cache[template] = found
    return found


def _noise_note(noise: Sequence[str], count: int) -> str:
    if not noise:
        return ""
    return (
        f"; it wrote {count} line{'s' if count != 1 else ''} to stdout that "
        f"{'are' if count != 1 else 'is'} not JSON-RPC, e.g. {noise[-1]!r} (a stdio server "
        "must write only protocol messages to stdout and log to stderr)"
    )


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

    ``tail`` is the server's last stderr lines (for streamable HTTP: the last HTTP error
    statuses), added when the exception alone says nothing useful.
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
        said = f"; its stderr ends: {' | '.join(tail)}" if tail else " (it wrote no stderr)"
        return "the server closed the connection during the handshake" + said
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
