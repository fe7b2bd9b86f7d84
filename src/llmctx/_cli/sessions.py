"""``llmctx sessions ls|show|export|rm``."""

from __future__ import annotations

import typer

sessions_app = typer.Typer(help="List, show, export and delete recorded sessions.", no_args_is_help=True)
