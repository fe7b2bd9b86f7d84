"""``llmctx prices MODEL``."""

from __future__ import annotations

import typer


def prices(model: str = typer.Argument(..., help="Model name, e.g. gpt-4o")) -> None:
    """Show the price per million tokens of MODEL."""
    raise typer.Exit(1)
