"""``python -m llmctx.workshop [N ...]``: the same command as ``llmctx workshop``."""

from __future__ import annotations

import typer

from llmctx._cli.workshop import workshop

app = typer.Typer(
    name="python -m llmctx.workshop",
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.command()(workshop)

if __name__ == "__main__":
    app(prog_name="python -m llmctx.workshop")
