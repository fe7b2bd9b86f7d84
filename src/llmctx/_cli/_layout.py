"""How the CLI fits a terminal: tables that keep whole words, and help without type labels.

A pipe gets 80 columns (or ``$COLUMNS``), so everything here is written for 80 first. A table
never splits a word into pieces: every cell is ``no_wrap``; columns that cannot fit are
dropped, least useful first, and named in the caption; only free text (names, descriptions)
is shortened, with an ellipsis, and only after every optional column is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import typer.core
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer import _click  # typer >= 0.20 vendors its own click; its commands use this one

__all__ = [
    "Column",
    "PlainHelpCommand",
    "PlainHelpGroup",
    "fit_table",
    "plain_help",
    "print_fitted",
]

Cell = Text | str

_GAP = 3  # " │ " between two columns of a table with show_edge=False, pad_edge=False


@dataclass(frozen=True)
class Column:
    """One column of a table fitted by :func:`fit_table`.

    Args:
        header: the column title.
        drop: ``0`` keeps the column at any width; columns with a higher number are dropped
            first when the table does not fit (equal numbers are dropped together).
        justify: cell alignment.
        free_text: names and descriptions; shortened with an ellipsis (never below
            ``min_width``) when the kept columns leave too little room.
        min_width: the narrowest this column may get (free text only).
        style: rich style of every cell.
    """

    header: str
    drop: int = 0
    justify: Literal["left", "right"] = "left"
    free_text: bool = False
    min_width: int = 12
    style: str | None = None


def _width(cell: Cell) -> int:
    text = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in text.splitlines()), default=0)


def fit_table(
    width: int,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    **table_kwargs: Any,
) -> tuple[Table, list[str]]:
    """A borderless table of ``rows`` that fits ``width`` cells, and the headers it dropped.

    Args:
        width: the console width to fit.
        columns: the columns, in display order.
        rows: one cell per column in each row.
        table_kwargs: passed to :class:`rich.table.Table` (title, caption, ...).

    Returns:
        The table, and the headers of the columns left out to make it fit.
    """
    natural = [
        max([cell_len(c.header), *(_width(row[i]) for row in rows)]) for i, c in enumerate(columns)
    ]

    def needed(kept: list[int]) -> int:
        fixed = sum(natural[i] for i in kept if not columns[i].free_text)
        free = sum(min(natural[i], columns[i].min_width) for i in kept if columns[i].free_text)
        return fixed + free + _GAP * (len(kept) - 1)

    kept = list(range(len(columns)))
    for level in sorted({c.drop for c in columns if c.drop > 0}, reverse=True):
        if needed(kept) <= width:
            break
        kept = [i for i in kept if columns[i].drop != level]

    free_cols = [i for i in kept if columns[i].free_text]
    room = width - sum(natural[i] for i in kept if not columns[i].free_text)
    room -= _GAP * (len(kept) - 1)
    caps: dict[int, int] = {}
    # Share the room among free-text columns, the narrowest first, so a short one keeps its
    # full width and gives the rest to the long ones.
    for n, i in enumerate(sorted(free_cols, key=lambda i: natural[i])):
        share = room // (len(free_cols) - n)
        caps[i] = max(columns[i].min_width, min(natural[i], share))
        room -= caps[i]

    table = Table(show_edge=False, pad_edge=False, **table_kwargs)
    for i in kept:
        c = columns[i]
        table.add_column(
            c.header,
            justify=c.justify,
            style=c.style,
            no_wrap=True,
            overflow="ellipsis" if c.free_text else "fold",
            min_width=None if c.free_text else natural[i],
            max_width=caps.get(i),
        )
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    return table, [columns[i].header for i in range(len(columns)) if i not in kept]


def print_fitted(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    notes: Sequence[str] = (),
    **table_kwargs: Any,
) -> None:
    """Print ``rows`` fitted to ``console``; a caption names any dropped columns.

    Args:
        console: where to print; its width is the one fitted.
        columns: the columns, in display order.
        rows: one cell per column in each row.
        notes: caption lines to print under the table.
        table_kwargs: passed to :class:`rich.table.Table`.
    """
    table, dropped = fit_table(console.width, columns, rows, **table_kwargs)
    lines = list(notes)
    if dropped:
        lines.append(f"not shown at this width: {', '.join(dropped)} (--json has every field)")
    console.print(table)
    for line in lines:
        console.print(Text(line, style="dim"), highlight=False)


# -- help --------------------------------------------------------------------------------------


def _no_type(ctx: _click.Context) -> None:
    return None


def plain_help(params: Sequence[_click.Parameter]) -> None:
    """Drop typer's ``<bool>`` / ``<str>`` labels: flags show none, options a NAME.

    Args:
        params: the parameters of a command, including its ``--help``.
    """
    for param in params:
        if isinstance(param, typer.core.TyperOption) and (param.is_flag or param.count):
            param.metavar = ""
        elif isinstance(param, typer.core.TyperOption) and param.metavar is None:
            param.metavar = (param.name or "value").upper()
        elif isinstance(param, typer.core.TyperArgument):
            param.display_type_rich = _no_type  # type: ignore[method-assign]  # name says it


class PlainHelpCommand(typer.core.TyperCommand):
    """A typer command whose ``--help`` has no type labels (see :func:`plain_help`)."""

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Render help after replacing the type labels."""
        plain_help(self.get_params(ctx))
        super().format_help(ctx, formatter)


class PlainHelpGroup(typer.core.TyperGroup):
    """A typer group whose ``--help`` has no type labels (see :func:`plain_help`)."""

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """Render help after replacing the type labels."""
        plain_help(self.get_params(ctx))
        super().format_help(ctx, formatter)
