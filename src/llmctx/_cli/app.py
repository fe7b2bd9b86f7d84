"""The root typer app; each command group lives in a module of its own."""

from __future__ import annotations

import typer

from .. import __version__
from ._layout import PlainHelpCommand, PlainHelpGroup
from .budgets import budgets_app
from .demo import demo
from .info import info
from .mcp import mcp_app
from .prices import prices_app
from .sessions import sessions_app
from .ui import ui
from .workshop import workshop

app = typer.Typer(
    name="llmctx",
    help="Context managers for LLM applications: sessions, budgets, recordings, MCP fleets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    cls=PlainHelpGroup,
    pretty_exceptions_enable=False,
)
app.add_typer(sessions_app, name="sessions")
app.add_typer(mcp_app, name="mcp")
app.add_typer(prices_app, name="prices")
app.add_typer(budgets_app, name="budgets")
app.command("demo", cls=PlainHelpCommand)(demo)
app.command("info", cls=PlainHelpCommand)(info)
app.command("workshop", cls=PlainHelpCommand)(workshop)
app.command("ui", cls=PlainHelpCommand)(ui)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """llmctx: every resource of an LLM application inside a context manager."""


def main() -> None:
    """Console-script entry point."""
    app()
