"""The MCP hub: many servers from one config, started together, supervised, name-spaced.

::

    async with Hub.from_config("mcp.json", policy="best_effort") as hub:
        hub.status()                                  # state and timings per server
        await hub.call("files.read_file", {"path": "README.md"})
        tools = hub.openai_tools()                    # or hub.anthropic_tools()
        reply = await hub.dispatch(tool_call)         # a model's tool call, routed to hub.call

Each server is owned by one task of the hub's task group (see :mod:`llmctx.mcp.server`).
Tools are named ``server.tool`` for people and ``server__tool`` (sanitised to
``^[a-zA-Z0-9_-]{1,64}$``, the rule OpenAI and Anthropic apply; long names get a stable hash)
for models; both forms are accepted by :meth:`Hub.call`. Every tool call is charged to the
current llmctx session as a call of kind ``tool`` (latency, status, error; no token cost).
A hub with stdio servers also runs a watcher process (:mod:`llmctx.mcp._reaper`) that kills
them if the process running the hub dies without cleaning up.
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import mcp_types as types
import pydantic_core

from .._charge import track_call
from .._exceptions import ConfigError, UsageError
from ._auth import HeaderProvider, OAuthCallback, OAuthRedirect, TokenStorage, build_auth
from ._errors import MCPHubError, ServerStartError, ServerUnavailable, ToolError, ToolNotFound
from ._export import (
    OPENAI_DESCRIPTION_LIMIT,
    SEPARATOR,
    content_parts,
    export_name,
    fit_description,
    hashed_name,
    strict_schema,
    strip_keys,
)
from ._reaper import Reaper
from .config import HubConfig, load_config
from .server import (
    ElicitationCallback,
    ListRootsCallback,
    LoggingCallback,
    ManagedServer,
    SamplingCallback,
    ServerCallbacks,
    ServerState,
    ServerStatus,
    ToolFilter,
)

if TYPE_CHECKING:
    import httpx2
    from mcp.client.session import IncomingMessage

__all__ = [
    "Hub",
    "HubTool",
    "Interceptor",
    "Proceed",
    "ToolCall",
    "ToolCallResult",
    "result_text",
]

logger = logging.getLogger("llmctx.mcp")

Policy = Literal["strict", "best_effort"]
ToolCallFormat = Literal["chat", "responses", "anthropic"]


class _Default(enum.Enum):
    TIMEOUT = "the server's callTimeout"


#: ``timeout=`` left out: the server's ``callTimeout`` applies (``None`` means no limit).
DEFAULT = _Default.TIMEOUT


@dataclass
class ToolCall:
    """One call as interceptors see it (see :class:`Hub`'s ``interceptors``).

    Attributes:
        server: the config key of the server.
        tool: the tool's own name on that server.
        qualified: ``server.tool``.
        arguments: the arguments (a copy: an interceptor may change it or pass others on).
        attempt: 1 for the first request to the server, 2 for the first retry, ...
    """

    server: str
    tool: str
    qualified: str
    arguments: dict[str, Any]
    attempt: int = 0


#: ``await proceed(arguments)`` sends the call on (``None``: the call's current arguments).
Proceed = Callable[[Mapping[str, Any] | None], Awaitable[types.CallToolResult]]
#: ``async (call, proceed) -> CallToolResult``: sees every tool call before it goes out. It can
#: refuse (raise :class:`ToolRefused`, or return a result of its own), rewrite (``proceed``
#: with other arguments) or retry (``proceed`` again). The first in the list is outermost.
Interceptor = Callable[[ToolCall, Proceed], Awaitable[types.CallToolResult]]


@dataclass(frozen=True)
class HubTool:
    """One tool of one server, with both of its hub names.

    Attributes:
        server: the config key of the server that owns it.
        name: the tool's own name on that server.
        qualified: ``server.tool``, the name people use with :meth:`Hub.call`.
        exported: ``server__tool`` sanitised to ``^[a-zA-Z0-9_-]{1,64}$``, the name models see.
        tool: the SDK's ``Tool`` (description, input schema, annotations).
    """

    server: str
    name: str
    qualified: str
    exported: str
    tool: types.Tool

    @property
    def description(self) -> str:
        """The tool's description (empty when the server gave none)."""
        return self.tool.description or ""

    @property
    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments, always an object schema with ``properties``."""
        schema = dict(self.tool.input_schema or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        return schema


@dataclass(frozen=True)
class ToolCallResult:
    """What :meth:`Hub.dispatch` returns: the answer to one model tool call.

    Attributes:
        id: the tool call id the model gave (``None`` when it gave none).
        name: the name the model used.
        content: the result as text, ready to go back to the model.
        is_error: whether the call failed (the text then says why).
        result: the SDK's ``CallToolResult`` when the server answered.
        format: the shape of the call it answers: ``"chat"`` (Chat Completions),
            ``"responses"`` (a Responses ``function_call`` item) or ``"anthropic"``.
    """

    id: str | None
    name: str
    content: str
    is_error: bool
    result: types.CallToolResult | None = None
    format: ToolCallFormat = "chat"

    def _parts(self, fmt: str) -> str | list[dict[str, Any]]:
        if self.result is None:
            return self.content
        return content_parts(self.result, fmt)

    def to_message(self) -> dict[str, Any]:
        """Return the answer in the shape of the call it answers (see ``format``)."""
        if self.format == "responses":
            return self.to_responses()
        if self.format == "anthropic":
            return self.to_anthropic()
        return self.to_chat()

    def to_openai(self) -> dict[str, Any]:
        """Return the OpenAI answer: a ``function_call_output`` item for a Responses call,
        else a Chat Completions ``tool`` message."""
        return self.to_responses() if self.format == "responses" else self.to_chat()

    def to_chat(self) -> dict[str, Any]:
        """Return a Chat Completions ``tool`` message (text only: images are named in it)."""
        return {"role": "tool", "tool_call_id": self.id, "content": self._parts("chat")}

    def to_responses(self) -> dict[str, Any]:
        """Return a Responses ``function_call_output`` item (images as ``input_image``)."""
        return {
            "type": "function_call_output",
            "call_id": self.id,
            "output": self._parts("responses"),
        }

    def to_anthropic(self) -> dict[str, Any]:
        """Return an Anthropic ``tool_result`` content block (images as ``image`` blocks)."""
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": self.id,
            "content": self._parts("anthropic"),
        }
        if self.is_error:
            block["is_error"] = True
        return block


class Hub:
    """A fleet of MCP servers from one config, as one async context manager.

    Build it with :meth:`from_config` (or from a :class:`HubConfig`), then ``async with`` it.
    Entering starts every enabled server concurrently (each within its config ``timeout``);
    with ``policy="strict"`` any failure stops them all and raises :class:`ServerStartError`,
    with ``"best_effort"`` the failed ones are reported by :meth:`status` and the rest run.
    Exiting (normally, on error or on cancellation) stops every server within a bounded time,
    killing each stdio server's whole process group. A hub is entered once.

    Args:
        config: the validated config.
        policy: ``"strict"`` or ``"best_effort"``.
        sampling_callback, elicitation_callback, list_roots_callback, logging_callback:
            callbacks for every server; each gets a :class:`CallbackContext` (which server,
            which call) first, then the SDK's params (see :class:`ServerCallbacks`).
        message_handler: the SDK's ``async (message)`` for every server's notifications.
        callbacks: per-server :class:`ServerCallbacks`, by config key; a field set there wins
            over the hub-wide one for that server. A server only learns the client supports
            sampling, elicitation or roots if it has that callback.
        interceptors: see :data:`Interceptor`; run around every tool call, first outermost.
        tool_filter: ``(server, tool) -> bool``, or a mapping of them by config key: which
            tools to expose (after the config's include/exclude).
        auth: per-server authentication by config key: an ``httpx2.Auth``, or a callable
            returning headers (called for every request, so rotating tokens stay fresh).
        token_storage: ``(server_name, url) -> TokenStorage`` for ``"auth": "oauth"`` servers
            (default: :class:`FileTokenStorage`, one 0600 file per URL).
        oauth_redirect, oauth_callback: drive the OAuth authorization step yourself (default:
            print and open the URL, listen on the loopback ``redirectUri``).
    """

    def __init__(
        self,
        config: HubConfig,
        *,
        policy: Policy = "strict",
        sampling_callback: SamplingCallback | None = None,
        elicitation_callback: ElicitationCallback | None = None,
        list_roots_callback: ListRootsCallback | None = None,
        logging_callback: LoggingCallback | None = None,
        message_handler: Callable[[IncomingMessage], Awaitable[None]] | None = None,
        callbacks: Mapping[str, ServerCallbacks] | None = None,
        interceptors: Sequence[Interceptor] = (),
        tool_filter: ToolFilter | Mapping[str, ToolFilter] | None = None,
        auth: Mapping[str, httpx2.Auth | HeaderProvider] | None = None,
        token_storage: Callable[[str, str], TokenStorage] | None = None,
        oauth_redirect: OAuthRedirect | None = None,
        oauth_callback: OAuthCallback | None = None,
    ) -> None:
        if policy not in ("strict", "best_effort"):
            raise ConfigError(f"policy must be 'strict' or 'best_effort', not {policy!r}")
        self.config = config
        self.policy: Policy = policy
        enabled = {s.name: s for s in config.enabled()}
        for what, keyed in (("callbacks", callbacks), ("auth", auth)):
            unknown = sorted(set(keyed or {}) - set(enabled))
            if unknown:
                raise ConfigError(
                    f"{what}= names servers the config does not run: {unknown}; "
                    f"servers: {sorted(enabled)}"
                )
        shared = ServerCallbacks(
            sampling=sampling_callback,
            elicitation=elicitation_callback,
            list_roots=list_roots_callback,
            logging=logging_callback,
            message_handler=message_handler,
        )
        self._interceptors = tuple(interceptors)
        self._reaper = Reaper()
        self._servers: dict[str, ManagedServer] = {}
        for name, server_config in enabled.items():
            given = (auth or {}).get(name)
            storage = (
                token_storage(name, server_config.url or "")
                if token_storage is not None and server_config.auth is not None
                else None
            )
            http_auth, ws_headers = build_auth(
                server_config,
                given,
                storage=storage,
                redirect=oauth_redirect,
                callback=oauth_callback,
            )
            own = (callbacks or {}).get(name)
            self._servers[name] = ManagedServer(
                server_config,
                callbacks=own.merged_over(shared) if own is not None else shared,
                on_listing_changed=self._reindex,
                tool_filter=tool_filter.get(name)
                if isinstance(tool_filter, Mapping)
                else tool_filter,
                reaper=self._reaper if server_config.transport == "stdio" else None,
                auth=http_auth,
                headers=ws_headers,
            )
        self._tools: dict[str, HubTool] = {}  # by exported name
        self._by_qualified: dict[str, HubTool] = {}
        self._warned: set[tuple[str, str]] = set()
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._state: Literal["unopened", "opened", "closed"] = "unopened"

    @classmethod
    def from_config(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any] | HubConfig,
        *,
        profile: str | None = None,
        policy: Policy = "strict",
        environ: Mapping[str, str] | None = None,
        servers: Collection[str] | None = None,
        **options: Any,
    ) -> Hub:
        """Build a hub from a config file, a parsed mapping or a :class:`HubConfig`.

        Args:
            source: the path of an ``mcpServers`` JSON file, its parsed content, or a config.
            profile: the profile to apply (``None``: every server as written).
            policy: ``"strict"`` (any start failure fails the hub) or ``"best_effort"``.
            environ: where ``${VAR}`` is looked up (default ``os.environ``).
            servers: run only these servers (the others' ``${VAR}`` are not expanded).
            **options: callbacks, interceptors, tool filters and auth, see :class:`Hub`.

        Returns:
            An unopened hub; nothing runs until ``async with``.

        Raises:
            MCPConfigError: the config is invalid (the message names the server and field).
        """
        config = (
            source
            if isinstance(source, HubConfig)
            else load_config(source, profile=profile, environ=environ, servers=servers)
        )
        return cls(config, policy=policy, **options)

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Hub:
        if self._state != "unopened":
            raise UsageError(f"this Hub is {self._state}; a hub is entered once, make a new one")
        self._state = "opened"
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(self._lifespan())
        except BaseExceptionGroup as group:
            self._state = "closed"
            # Owner tasks never raise, so a group here only wraps the policy's own error.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], ServerStartError):
                raise group.exceptions[0] from None
            raise
        except BaseException:
            self._state = "closed"
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._state = "closed"
        if stack is None:
            return
        try:
            await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The body ran inside the hub's task group, which wraps its exception in a group;
            # owner tasks never raise, so give the caller back the exception it raised.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return
            raise

    @asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if any(s.config.transport == "stdio" for s in self._servers.values()):
                # Before the first spawn: a host killed at any later moment takes its
                # servers with it.
                await stack.enter_async_context(self._reaper)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    async with anyio.create_task_group() as starters:
                        for server in self._servers.values():
                            # tg.start from several starter tasks: concurrent startup, while
                            # each owner task lives in the hub's group, not in the starter's.
                            starters.start_soon(tg.start, server.run)
                    self._check_policy()
                    yield
                finally:
                    self._tg = None
                    for server in self._servers.values():
                        server.stop()

    def _check_policy(self) -> None:
        failed = [s for s in self._servers.values() if s.state is ServerState.FAILED]
        if failed and self.policy == "strict":
            first = failed[0]
            others = [s.name for s in failed[1:]]
            reason = first.status().last_error or "unknown error"
            if others:
                reason += f" (also failed: {', '.join(others)})"
            raise ServerStartError(first.name, reason, first.stderr.tail(5))

    def _require_open(self) -> None:
        if self._state != "opened":
            raise UsageError(
                f"this Hub is {self._state}; use it inside `async with Hub.from_config(...)`"
            )

    # ----------------------------------------------------------------- inspection

    def status(self) -> dict[str, ServerStatus]:
        """Return a snapshot of every enabled server, in config order (never blocks)."""
        return {name: s.status() for name, s in self._servers.items()}

    def server(self, name: str) -> ManagedServer:
        """Return the managed server with that config key.

        Raises:
            ToolNotFound: no enabled server has that name.
        """
        try:
            return self._servers[name]
        except KeyError:
            raise ToolNotFound(name, list(self._servers), kind="server") from None

    async def restart(self, name: str) -> ServerStatus:
        """Restart one server: close its session (and process) and start it afresh.

        Works on a ready, starting or restarting server, and on one that is ``failed`` (its
        crash history and breaker are reset). Calls in flight on it fail with
        :class:`ServerCrashed`; calls made meanwhile wait for it.

        Args:
            name: the config key.

        Returns:
            Its status once the new start ended (ready, or failed with the reason).

        Raises:
            ToolNotFound: no enabled server has that name.
            UsageError: the hub is not open.

        Cancellation while waiting leaves the restart going on in the hub.
        """
        self._require_open()
        server = self.server(name)
        generation = server.generation
        if not server.request_restart():
            assert self._tg is not None
            server.reset()
            await self._tg.start(server.run)
            return server.status()
        await server.wait_settled(after=generation)
        return server.status()

    async def refresh(self, name: str | None = None) -> None:
        """Re-list tools, resources and prompts of one server (or of every ready one) now.

        The hub re-lists by itself on list-changed notifications; this is for servers that
        change their listings without sending them.

        Raises:
            ToolNotFound: no enabled server has that name.
            ToolError: a server answered a listing with an error.
        """
        self._require_open()
        targets = [self.server(name)] if name is not None else list(self._servers.values())
        for server in targets:
            await server.refresh()

    def tools(self) -> list[HubTool]:
        """Return the tools of every ready server, in config then server order (never blocks)."""
        return list(self._tools.values())

    def resources(self) -> list[tuple[str, types.Resource]]:
        """Return ``(server, resource)`` for every resource of every ready server."""
        return [(name, r) for name, s in self._servers.items() for r in s.resources]

    def resource_templates(self) -> list[tuple[str, types.ResourceTemplate]]:
        """Return ``(server, template)`` for every resource template of every ready server.

        :meth:`read_resource` routes a URI made from a template to the server whose template
        it fits.
        """
        return [(name, t) for name, s in self._servers.items() for t in s.resource_templates]

    def prompts(self) -> list[tuple[str, types.Prompt]]:
        """Return ``(server.prompt, prompt)`` for every prompt of every ready server."""
        return [(f"{name}.{p.name}", p) for name, s in self._servers.items() for p in s.prompts]

    def openai_tools(
        self, *, strict: bool = False, max_description: int | None = OPENAI_DESCRIPTION_LIMIT
    ) -> list[dict[str, Any]]:
        """Return the tools in the OpenAI Chat Completions ``tools=`` format.

        Args:
            strict: convert each schema for strict mode (``strict: true``; see
                :func:`llmctx.mcp._export.strict_schema`); a tool whose schema cannot be
                converted is exported with ``strict: false``.
            max_description: descriptions longer than this are cut with a marker (OpenAI's
                limit is 1,024); the full text stays in :meth:`tools`. ``None``: no limit.
        """
        out = []
        for t in self._tools.values():
            parameters, is_strict = self._schema(t, strict)
            function: dict[str, Any] = {
                "name": t.exported,
                "description": fit_description(t.description, max_description),
                "parameters": parameters,
            }
            if strict:
                function["strict"] = is_strict
            out.append({"type": "function", "function": function})
        return out

    def responses_tools(
        self, *, strict: bool = False, max_description: int | None = OPENAI_DESCRIPTION_LIMIT
    ) -> list[dict[str, Any]]:
        """Return the tools in the OpenAI Responses API ``tools=`` format.

        Args:
            strict, max_description: as for :meth:`openai_tools`.
        """
        out = []
        for t in self._tools.values():
            parameters, is_strict = self._schema(t, strict)
            out.append(
                {
                    "type": "function",
                    "name": t.exported,
                    "description": fit_description(t.description, max_description),
                    "parameters": parameters,
                    "strict": is_strict,
                }
            )
        return out

    def anthropic_tools(self, *, max_description: int | None = None) -> list[dict[str, Any]]:
        """Return the tools in the Anthropic Messages ``tools=`` format.

        Args:
            max_description: cut descriptions longer than this, with a marker (default: no
                limit; Anthropic takes long descriptions).
        """
        return [
            {
                "name": t.exported,
                "description": fit_description(t.description, max_description),
                "input_schema": strip_keys(t.input_schema),
            }
            for t in self._tools.values()
        ]

    def gemini_tools(
        self, *, max_description: int | None = OPENAI_DESCRIPTION_LIMIT
    ) -> list[dict[str, Any]]:
        """Return the tools as Gemini ``function_declarations`` (``$schema`` removed).

        Gemini rejects a schema carrying ``$schema``; pass the list as
        ``types.Tool(function_declarations=hub.gemini_tools())``.
        """
        return [
            {
                "name": t.exported,
                "description": fit_description(t.description, max_description),
                "parameters": strip_keys(t.input_schema),
            }
            for t in self._tools.values()
        ]

    @staticmethod
    def _schema(tool: HubTool, strict: bool) -> tuple[dict[str, Any], bool]:
        schema = strip_keys(tool.input_schema)
        if not strict:
            return schema, False
        converted = strict_schema(schema)
        if converted is None:
            return schema, False
        return converted, True

    def resolve(self, name: str) -> HubTool:
        """Find a tool by ``server.tool`` or by its exported ``server__tool`` name.

        Raises:
            ToolNotFound: no ready server has such a tool.
        """
        found = self._by_qualified.get(name) or self._tools.get(name)
        if found is None:
            raise ToolNotFound(name, list(self._by_qualified))
        return found

    # ----------------------------------------------------------------- calls

    async def call(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,  # noqa: ASYNC109 (a per-call limit is API)
        progress_callback: Any = None,
        raise_on_error: bool = False,
    ) -> types.CallToolResult:
        """Call a tool on the server that owns it; the call is charged to the current session.

        Args:
            name: ``server.tool`` or the exported ``server__tool``.
            arguments: the tool's arguments.
            timeout: seconds before :class:`ToolTimeout`; left out, the server's
                ``callTimeout`` (60 s unless the config says otherwise); ``None``: no limit.
                It bounds each request to the server (an interceptor's retry gets its own).
            progress_callback: ``async (progress, total, message)``, for progress notifications.
            raise_on_error: raise :class:`ToolError` when the tool answers with ``isError``
                instead of returning that result.

        Returns:
            The SDK's ``CallToolResult``.

        Raises:
            ToolNotFound: no such tool. (Its server may be restarting: tools of a server that
                is not ready are not listed.)
            ServerCrashed: the server died while the call was in flight (it is restarted).
            ServerUnavailable: the server is failed or stopped.
            ToolTimeout: the timeout passed; the call was cancelled on the server.
            ToolRefused: an interceptor refused the call.
            ToolError: a JSON-RPC error, or an ``isError`` result with ``raise_on_error``.

        On cancellation the server is sent a cancel notification; its session stays up.
        """
        self._require_open()
        tool = self._lookup(name)
        server = self._servers[tool.server]
        args = _arguments_of(name, arguments, "call")
        limit = server.config.call_timeout if timeout is DEFAULT else timeout
        assert not isinstance(limit, _Default)
        # async with: the budget reservation, settle and store write of the tool call run
        # through the tracker's async faces, off the event loop thread.
        async with track_call(
            kind="tool", provider="mcp", model=tool.qualified, request=args
        ) as call:
            info = ToolCall(tool.server, tool.name, tool.qualified, dict(args))

            async def send(arguments: Mapping[str, Any] | None = None) -> types.CallToolResult:
                if arguments is not None:
                    info.arguments = _arguments_of(name, arguments, "call")
                sent = info.arguments
                info.attempt += 1
                return await server.request(
                    tool.qualified,
                    lambda session: session.call_tool(
                        tool.name, sent, progress_callback=progress_callback
                    ),
                    limit,
                )

            proceed: Proceed = send
            for interceptor in reversed(self._interceptors):
                proceed = _bind(interceptor, info, proceed)
            result = await proceed(None)
            if not isinstance(result, types.CallToolResult):
                raise UsageError(
                    f"an interceptor returned {type(result).__name__} for {tool.qualified!r}; "
                    "it must return the CallToolResult of proceed(...) or one of its own"
                )
            text = result_text(result)
            if result.is_error:
                error = ToolError(tool.qualified, text, result=result)
                await call.afail(error, response=text)
                if raise_on_error:
                    raise error
            else:
                await call.afinish(response=text)
        return result

    async def read_resource(
        self,
        uri: str,
        *,
        server: str | None = None,
        timeout: float | _Default | None = DEFAULT,  # noqa: ASYNC109 (a per-call limit is API)
    ) -> types.ReadResourceResult:
        """Read a resource by URI from the server that lists it, whose resource template it
        fits, or ``server``.

        Raises:
            ToolNotFound: no ready server lists that URI or has a template it fits (or
                several templates of different servers fit), and ``server`` was not given.
            ServerCrashed, ServerUnavailable, ToolTimeout, ToolError: as for :meth:`call`.
        """
        self._require_open()
        owner = self.server(server) if server is not None else self._resource_owner(uri)
        limit = owner.config.call_timeout if timeout is DEFAULT else timeout
        assert not isinstance(limit, _Default)
        result: types.ReadResourceResult = await owner.request(
            uri, lambda session: session.read_resource(uri), limit
        )
        return result

    async def get_prompt(
        self,
        name: str,
        arguments: Mapping[str, str] | None = None,
        *,
        timeout: float | _Default | None = DEFAULT,  # noqa: ASYNC109 (a per-call limit is API)
    ) -> types.GetPromptResult:
        """Get a prompt by ``server.prompt`` name (the server's key may contain dots).

        Raises:
            ToolNotFound: no such server or prompt.
            ServerCrashed, ServerUnavailable, ToolTimeout, ToolError: as for :meth:`call`.
        """
        self._require_open()
        split = split_qualified(name, self._servers)
        if split is None:
            raise ToolNotFound(name, [n for n, _ in self.prompts()], kind="prompt")
        owner, prompt = self._servers[split[0]], split[1]
        if not any(p.name == prompt for p in owner.prompts):
            raise ToolNotFound(name, [n for n, _ in self.prompts()], kind="prompt")
        args = _arguments_of(name, arguments, "get_prompt")
        limit = owner.config.call_timeout if timeout is DEFAULT else timeout
        assert not isinstance(limit, _Default)
        result: types.GetPromptResult = await owner.request(
            name, lambda session: session.get_prompt(prompt, args), limit
        )
        return result

    async def dispatch(
        self,
        tool_call: Any,
        *,
        timeout: float | _Default | None = DEFAULT,  # noqa: ASYNC109 (a per-call limit is API)
    ) -> ToolCallResult:
        """Run a model's tool call and return the answer to send back.

        Accepts an OpenAI Chat Completions tool call (object or dict with ``function.name``
        and JSON ``function.arguments``), an OpenAI Responses ``function_call`` item, or an
        Anthropic ``tool_use`` block (object or dict with ``name`` and ``input``).

        Args:
            tool_call: the model's tool call.
            timeout: per-call timeout, as for :meth:`call`.

        Returns:
            A :class:`ToolCallResult` whose ``format`` is the call's shape, so
            ``to_message()`` (or ``to_openai()``) answers a Responses ``function_call`` with
            a ``function_call_output`` item. Failures a model can react to (unknown tool,
            bad arguments, tool errors, refusals, timeouts, a crashed or unavailable server)
            come back as ``is_error=True`` with the reason as text rather than as exceptions.
            ``null`` for an optional argument (what strict mode makes a model send for "not
            given") is dropped before the call.

        Raises:
            ConfigError: ``tool_call`` has none of the known shapes.

        Cancellation propagates (the server is told to cancel the call).
        """
        call_id, name, raw_args, fmt = _parse_tool_call(tool_call)
        try:
            arguments = _parse_arguments(raw_args)
        except ValueError as exc:
            return ToolCallResult(call_id, name, f"invalid arguments: {exc}", True, format=fmt)
        problem = _unsendable(arguments, "arguments")
        if problem is not None:  # e.g. a "\udcff" escape in the model's JSON
            return ToolCallResult(call_id, name, f"invalid arguments: {problem}", True, format=fmt)
        found = self._by_qualified.get(name) or self._tools.get(name)
        if found is not None:
            arguments = _drop_optional_nulls(found.input_schema, arguments)
        try:
            result = await self.call(name, arguments, timeout=timeout)
        except MCPHubError as exc:
            return ToolCallResult(call_id, name, str(exc), True, format=fmt)
        return ToolCallResult(
            call_id, name, result_text(result), result.is_error, result, format=fmt
        )

    # ----------------------------------------------------------------- naming

    def _lookup(self, name: str) -> HubTool:
        try:
            return self.resolve(name)
        except ToolNotFound:
            # A known server that is restarting has no listed tools for a moment: say so
            # rather than "no such tool".
            split = split_qualified(name, self._servers)
            candidates = [split[0]] if split is not None else []
            candidates.append(name.partition(SEPARATOR)[0])
            for candidate in candidates:
                server = self._servers.get(candidate)
                if server is not None and server.state is not ServerState.READY:
                    raise ServerUnavailable(
                        candidate, str(server.state), server.status().last_error
                    ) from None
            raise

    def _resource_owner(self, uri: str) -> ManagedServer:
        for server in self._servers.values():
            if any(str(r.uri) == uri for r in server.resources):
                return server
        # Not listed: made from a template? The server whose template it fits serves it.
        fitting = [s for s in self._servers.values() if s.matches_template(uri)]
        if len(fitting) == 1:
            return fitting[0]
        if len(fitting) > 1:
            names = ", ".join(s.name for s in fitting)
            raise ToolNotFound(
                uri,
                kind="resource",
                detail=f"the resource {uri!r} fits templates of several servers ({names}); "
                "pass server= to say which one",
            )
        # Not listed (yet) and no template: if one server serves resources at all, it is the
        # only candidate.
        serving = [s for s in self._servers.values() if s.serves_resources]
        if len(serving) == 1:
            return serving[0]
        raise ToolNotFound(uri, [str(r.uri) for _, r in self.resources()], kind="resource")

    def _reindex(self) -> None:
        """Rebuild both name maps from every server's listing, in a stable order."""
        by_exported: dict[str, HubTool] = {}
        by_qualified: dict[str, HubTool] = {}
        for server_name, server in self._servers.items():
            for tool in server.tools:
                qualified = f"{server_name}.{tool.name}"
                wanted = export_name(server_name, tool.name)
                exported = wanted
                if exported in by_exported:
                    # Stable whatever the order: a hash of the qualified name, not a counter.
                    exported = hashed_name(wanted, qualified)
                    key = (qualified, exported)
                    if key not in self._warned:  # once, not on every re-list
                        self._warned.add(key)
                        logger.warning(
                            "MCP tool %r exported as %r: its sanitised name %r is taken by %r",
                            qualified,
                            exported,
                            wanted,
                            by_exported[wanted].qualified,
                        )
                entry = HubTool(server_name, tool.name, qualified, exported, tool)
                by_exported[exported] = entry
                by_qualified[qualified] = entry
        self._tools = by_exported
        self._by_qualified = by_qualified


def split_qualified(name: str, servers: Collection[str]) -> tuple[str, str] | None:
    """Split ``server.rest`` at the longest server key that prefixes it (keys may hold dots).

    Returns:
        ``(server, rest)``, or ``None`` when no key fits.
    """
    best: str | None = None
    for server in servers:
        if name.startswith(f"{server}.") and (best is None or len(server) > len(best)):
            best = server
    if best is None:
        return None
    return best, name[len(best) + 1 :]


def _bind(interceptor: Interceptor, info: ToolCall, inner: Proceed) -> Proceed:
    async def proceed(arguments: Mapping[str, Any] | None = None) -> types.CallToolResult:
        if arguments is not None:
            info.arguments = _arguments_of(info.qualified, arguments, "call")
        return await interceptor(info, inner)

    return proceed


def _drop_optional_nulls(schema: Mapping[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return arguments
    required = set(schema.get("required") or ())
    out = {}
    for key, value in arguments.items():
        prop = properties.get(key)
        if value is None and key not in required and isinstance(prop, Mapping):
            kind = prop.get("type")
            if kind != "null" and not (isinstance(kind, list) and "null" in kind):
                continue  # strict mode's "not given"
        out[key] = value
    return out


def result_text(result: types.CallToolResult) -> str:
    """Flatten a tool result to text for a model: text blocks joined, others summarised."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            inner = block.resource
            text = getattr(inner, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {inner.uri}]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link {block.uri}]")
        else:
            mime = getattr(block, "mime_type", None)
            parts.append(f"[{block.type}{f' {mime}' if mime else ''}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _parse_tool_call(tool_call: Any) -> tuple[str | None, str, Any, ToolCallFormat]:
    function = _get(tool_call, "function")
    if function is not None:  # OpenAI Chat Completions
        return (
            _get(tool_call, "id"),
            str(_get(function, "name")),
            _get(function, "arguments"),
            "chat",
        )
    kind = _get(tool_call, "type")
    name = _get(tool_call, "name")
    if name is None:
        raise ConfigError(
            "not a tool call: expected an OpenAI tool call (function.name/arguments), an OpenAI "
            "Responses function_call or an Anthropic tool_use block (name/input)"
        )
    if kind == "function_call":  # OpenAI Responses
        return (
            _get(tool_call, "call_id") or _get(tool_call, "id"),
            str(name),
            _get(tool_call, "arguments"),
            "responses",
        )
    return _get(tool_call, "id"), str(name), _get(tool_call, "input"), "anthropic"


def _arguments_of(name: str, arguments: Any, method: str) -> dict[str, Any]:
    if arguments is None:
        return {}
    if not isinstance(arguments, Mapping):
        raise ConfigError(
            f"hub.{method}({name!r}, ...): arguments must be a mapping of argument names to "
            f"values, not {type(arguments).__name__}; pass e.g. {{'path': 'README.md'}} "
            "(for a model's JSON string of arguments use hub.dispatch(tool_call))"
        )
    args = dict(arguments)
    problem = _unsendable(args, "arguments")
    if problem is not None:
        raise ConfigError(
            f"hub.{method}({name!r}, ...): {problem}; MCP sends arguments as JSON text, so fix "
            "that value before calling (nothing was sent, the server is untouched)"
        )
    return args


def _unsendable(value: Any, where: str, depth: int = 0) -> str | None:
    """Why ``value`` cannot go out as JSON-RPC (None if it can), naming the place in it.

    A lone surrogate (what ``surrogateescape`` makes of invalid UTF-8) or a NaN would break the
    encoding inside the server's stream and take innocent calls down with it; found here, they
    fail this call alone.
    """
    if depth > 200:
        return f"{where} is nested too deeply"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{where} contains {value[exc.start]!r}, which is not valid Unicode text"
        return None
    if isinstance(value, bool | int | None):
        return None
    if isinstance(value, float):
        return None if value == value and value not in (_INF, -_INF) else f"{where} is {value}"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a key {key!r} that is not a string"
            found = _unsendable(key, f"{where} key {key!r}", depth + 1) or _unsendable(
                item, f"{where}[{key!r}]", depth + 1
            )
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _unsendable(item, f"{where}[{i}]", depth + 1)
            if found:
                return found
        return None
    try:  # anything else (dates, models, ...) as the SDK itself would serialise it
        pydantic_core.to_json(value)
    except Exception as exc:
        return f"{where} cannot be written as JSON ({type(value).__name__}: {exc})"
    return None


_INF = float("inf")


def _parse_arguments(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a JSON object, got {type(raw).__name__}")
    return dict(raw)
