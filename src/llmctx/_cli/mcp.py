"""``llmctx mcp check|tools|call``."""

from __future__ import annotations

import typer

mcp_app = typer.Typer(help="Start, inspect and call MCP servers from a config.", no_args_is_help=True)
