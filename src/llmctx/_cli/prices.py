"""``llmctx prices MODEL``: what a model costs per million tokens, and where that comes from."""

from __future__ import annotations

import difflib
import json
from decimal import Decimal
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._money import format_usd
from .._pricing import ModelPrice, known_models, lookup_price
from .._usage import Usage

_EXAMPLE = Usage(input_tokens=1_000, output_tokens=1_000, requests=1)


def _tier_label(kind: str) -> str:
    return kind.replace("_", " ").capitalize()


def _as_json(price: ModelPrice, example: Decimal) -> dict[str, Any]:
    def num(value: Decimal | None) -> str | None:
        return None if value is None else format(value.normalize(), "f")

    return {
        "model": price.model,
        "name": price.name,
        "provider": price.provider,
        "source": price.source,
        "snapshot": price.snapshot,
        "per_mtok_usd": {
            "input": num(price.input_per_mtok),
            "output": num(price.output_per_mtok),
            "cache_read": num(price.cache_read_per_mtok),
            "cache_write": num(price.cache_write_per_mtok),
        },
        "tiers": [
            {
                "kind": t.kind,
                "above_input_tokens": t.above_input_tokens,
                "per_mtok_usd": num(t.per_mtok),
            }
            for t in price.tiers
        ],
        "other_prices": list(price.other_prices),
        "note": price.note,
        "example": {
            "input_tokens": _EXAMPLE.input_tokens,
            "output_tokens": _EXAMPLE.output_tokens,
            "cost_usd": num(example),
        },
    }


def _table(price: ModelPrice, example: Decimal) -> Table:
    title = price.model if not price.provider else f"{price.model} ({price.provider})"
    if price.name and price.name.lower() != price.model.lower():
        title += f" - {price.name}"
    table = Table(title=Text(title), show_header=True, header_style="bold")
    table.add_column("Tokens")
    table.add_column("USD per million", justify="right")
    table.add_row("Input", format_usd(price.input_per_mtok))
    table.add_row("Output", format_usd(price.output_per_mtok))
    for label, rate in (
        ("Cache read", price.cache_read_per_mtok),
        ("Cache write", price.cache_write_per_mtok),
    ):
        table.add_row(label, "input rate" if rate is None else format_usd(rate))
    for tier in price.tiers:
        label = f"{_tier_label(tier.kind)}, prompts over {tier.above_input_tokens:,} tokens"
        table.add_row(Text(label), format_usd(tier.per_mtok))
    return table


def prices(
    model: str = typer.Argument(..., help="Model name as the provider returns it, e.g. gpt-4o"),
    provider: str | None = typer.Option(
        None, "--provider", "-p", help="Provider id: openai, anthropic, google, ..."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the price per million tokens of MODEL and where it comes from.

    Exits with status 1, suggesting close model names, when no price is known.
    """
    price = lookup_price(model, provider)
    if price is None:
        _unknown(model, provider)
        raise typer.Exit(1)
    example = price.cost(_EXAMPLE)
    if as_json:
        typer.echo(json.dumps(_as_json(price, example), indent=2))
        return
    console = Console(soft_wrap=True)
    console.print(_table(price, example))
    source = "override (llmctx.set_price)" if price.source == "override" else price.snapshot
    console.print(f"Source: {source}", highlight=False)
    if price.other_prices:
        console.print(
            f"Also priced (not tracked): {'; '.join(price.other_prices)}", highlight=False
        )
    if price.note:
        console.print(
            f"Note: {price.note}; costs come from genai_prices.calc_price", highlight=False
        )
    console.print(
        f"Example: {_EXAMPLE.input_tokens:,} input + {_EXAMPLE.output_tokens:,} output tokens "
        f"cost {format_usd(example)}",
        highlight=False,
    )


def _unknown(model: str, provider: str | None) -> None:
    err = Console(stderr=True, soft_wrap=True)
    where = f" from provider {provider!r}" if provider else ""
    err.print(f"No price known for model {model!r}{where}.", highlight=False, markup=False)
    try:
        candidates = known_models(provider)
    except Exception:  # a broken genai-prices install must not hide the real message
        candidates = []
    if provider and not candidates:
        err.print(
            f"genai-prices knows no provider {provider!r}; try without --provider.",
            highlight=False,
            markup=False,
        )
    close = difflib.get_close_matches(model.strip().lower(), candidates, n=5, cutoff=0.6)
    if close:
        err.print(f"Did you mean: {', '.join(close)}?", highlight=False, markup=False)
    err.print(
        "To price it, call in your program: "
        f"llmctx.set_price({model!r}, input_per_mtok=..., output_per_mtok=...)",
        highlight=False,
        markup=False,
    )
