"""The MCP hub: many servers from one config, started together, supervised, name-spaced.

::

    async with Hub.from_config("mcp.json", policy="best_effort") as hub:
        hub.status()                                  # state and timings per server
        await hub.call("files.read_file", {"path": "README.md"})
        tools = hub.openai_tools()                    # or hub.anthropic_tools()
        reply = await hub.dispatch(tool_call)         # a model's tool call, routed to hub.call

Each server is owned by one task of the hub's task group (see :mod:`llmctx.mcp.server`).
Tools are named ``server.tool`` for people and ``server__tool`` (sanitised to
``^[a-zA-Z0-9_-]{1,64}$``, the rule OpenAI and Anthropic apply) for models; both forms are
accepted by :meth:`Hub.call`. Every tool call is charged to the current llmctx session as a
call of kind ``tool`` (latency, status, error; no token cost).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import mcp_types as types
import pydantic_core

from .._charge import track_call
from .._exceptions import ConfigError, UsageError
from ._errors import MCPHubError, ServerStartError, ServerUnavailable, ToolError, ToolNotFound
from .config import HubConfig, load_config
from .server import ManagedServer, ServerState, ServerStatus, SessionCallbacks

__all__ = ["Hub", "HubTool", "ToolCallResult", "result_text"]

logger = logging.getLogger("llmctx.mcp")

Policy = Literal["strict", "best_effort"]

_SEPARATOR = "__"
_MAX_NAME = 64
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


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
    """

    id: str | None
    name: str
    content: str
    is_error: bool
    result: types.CallToolResult | None = None

    def to_openai(self) -> dict[str, Any]:
        """Return a Chat Completions ``tool`` message answering the call."""
        return {"role": "tool", "tool_call_id": self.id, "content": self.content}

    def to_anthropic(self) -> dict[str, Any]:
        """Return an Anthropic ``tool_result`` content block answering the call."""
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": self.id,
            "content": self.content,
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
        sampling_callback, elicitation_callback, list_roots_callback, logging_callback,
        message_handler: passed to every server's ``ClientSession`` (see the SDK).
    """

    def __init__(
        self,
        config: HubConfig,
        *,
        policy: Policy = "strict",
        sampling_callback: Any = None,
        elicitation_callback: Any = None,
        list_roots_callback: Any = None,
        logging_callback: Any = None,
        message_handler: Any = None,
    ) -> None:
        if policy not in ("strict", "best_effort"):
            raise ConfigError(f"policy must be 'strict' or 'best_effort', not {policy!r}")
        self.config = config
        self.policy: Policy = policy
        callbacks = SessionCallbacks(
            sampling_callback=sampling_callback,
            elicitation_callback=elicitation_callback,
            list_roots_callback=list_roots_callback,
            logging_callback=logging_callback,
            message_handler=message_handler,
        )
        self._servers: dict[str, ManagedServer] = {
            s.name: ManagedServer(s, callbacks=callbacks, on_listing_changed=self._reindex)
            for s in config.enabled()
        }
        self._tools: dict[str, HubTool] = {}  # by exported name
        self._by_qualified: dict[str, HubTool] = {}
        self._stack: AsyncExitStack | None = None
        self._state: Literal["unopened", "opened", "closed"] = "unopened"

    @classmethod
    def from_config(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any] | HubConfig,
        *,
        profile: str | None = None,
        policy: Policy = "strict",
        environ: Mapping[str, str] | None = None,
        **callbacks: Any,
    ) -> Hub:
        """Build a hub from a config file, a parsed mapping or a :class:`HubConfig`.

        Args:
            source: the path of an ``mcpServers`` JSON file, its parsed content, or a config.
            profile: the profile to apply (``None``: every server as written).
            policy: ``"strict"`` (any start failure fails the hub) or ``"best_effort"``.
            environ: where ``${VAR}`` is looked up (default ``os.environ``).
            **callbacks: session callbacks, see :class:`Hub`.

        Returns:
            An unopened hub; nothing runs until ``async with``.

        Raises:
            MCPConfigError: the config is invalid (the message names the server and field).
        """
        config = (
            source
            if isinstance(source, HubConfig)
            else load_config(source, profile=profile, environ=environ)
        )
        return cls(config, policy=policy, **callbacks)

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
        async with anyio.create_task_group() as tg:
            try:
                async with anyio.create_task_group() as starters:
                    for server in self._servers.values():
                        # tg.start from several starter tasks: concurrent startup, while each
                        # owner task lives in the hub's group, not in the starter's.
                        starters.start_soon(tg.start, server.run)
                self._check_policy()
                yield
            finally:
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
            raise ToolNotFound(name, list(self._servers)) from None

    def tools(self) -> list[HubTool]:
        """Return the tools of every ready server, in config then server order (never blocks)."""
        return list(self._tools.values())

    def resources(self) -> list[tuple[str, types.Resource]]:
        """Return ``(server, resource)`` for every resource of every ready server."""
        return [(name, r) for name, s in self._servers.items() for r in s.resources]

    def prompts(self) -> list[tuple[str, types.Prompt]]:
        """Return ``(server.prompt, prompt)`` for every prompt of every ready server."""
        return [(f"{name}.{p.name}", p) for name, s in self._servers.items() for p in s.prompts]

    def openai_tools(self) -> list[dict[str, Any]]:
        """Return the tools in the OpenAI Chat Completions ``tools=`` format."""
        return [
            {
                "type": "function",
                "function": {
                    "name": t.exported,
                    "description": t.description,
                    "parameters": t.input_schema,
                },
            }
            for t in self._tools.values()
        ]

    def anthropic_tools(self) -> list[dict[str, Any]]:
        """Return the tools in the Anthropic Messages ``tools=`` format."""
        return [
            {"name": t.exported, "description": t.description, "input_schema": t.input_schema}
            for t in self._tools.values()
        ]

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
        timeout: float | None = None,  # noqa: ASYNC109 (a per-call limit is API)
        progress_callback: Any = None,
        raise_on_error: bool = False,
    ) -> types.CallToolResult:
        """Call a tool on the server that owns it; the call is charged to the current session.

        Args:
            name: ``server.tool`` or the exported ``server__tool``.
            arguments: the tool's arguments.
            timeout: seconds before :class:`ToolTimeout` (default: the server's
                ``callTimeout``, else no limit).
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
            ToolError: a JSON-RPC error, or an ``isError`` result with ``raise_on_error``.

        On cancellation the server is sent a cancel notification; its session stays up.
        """
        self._require_open()
        tool = self._lookup(name)
        server = self._servers[tool.server]
        args = _arguments_of(name, arguments, "call")
        limit = timeout if timeout is not None else server.config.call_timeout
        with track_call(kind="tool", provider="mcp", model=tool.qualified, request=args) as call:
            result = await server.request(
                tool.qualified,
                lambda session: session.call_tool(
                    tool.name, args, progress_callback=progress_callback
                ),
                limit,
            )
            text = result_text(result)
            if result.is_error:
                error = ToolError(tool.qualified, text, result=result)
                call.fail(error, response=text)
                if raise_on_error:
                    raise error
            else:
                call.finish(response=text)
        return result

    async def read_resource(
        self,
        uri: str,
        *,
        server: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (a per-call limit is API)
    ) -> types.ReadResourceResult:
        """Read a resource by URI from the server that lists it (or from ``server``).

        Raises:
            ToolNotFound: no ready server lists that URI and ``server`` was not given.
            ServerCrashed, ServerUnavailable, ToolTimeout, ToolError: as for :meth:`call`.
        """
        self._require_open()
        owner = self.server(server) if server is not None else self._resource_owner(uri)
        result: types.ReadResourceResult = await owner.request(
            uri, lambda session: session.read_resource(uri), timeout
        )
        return result

    async def get_prompt(
        self,
        name: str,
        arguments: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a per-call limit is API)
    ) -> types.GetPromptResult:
        """Get a prompt by ``server.prompt`` name.

        Raises:
            ToolNotFound: no such server or prompt.
            ServerCrashed, ServerUnavailable, ToolTimeout, ToolError: as for :meth:`call`.
        """
        self._require_open()
        server_name, _, prompt = name.partition(".")
        owner = self.server(server_name)
        if not any(p.name == prompt for p in owner.prompts):
            raise ToolNotFound(name, [n for n, _ in self.prompts()])
        args = _arguments_of(name, arguments, "get_prompt")
        result: types.GetPromptResult = await owner.request(
            name, lambda session: session.get_prompt(prompt, args), timeout
        )
        return result

    async def dispatch(self, tool_call: Any, *, timeout: float | None = None) -> ToolCallResult:  # noqa: ASYNC109 (a per-call limit is API)
        """Run a model's tool call and return the answer to send back.

        Accepts an OpenAI Chat Completions tool call (object or dict with ``function.name``
        and JSON ``function.arguments``), an OpenAI Responses ``function_call`` item, or an
        Anthropic ``tool_use`` block (object or dict with ``name`` and ``input``).

        Args:
            tool_call: the model's tool call.
            timeout: per-call timeout, as for :meth:`call`.

        Returns:
            A :class:`ToolCallResult`. Failures a model can react to (unknown tool, bad
            arguments, tool errors, timeouts, a crashed or unavailable server) come back as
            ``is_error=True`` with the reason as text rather than as exceptions.

        Raises:
            ConfigError: ``tool_call`` has none of the known shapes.

        Cancellation propagates (the server is told to cancel the call).
        """
        call_id, name, raw_args = _parse_tool_call(tool_call)
        try:
            arguments = _parse_arguments(raw_args)
        except ValueError as exc:
            return ToolCallResult(call_id, name, f"invalid arguments: {exc}", True)
        problem = _unsendable(arguments, "arguments")
        if problem is not None:  # e.g. a "\udcff" escape in the model's JSON
            return ToolCallResult(call_id, name, f"invalid arguments: {problem}", True)
        try:
            result = await self.call(name, arguments, timeout=timeout)
        except MCPHubError as exc:
            return ToolCallResult(call_id, name, str(exc), True)
        return ToolCallResult(call_id, name, result_text(result), result.is_error, result)

    # ----------------------------------------------------------------- naming

    def _lookup(self, name: str) -> HubTool:
        try:
            return self.resolve(name)
        except ToolNotFound:
            # A known server that is restarting has no listed tools for a moment: say so
            # rather than "no such tool".
            server_name = name.partition(".")[0]
            for candidate in (server_name, name.partition(_SEPARATOR)[0]):
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
        # Not listed (yet, or made from a template): if one server serves resources at all,
        # it is the only candidate.
        serving = [s for s in self._servers.values() if s.serves_resources]
        if len(serving) == 1:
            return serving[0]
        raise ToolNotFound(uri, [str(r.uri) for _, r in self.resources()])

    def _reindex(self) -> None:
        """Rebuild both name maps from every server's listing, in a stable order."""
        by_exported: dict[str, HubTool] = {}
        by_qualified: dict[str, HubTool] = {}
        for server_name, server in self._servers.items():
            for tool in server.tools:
                qualified = f"{server_name}.{tool.name}"
                exported = _unique(_export_name(server_name, tool.name), by_exported)
                if exported != _export_name(server_name, tool.name):
                    logger.warning(
                        "MCP tool %r exported as %r: its sanitised name collides with %r",
                        qualified,
                        exported,
                        by_exported[_export_name(server_name, tool.name)].qualified,
                    )
                entry = HubTool(server_name, tool.name, qualified, exported, tool)
                by_exported[exported] = entry
                by_qualified[qualified] = entry
        self._tools = by_exported
        self._by_qualified = by_qualified


def _export_name(server: str, tool: str) -> str:
    name = f"{_UNSAFE.sub('_', server)}{_SEPARATOR}{_UNSAFE.sub('_', tool)}"
    return name[:_MAX_NAME]


def _unique(name: str, taken: Mapping[str, object]) -> str:
    """Collision policy: the first tool keeps the name, later ones get ``_2``, ``_3``, ..."""
    if name not in taken:
        return name
    n = 2
    while True:
        suffix = f"_{n}"
        candidate = name[: _MAX_NAME - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


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


def _parse_tool_call(tool_call: Any) -> tuple[str | None, str, Any]:
    function = _get(tool_call, "function")
    if function is not None:  # OpenAI Chat Completions
        return _get(tool_call, "id"), str(_get(function, "name")), _get(function, "arguments")
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
        )
    return _get(tool_call, "id"), str(name), _get(tool_call, "input")


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
