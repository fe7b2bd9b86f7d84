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

from ..mcp import Hub, HubConfig, MCPConfigError, MCPHubError, ServerState, load_config, result_text
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
) -> None:
    """Start every server, print state, start time and tool count; exit 1 if any failed."""

    async def body(hub: Hub) -> bool:
        table = Table(title=f"MCP servers in {config}")
        for column in ("server", "transport", "state", "start", "tools", "error"):
            table.add_column(column, justify="right" if column in ("start", "tools") else "left")
        failed = False
        for status in hub.status().values():
            failed = failed or status.state is ServerState.FAILED
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
        Console().print(table)
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
    """Call one tool and print its result; exit 1 if the tool reports an error."""
    try:
        args: Any = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc.msg}", param_hint="ARGUMENTS") from None
    if not isinstance(args, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="ARGUMENTS")
    server = tool.partition(".")[0] if "." in tool else tool.partition("__")[0]

    async def body(hub: Hub) -> bool:
        result = await hub.call(tool, args, timeout=timeout)
        if as_json:
            typer.echo(result.model_dump_json(by_alias=True, exclude_none=True, indent=2))
        else:
            typer.echo(result_text(result))
        return result.is_error

    # Only the named server needs to start: a broken neighbour must not block the call.
    hub_config = _only(config, profile, server)
    is_error = _run(hub_config, None, body, strict=True)
    if is_error:
        raise typer.Exit(1)


def _only(config: Path, profile: str | None, server: str) -> HubConfig:
    try:
        loaded = load_config(config, profile=profile)
    except MCPConfigError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if server not in loaded.servers:
        Console(stderr=True).print(
            f"[red]error:[/] no server {escape(server)!r} in {config}; "
            f"servers: {escape(', '.join(loaded.servers))}"
        )
        raise typer.Exit(2)
    return loaded.model_copy(update={"servers": {server: loaded.servers[server]}})
