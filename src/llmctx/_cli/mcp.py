"""``llmctx mcp check|tools|call``: start the servers of a config, list their tools, call one."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..mcp import (
    Hub,
    HubConfig,
    MCPConfigError,
    MCPHubError,
    ServerState,
    ToolTimeout,
    load_config,
    result_text,
)
from ..mcp.config import server_names
from ..mcp.hub import split_qualified
from ._layout import Column, PlainHelpCommand, PlainHelpGroup, print_fitted

mcp_app = typer.Typer(
    help="Start, inspect and call MCP servers from a config.",
    no_args_is_help=True,
    cls=PlainHelpGroup,
)

_T = TypeVar("_T")

_STATE_STYLE = {
    ServerState.READY: "green",
    ServerState.FAILED: "red",
    ServerState.UNHEALTHY: "red",
    ServerState.RESTARTING: "yellow",
    ServerState.STARTING: "yellow",
    ServerState.STOPPED: "dim",
}

_CONFIG = typer.Argument(..., help="An mcpServers JSON file (Claude Desktop format).")
_PROFILE = typer.Option(None, "--profile", "-p", help="Apply this profile of the config.")


def _run(
    config: Path | HubConfig,
    profile: str | None,
    body: Callable[[Hub], Awaitable[_T]],
    *,
    strict: bool,
) -> _T:
    """Open a hub on ``config`` and run ``body`` in it; config errors exit with status 2."""
    err = Console(stderr=True)
    try:
        hub = Hub.from_config(config, profile=profile, policy="strict" if strict else "best_effort")
    except MCPConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    async def main() -> _T:
        async with hub:
            return await body(hub)

    try:
        return anyio.run(main)
    except ToolTimeout as exc:
        # The library's message names timeout= and callTimeout; here the knob is the flag.
        err.print(
            f"[red]error:[/] MCP call {escape(repr(exc.name))} did not answer within "
            f"{exc.timeout:g}s (it was cancelled on the server). If the tool is just slow, "
            "pass a larger --timeout (or raise callTimeout in the config)"
        )
        raise typer.Exit(1) from None
    except MCPHubError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


@mcp_app.command("check", cls=PlainHelpCommand)
def check(
    config: Path = _CONFIG,
    profile: str | None = _PROFILE,
    best_effort: bool = typer.Option(
        False, "--best-effort", help="Exit 0 even if some servers fail to start."
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print a JSON list, one object per server: name, transport, state, "
        "startup_seconds, tool_count, restarts, crashes, hangs, last_ping_seconds, "
        "last_error, stderr (its last lines).",
    ),
) -> None:
    """Start every server, print state, start time and tool count; exit 1 if any failed.

    A failed server's last stderr lines are printed under the table (npm's "404 Not Found",
    a Python traceback): they usually say why.
    """

    async def body(hub: Hub) -> bool:
        failed = any(
            s.state in (ServerState.FAILED, ServerState.UNHEALTHY) for s in hub.status().values()
        )
        if as_json:
            typer.echo(
                json.dumps(
                    [
                        {
                            "name": st.name,
                            "transport": st.transport,
                            "state": str(st.state),
                            "startup_seconds": st.startup_seconds,
                            "tool_count": st.tool_count,
                            "restarts": st.restarts,
                            "crashes": st.crashes,
                            "hangs": st.hangs,
                            "last_ping_seconds": st.last_ping_seconds,
                            "last_error": st.last_error,
                            "stderr": list(hub.server(st.name).stderr.tail(10)),
                        }
                        for st in hub.status().values()
                    ],
                    indent=2,
                )
            )
            return failed
        table = Table(title=f"MCP servers in {config}")
        for column in ("server", "transport", "state", "start", "tools", "error"):
            table.add_column(column, justify="right" if column in ("start", "tools") else "left")
        for status in hub.status().values():
            start = f"{status.startup_seconds:.2f}s" if status.startup_seconds is not None else "-"
            style = _STATE_STYLE.get(status.state, "")
            table.add_row(
                escape(status.name),
                status.transport,
                f"[{style}]{status.state}[/]",
                start,
                str(status.tool_count),
                escape(status.last_error or ""),
            )
        console = Console()
        console.print(table)
        for status in hub.status().values():
            if status.state is ServerState.READY:
                continue
            tail = hub.server(status.name).stderr.tail(10)
            if tail:
                console.print(Text(f"{status.name}: last stderr lines", style="bold"))
                for line in tail:
                    console.print(Text(f"  {line}"))
        return failed

    # Always best effort inside, so the table shows every server; the exit status applies
    # the policy the user asked for.
    failed = _run(config, profile, body, strict=False)
    if failed and not best_effort:
        raise typer.Exit(1)


@mcp_app.command("tools", cls=PlainHelpCommand)
def tools(
    config: Path = _CONFIG,
    profile: str | None = _PROFILE,
    fmt: str = typer.Option(
        "table",
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, openai or anthropic (the latter two as JSON).",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print a JSON list, one object per tool: server, name, qualified, exported, "
        "description, input_schema.",
    ),
) -> None:
    """List the tools of every server that started (name-spaced as server.tool)."""
    if fmt not in ("table", "openai", "anthropic"):
        raise typer.BadParameter("use table, openai or anthropic", param_hint="--format")

    async def body(hub: Hub) -> None:
        if as_json:
            typer.echo(
                json.dumps(
                    [
                        {
                            "server": t.server,
                            "name": t.name,
                            "qualified": t.qualified,
                            "exported": t.exported,
                            "description": t.description,
                            "input_schema": t.input_schema,
                        }
                        for t in hub.tools()
                    ],
                    indent=2,
                )
            )
            return
        if fmt == "openai":
            typer.echo(json.dumps(hub.openai_tools(), indent=2))
            return
        if fmt == "anthropic":
            typer.echo(json.dumps(hub.anthropic_tools(), indent=2))
            return
        rows: list[list[Text | str]] = []
        for tool in hub.tools():
            summary = tool.description.strip().splitlines()[0] if tool.description else ""
            rows.append([Text(tool.qualified), Text(tool.exported), Text(summary)])
        console = Console()
        console.print(Text(f"MCP tools in {config}", style="bold"))
        columns = [
            Column("tool"),
            Column("model name", drop=1),
            Column("description", free_text=True, min_width=20),
        ]
        print_fitted(console, columns, rows)

    _run(config, profile, body, strict=False)


@mcp_app.command("call", cls=PlainHelpCommand)
def call(
    config: Path = _CONFIG,
    tool: str = typer.Argument(..., help="server.tool (or server__tool)."),
    arguments: str = typer.Argument("{}", help="The arguments as a JSON object."),
    profile: str | None = _PROFILE,
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds before giving up."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Call one tool and print its result; exit 1 if the tool reports an error.

    A tool error goes to stderr, after "error: TOOL returned an error:" (with --json the
    result still goes to stdout, for scripts, and the exit status is 1).
    """
    try:
        args: Any = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc.msg}", param_hint="ARGUMENTS") from None
    if not isinstance(args, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="ARGUMENTS")
    server = _server_of(config, profile, tool)
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}

    async def body(hub: Hub) -> bool:
        result = await hub.call(tool, args, **options)
        if as_json:
            typer.echo(result.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        elif result.is_error:
            err = Console(stderr=True)
            err.print(f"[red]error:[/] {escape(tool)} returned an error:")
            err.print(Text(result_text(result)))
        else:
            typer.echo(result_text(result))
        return result.is_error

    # Only the named server needs to start: a broken neighbour must not block the call.
    hub_config = _only(config, profile, server)
    is_error = _run(hub_config, None, body, strict=True)
    if is_error:
        raise typer.Exit(1)


def _server_of(config: Path, profile: str | None, tool: str) -> str:
    """The server a ``server.tool`` (or ``server__tool``) names; server keys may hold dots."""
    try:
        names = server_names(config, profile=profile)
    except MCPConfigError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    split = split_qualified(tool, names)
    if split is not None:
        return split[0]
    prefix = tool.partition("__")[0]
    exported = [n for n in names if n.replace(".", "_") == prefix or n == prefix]
    return exported[0] if exported else tool.partition(".")[0]


def _only(config: Path, profile: str | None, server: str) -> HubConfig:
    try:
        names = server_names(config, profile=profile)
        if server not in names:
            Console(stderr=True).print(
                f"[red]error:[/] no server {escape(repr(server))} in {config}; "
                f"servers: {escape(', '.join(names))}"
            )
            raise typer.Exit(2)
        # Only that server is expanded: a neighbour's unset ${VAR} must not block the call.
        return load_config(config, profile=profile, servers=[server])
    except MCPConfigError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
