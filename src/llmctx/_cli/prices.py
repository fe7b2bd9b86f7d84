"""``llmctx prices``: what a model costs, where that price comes from, and the prices file.

``llmctx prices MODEL`` shows the price in force and every source it shadows (code, the prices
file, genai-prices, the bundled local model). ``llmctx prices set|rm`` edit the prices file
that every llmctx program reads; ``llmctx prices ls`` lists it.

``--json`` shapes (every money amount is a decimal string, US dollars; ``null`` when absent):

* ``prices MODEL [--tier T] [--at DATE] --json``: ``{"model", "name", "provider", "source",
  "origin", "snapshot", "per_mtok_usd": {"input", "output", "cache_read", "cache_write",
  "cache_write_1h", "reasoning"}, "tiers": [{"kind", "above_input_tokens", "per_mtok_usd"}],
  "unit_prices": [{"unit", "per", "usd", "charged", "text"}], "other_prices": [text],
  "service_tier": str | null, "service_tiers": [{"tier", "since", "per_mtok_usd"}],
  "history": [{"since", "tiered", "per_mtok_usd"}], "valid_from", "valid_until", "note",
  "example": {"input_tokens", "output_tokens", "cost_usd"}, "shadowed": [{"source", "origin",
  "provider", "per_mtok_usd"}], "prices_file": {"path", "chosen_by", "exists"} | null,
  "at": ISO time | null}`` (dates are ``YYYY-MM-DD`` UTC days).
* ``prices set --json`` / ``prices rm --json``: ``{"file", "model", "provider", "line",
  "per_mtok_usd", "in_force": bool}`` (``in_force``: programs read this file); with
  ``--tier``: ``{"file", "model", "tier", "since", "line", "per_mtok_usd", "in_force"}``.
* ``prices ls --json``: ``{"prices_file": ... | null, "entries": [{"model", "provider", "line",
  "per_mtok_usd", "service_tiers": [{"tier", "since", "line", "per_mtok_usd"}], "changes":
  [{"since", "line", "per_mtok_usd"}]}]}``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer import _click

from .. import _prices_file
from .._money import format_usd
from .._prices_file import FileEntry, PricesFile, PricesFileError
from .._pricing import (
    ModelPrice,
    Rates,
    known_models,
    local_price,
    price_at,
    price_sources,
    prices_file,
    reload_prices,
)
from .._usage import Usage
from ._layout import Column, PlainHelpCommand, PlainHelpGroup, print_fitted

__all__ = ["prices_app"]

_EXAMPLE = Usage(input_tokens=1_000, output_tokens=1_000, requests=1)
_LOCAL_PROVIDER = "llama-cpp"


class _PricesGroup(PlainHelpGroup):
    """``llmctx prices MODEL`` is ``llmctx prices show MODEL``; set, rm and ls are commands."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        """Route anything that is not a subcommand (or --help) to ``show``."""
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


prices_app = typer.Typer(
    help="What a model costs and where the price comes from; edit the prices file.\n\n"
    "llmctx prices MODEL shows a price (same as: llmctx prices show MODEL).",
    no_args_is_help=True,
    cls=_PricesGroup,
    subcommand_metavar="MODEL | COMMAND [ARGS]...",
)


def _num(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _rates_json(price: ModelPrice | Rates) -> dict[str, str | None]:
    return {
        "input": _num(price.input_per_mtok),
        "output": _num(price.output_per_mtok),
        "cache_read": _num(price.cache_read_per_mtok),
        "cache_write": _num(price.cache_write_per_mtok),
        "cache_write_1h": _num(price.cache_write_1h_per_mtok),
        "reasoning": _num(price.reasoning_per_mtok),
    }


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _file_json(where: PricesFile | None) -> dict[str, Any] | None:
    if where is None:
        return None
    return {"path": str(where.path), "chosen_by": where.chosen_by, "exists": where.path.is_file()}


def _as_json(
    price: ModelPrice, example: Decimal, shadowed: list[ModelPrice], where: PricesFile | None
) -> dict[str, Any]:
    return {
        "model": price.model,
        "name": price.name,
        "provider": price.provider,
        "source": price.source,
        "origin": price.origin,
        "snapshot": price.snapshot,
        "per_mtok_usd": _rates_json(price),
        "tiers": [
            {
                "kind": t.kind,
                "above_input_tokens": t.above_input_tokens,
                "per_mtok_usd": _num(t.per_mtok),
            }
            for t in price.tiers
        ],
        "unit_prices": [
            {"unit": u.unit, "per": u.per, "usd": _num(u.usd), "charged": u.charged, "text": u.text}
            for u in price.unit_prices
        ],
        "other_prices": list(price.other_prices),
        "service_tier": price.service_tier,
        "service_tiers": [
            {"tier": t.tier, "since": _day(t.since), "per_mtok_usd": _rates_json(t.rates)}
            for t in price.service_tiers
        ],
        "history": [
            {"since": _day(c.since), "tiered": c.tiered, "per_mtok_usd": _rates_json(c.rates)}
            for c in price.history
        ],
        "valid_from": _day(price.valid_from),
        "valid_until": _day(price.valid_until),
        "note": price.note,
        "example": {
            "input_tokens": _EXAMPLE.input_tokens,
            "output_tokens": _EXAMPLE.output_tokens,
            "cost_usd": _num(example),
        },
        "shadowed": [
            {
                "source": p.source,
                "origin": p.origin,
                "provider": p.provider,
                "per_mtok_usd": _rates_json(p),
            }
            for p in shadowed
        ],
        "prices_file": _file_json(where),
    }


def _table(price: ModelPrice) -> Table:
    title = price.model if not price.provider else f"{price.model} ({price.provider})"
    if price.name and price.name.lower() != price.model.lower():
        title += f" - {price.name}"
    table = Table(title=Text(title), show_header=True, header_style="bold")
    table.add_column("Tokens")
    table.add_column("USD per million", justify="right")
    table.add_row("Input", format_usd(price.input_per_mtok))
    table.add_row("Output", format_usd(price.output_per_mtok))
    write_1h = price.cache_write_1h_per_mtok
    for label, rate in (
        ("Cache read", price.cache_read_per_mtok),
        (
            "Cache write" if write_1h is None else "Cache write, 5 minutes",
            price.cache_write_per_mtok,
        ),
    ):
        table.add_row(label, "input rate" if rate is None else format_usd(rate))
    if write_1h is not None:
        table.add_row("Cache write, 1 hour", format_usd(write_1h))
    reasoning = price.reasoning_per_mtok
    table.add_row("Reasoning", "output rate" if reasoning is None else format_usd(reasoning))
    kinds = {"cache_write": "Cache write" if write_1h is None else "Cache write, 5 min",
             "cache_write_1h": "Cache write, 1 hour"}  # fmt: skip
    for tier in price.tiers:
        kind = kinds.get(tier.kind) or tier.kind.replace("_", " ").capitalize()
        label = f"{kind}, prompts over {tier.above_input_tokens:,} tokens"
        table.add_row(Text(label), format_usd(tier.per_mtok))
    return table


def _rates_text(rates: Rates) -> str:
    parts = [
        f"{format_usd(rates.input_per_mtok)} input",
        f"{format_usd(rates.output_per_mtok)} output",
    ]
    if rates.cache_read_per_mtok is not None:
        parts.append(f"{format_usd(rates.cache_read_per_mtok)} cache read")
    if rates.cache_write_per_mtok is not None:
        parts.append(f"{format_usd(rates.cache_write_per_mtok)} cache write")
    if rates.cache_write_1h_per_mtok is not None:
        parts.append(f"{format_usd(rates.cache_write_1h_per_mtok)} 1-hour cache write")
    if rates.reasoning_per_mtok is not None:
        parts.append(f"{format_usd(rates.reasoning_per_mtok)} reasoning")
    return ", ".join(parts)


def _tiers_table(price: ModelPrice) -> Table:
    table = Table(title=Text("Service tiers (USD per million tokens)"), header_style="bold")
    writes = any(t.rates.cache_write_per_mtok is not None for t in price.service_tiers)
    writes_1h = any(t.rates.cache_write_1h_per_mtok is not None for t in price.service_tiers)
    columns = [("Tier", "left"), ("Input", "right"), ("Output", "right"), ("Cache read", "right")]
    columns += [("Cache write", "right")] if writes else []
    columns += [("1h write", "right")] if writes_1h else []
    for name, justify in [*columns, ("Since", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def usd(rate: Decimal | None, otherwise: str) -> str:
        return otherwise if rate is None else format_usd(rate)

    for t in price.service_tiers:
        r = t.rates
        row: list[str | Text] = [
            Text(t.tier),
            format_usd(r.input_per_mtok),
            format_usd(r.output_per_mtok),
            usd(r.cache_read_per_mtok, "input rate"),
        ]
        row += [usd(r.cache_write_per_mtok, "input rate")] if writes else []
        row += [usd(r.cache_write_1h_per_mtok, "write rate")] if writes_1h else []
        table.add_row(*row, _day(t.since) or "")
    return table


def _print_history(console: Console, price: ModelPrice) -> None:
    console.print("Price history (standard tier, UTC days):", highlight=False)
    for n, change in enumerate(price.history):
        nxt = price.history[n + 1].since if n + 1 < len(price.history) else None
        if change.since is None:
            span = f"until {nxt}" if nxt else "always"
        else:
            span = f"{change.since} to {nxt}" if nxt else f"since {change.since}"
        in_force = (
            (change.since is None or change.since == price.valid_from)
            and (nxt is None or nxt == price.valid_until)
            and price.service_tier is None
        )
        tiered = " (higher for long prompts)" if change.tiered else ""
        mark = "  <- in force" if in_force else ""
        console.print(
            f"  {span}: {_rates_text(change.rates)}{tiered}{mark}", highlight=False, markup=False
        )


def _source_line(price: ModelPrice, where: PricesFile | None) -> str:
    if price.source == "code":
        return f"Source: code ({price.origin} in this process)"
    if price.source == "file":
        why = f" ({where.why})" if where is not None else ""
        return f"Source: prices file {price.origin}{why}"
    if price.source == "local model":
        return (
            f"Source: local model: {price.origin}, so its calls cost $0 unless you price "
            f"it (llmctx prices set {price.model} --input USD --output USD)"
        )
    return f"Source: {price.origin or price.snapshot}"


def _short(price: ModelPrice) -> str:
    return (
        f"{format_usd(price.input_per_mtok)} input, {format_usd(price.output_per_mtok)} output "
        "per million tokens"
    )


def _llama_cpp_free(model: str, provider: str | None) -> ModelPrice | None:
    """What a llama.cpp call of an unpriced model costs: $0 (its integration's rule)."""
    named = model.strip().lower().startswith(_LOCAL_PROVIDER + "/")
    if (provider or "").strip().lower() != _LOCAL_PROVIDER and not named:
        return None
    name = model.strip().split("/", 1)[1] if named else model.strip()
    return local_price(name, origin="llama.cpp runs it on this machine")


def _file_failed(exc: PricesFileError) -> typer.Exit:
    err = Console(stderr=True)
    err.print(str(exc), highlight=False, markup=False)
    return typer.Exit(2)


@prices_app.command("show", cls=PlainHelpCommand)
def show(
    model: str = typer.Argument(..., help="Model name as the provider returns it, e.g. gpt-4o"),
    provider: str | None = typer.Option(
        None, "--provider", "-p", help="Provider id: openai, anthropic, google, llama-cpp, ..."
    ),
    tier: str | None = typer.Option(
        None,
        "--tier",
        metavar="TIER",
        help="Service tier: flex, priority, batch (the Batch API), ...; default: standard.",
    ),
    at: str | None = typer.Option(
        None,
        "--at",
        metavar="DATE",
        help="The price in force on this UTC day (2025-06-01) or at this time; default now.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the price per million tokens of MODEL and where it comes from.

    First the price in force (code, else the prices file, else genai-prices, else local),
    with its cache-write rates (5-minute, 1-hour), service tiers and dated history.

    Then the prices it shadows. Exit 1 when none is known (or none at --tier on --at), 2
    when the prices file is bad.
    """
    when = _parse_at(at)
    try:
        found = price_sources(model, provider)
    except PricesFileError as exc:
        raise _file_failed(exc) from None
    where, _ = prices_file()
    if not found:
        free = _llama_cpp_free(model, provider)
        if free is None:
            _unknown(model, provider, where)
            raise typer.Exit(1)
        found = [free]
    if tier is not None or when is not None:
        dated = [price_at(p, service_tier=tier, at=when) for p in found]
        if isinstance(dated[0], str):
            Console(stderr=True).print(dated[0], highlight=False, markup=False)
            raise typer.Exit(1)
        found = [p for p in dated if isinstance(p, ModelPrice)]
    price, shadowed = found[0], found[1:]
    example = price.cost(_EXAMPLE, at=when)
    if as_json:
        data = _as_json(price, example, shadowed, where)
        data["at"] = None if when is None else when.isoformat()
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    console.print(_table(price))
    if price.service_tier:
        console.print(f"Service tier: {price.service_tier}", highlight=False, markup=False)
    console.print(_source_line(price, where), highlight=False, markup=False)
    if when is not None or price.valid_from or price.valid_until:
        span = [f"from {price.valid_from}" if price.valid_from else "",
                f"until {price.valid_until}" if price.valid_until else ""]  # fmt: skip
        told = " ".join(x for x in span if x) or "with no dated change"
        on = f" on {when.date()}" if when is not None else ""
        console.print(f"In force{on}: {told} (UTC days)", highlight=False, markup=False)
    if price.service_tiers:
        console.print(_tiers_table(price))
    if price.history:
        _print_history(console, price)
    for other in shadowed:
        label = {"file": "prices file ", "code": "code, "}.get(other.source, "")
        console.print(
            f"Shadows: {label}{other.origin}: {_short(other)}", highlight=False, markup=False
        )
    charged = [u.text for u in price.unit_prices if u.charged]
    shown = [u.text for u in price.unit_prices if not u.charged]
    if charged:
        console.print(f"Also charged: {'; '.join(charged)}", highlight=False, markup=False)
    if shown:
        console.print(
            f"Also priced, not tracked by llmctx: {'; '.join(shown)}",
            highlight=False,
            markup=False,
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


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date: give a UTC day such as 2025-06-01, or a time such as "
            "2025-06-01T14:30:00+00:00",
            param_hint="--at",
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _unknown(model: str, provider: str | None, where: PricesFile | None) -> None:
    err = Console(stderr=True)

    def say(text: str) -> None:
        err.print(text, highlight=False, markup=False)

    where_from = f" from provider {provider!r}" if provider else ""
    say(f"No price known for model {model!r}{where_from}.")
    try:
        candidates = known_models(provider)
    except Exception:  # a broken genai-prices install must not hide the real message
        candidates = []
    if provider and not candidates:
        say(f"genai-prices knows no provider {provider!r}; try without --provider.")
    close = difflib.get_close_matches(model.strip().lower(), candidates, n=5, cutoff=0.6)
    if close:
        say(f"Did you mean: {', '.join(close)}?")
    target = where.path if where is not None else _prices_file.user_prices_path()
    say(
        f"To price it for every program: llmctx prices set {model} --input USD_PER_MTOK "
        f"--output USD_PER_MTOK (writes {target})"
    )
    say(f"Or in your program: llmctx.set_price({model!r}, input_per_mtok=..., output_per_mtok=...)")


def _rate_option(option: str, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        rate = Decimal(value.strip().removeprefix("$"))
    except InvalidOperation:
        rate = Decimal("NaN")
    problem = _prices_file.rate_problem(rate)
    if problem is not None:
        raise typer.BadParameter(
            f"{value!r} is not a price: it {problem}; give US dollars per million tokens, "
            "e.g. 0.15",
            param_hint=option,
        )
    return rate


def _target(file: Path | None) -> tuple[Path, bool]:
    """The file to edit, and whether programs read it (it is the file in force)."""
    where = reload_prices()
    if file is not None:
        path = file.expanduser()
        in_force = where is not None and _same(where.path, path)
        return path, in_force
    if where is not None:
        return where.path, True
    # No file yet: the per-user one is read by every program once it exists.
    return _prices_file.user_prices_path(), True


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _entry_json(path: Path, entry: FileEntry, in_force: bool) -> dict[str, Any]:
    return {
        "file": str(path),
        "model": entry.model,
        "provider": entry.provider,
        "line": entry.line,
        "per_mtok_usd": _entry_rates(entry.rates),
        "in_force": in_force,
    }


def _entry_rates(rates: Mapping[str, Decimal]) -> dict[str, str | None]:
    return {
        "input": _num(rates.get("input_per_mtok")),
        "output": _num(rates.get("output_per_mtok")),
        "cache_read": _num(rates.get("cache_read_per_mtok")),
        "cache_write": _num(rates.get("cache_write_per_mtok")),
        "cache_write_1h": _num(rates.get("cache_write_1h_per_mtok")),
        "reasoning": _num(rates.get("reasoning_per_mtok")),
    }


def _extras(entry: FileEntry) -> str:
    """``"flex, batch; 2 dated"``: an entry's service tiers and dated prices, for ``ls``."""
    parts = [", ".join(t.tier for t in entry.tiers)] if entry.tiers else []
    if entry.changes:
        parts.append(f"{len(entry.changes)} dated")
    return "; ".join(parts) or "-"


def _not_in_force_note(console: Console, path: Path) -> None:
    where = reload_prices()
    read = f"{where.path} ({where.why})" if where is not None else "no prices file"
    console.print(
        f"Note: programs read {read}, not {path}; point LLMCTX_PRICES at it to use it.",
        highlight=False,
        markup=False,
    )


@prices_app.command("set", cls=PlainHelpCommand)
def set_(
    model: str = typer.Argument(..., help="Model name as the provider returns it."),
    input_rate: str | None = typer.Option(
        None, "--input", metavar="USD", help="US dollars per million input tokens, e.g. 0.15."
    ),
    output_rate: str | None = typer.Option(
        None, "--output", metavar="USD", help="US dollars per million output tokens."
    ),
    cached_input: str | None = typer.Option(
        None,
        "--cached-input",
        metavar="USD",
        help="Per million cache-read (cached input) tokens; default: the input rate.",
    ),
    cache_write: str | None = typer.Option(
        None,
        "--cache-write",
        metavar="USD",
        help="Per million cache-write tokens (5-minute writes); default: the input rate.",
    ),
    cache_write_1h: str | None = typer.Option(
        None,
        "--cache-write-1h",
        metavar="USD",
        help="Per million 1-hour cache-write tokens; default: the cache-write rate.",
    ),
    reasoning: str | None = typer.Option(
        None,
        "--reasoning",
        metavar="USD",
        help="Per million reasoning tokens, if billed apart; default: the output rate.",
    ),
    tier: str | None = typer.Option(
        None,
        "--tier",
        metavar="TIER",
        help="Write the rates of this service tier (flex, priority, batch, ...) of an "
        "existing entry; rates left out are the standard ones.",
    ),
    since: str | None = typer.Option(
        None, "--since", metavar="DATE", help="With --tier: the first UTC day its rates apply."
    ),
    provider: str | None = typer.Option(
        None, "--provider", "-p", help="Price only this provider's MODEL (default: any)."
    ),
    file: Path | None = typer.Option(
        None, "--file", metavar="PATH", help="Prices file to edit (default: the one in force)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Write the price of MODEL to the prices file that every llmctx program reads.

    The file in force: LLMCTX_PRICES, else the per-user prices.toml, else llmctx.toml.

    Without any, the per-user prices.toml is created. Other entries and comments stay.

    Exit 2, writing nothing, on a bad number or a prices file that cannot be edited.
    """
    if not model.strip():
        raise typer.BadParameter("give a model name", param_hint="MODEL")
    if provider is not None and not provider.strip():
        raise typer.BadParameter(
            "give a provider id, or leave --provider out", param_hint="--provider"
        )
    rates: dict[str, Decimal] = {}
    for key, option, value in (
        ("input_per_mtok", "--input", input_rate),
        ("output_per_mtok", "--output", output_rate),
        ("cache_read_per_mtok", "--cached-input", cached_input),
        ("cache_write_per_mtok", "--cache-write", cache_write),
        ("cache_write_1h_per_mtok", "--cache-write-1h", cache_write_1h),
        ("reasoning_per_mtok", "--reasoning", reasoning),
    ):
        rate = _rate_option(option, value)
        if rate is not None:
            rates[key] = rate
    if tier is not None:
        _set_tier(model, tier, rates, since, provider, file, as_json)
        return
    if since is not None:
        raise typer.BadParameter(
            "--since dates the rates of a --tier; for a dated standard price add a "
            '[[prices."MODEL".changes]] table to the file (see docs/prices.md)',
            param_hint="--since",
        )
    for key, option in (("input_per_mtok", "--input"), ("output_per_mtok", "--output")):
        if key not in rates:
            raise typer.BadParameter(
                f"give {option} USD (per million tokens): a price needs input and output rates",
                param_hint=option,
            )
    path, in_force = _target(file)
    try:
        entry = _prices_file.set_entry(path, model, rates, provider.strip() if provider else None)
    except PricesFileError as exc:
        raise _file_failed(exc) from None
    except OSError as exc:
        Console(stderr=True).print(
            f"cannot write {path}: {exc}; choose another file with --file PATH",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(2) from None
    reload_prices()
    if as_json:
        typer.echo(json.dumps(_entry_json(path, entry, in_force), indent=2))
        return
    console = Console()
    parts = [
        f"{format_usd(rates['input_per_mtok'])} input",
        f"{format_usd(rates['output_per_mtok'])} output",
    ]
    if "cache_read_per_mtok" in rates:
        parts.append(f"{format_usd(rates['cache_read_per_mtok'])} cached input")
    if "cache_write_per_mtok" in rates:
        parts.append(f"{format_usd(rates['cache_write_per_mtok'])} cache write")
    if "cache_write_1h_per_mtok" in rates:
        parts.append(f"{format_usd(rates['cache_write_1h_per_mtok'])} 1-hour cache write")
    if "reasoning_per_mtok" in rates:
        parts.append(f"{format_usd(rates['reasoning_per_mtok'])} reasoning")
    only = f" (provider {entry.provider} only)" if entry.provider else ""
    console.print(
        f"Priced {entry.model}{only}: {', '.join(parts)} per million tokens, in {path}, "
        f"line {entry.line}.",
        highlight=False,
        markup=False,
    )
    if not in_force:
        _not_in_force_note(console, path)


def _set_tier(
    model: str,
    tier: str,
    rates: dict[str, Decimal],
    since: str | None,
    provider: str | None,
    file: Path | None,
    as_json: bool,
) -> None:
    """``llmctx prices set MODEL --tier T ...``: write one service tier of an entry."""
    name = tier.strip().lower()
    if not name or name in _prices_file.STANDARD_TIERS:
        raise typer.BadParameter(
            f"{tier!r} is the standard price: set it without --tier; tiers are others such as "
            "flex, priority or batch",
            param_hint="--tier",
        )
    if not rates:
        raise typer.BadParameter(
            "give at least one rate (--input, --output, ...) for the tier", param_hint="--tier"
        )
    if provider is not None:
        raise typer.BadParameter(
            "a tier belongs to the entry and its provider; leave --provider out",
            param_hint="--provider",
        )
    day = None
    if since is not None:
        try:
            day = date.fromisoformat(since.strip())
        except ValueError:
            raise typer.BadParameter(
                f"{since!r} is not a date: give a UTC day such as 2026-10-12",
                param_hint="--since",
            ) from None
    path, in_force = _target(file)
    try:
        written = _prices_file.set_tier(path, model, name, rates, day)
    except PricesFileError as exc:
        raise _file_failed(exc) from None
    except OSError as exc:
        Console(stderr=True).print(
            f"cannot write {path}: {exc}; choose another file with --file PATH",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(2) from None
    reload_prices()
    if as_json:
        data = {
            "file": str(path),
            "model": model.strip(),
            "tier": written.tier,
            "since": _day(written.since),
            "line": written.line,
            "per_mtok_usd": _entry_rates(written.rates),
            "in_force": in_force,
        }
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    parts = [f"{format_usd(v)} {k.removesuffix('_per_mtok').replace('_', ' ')}"
             for k, v in written.rates.items()]  # fmt: skip
    from_day = f" from {written.since}" if written.since else ""
    console.print(
        f"Priced {model.strip()} at service tier {written.tier}{from_day}: {', '.join(parts)} "
        f"per million tokens, in {path}, line {written.line}.",
        highlight=False,
        markup=False,
    )
    if not in_force:
        _not_in_force_note(console, path)


@prices_app.command("rm", cls=PlainHelpCommand)
def rm(
    model: str = typer.Argument(..., help="Model whose entry to remove."),
    file: Path | None = typer.Option(
        None, "--file", metavar="PATH", help="Prices file to edit (default: the one in force)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Remove the price of MODEL from the prices file (other entries and comments stay).

    Exit 1 when the file has no entry for MODEL, 2 when it cannot be edited.
    """
    path, in_force = _target(file)
    try:
        entry = _prices_file.remove_entry(path, model)
    except PricesFileError as exc:
        raise _file_failed(exc) from None
    except OSError as exc:
        Console(stderr=True).print(f"cannot write {path}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    if entry is None:
        Console(stderr=True).print(
            f"{path} has no price for {model!r}; `llmctx prices ls` lists what it has.",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(1)
    reload_prices()
    if as_json:
        typer.echo(json.dumps(_entry_json(path, entry, in_force), indent=2))
        return
    console = Console()
    console.print(f"Removed the price of {entry.model} from {path}.", highlight=False, markup=False)
    if not in_force:
        _not_in_force_note(console, path)


@prices_app.command("ls", cls=PlainHelpCommand)
def ls(
    file: Path | None = typer.Option(
        None, "--file", metavar="PATH", help="Prices file to list (default: the one in force)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the prices file in force (where it is, why that one) and its entries."""
    where = reload_prices()
    if file is not None:
        path = file.expanduser()
        where = (
            PricesFile(path, "LLMCTX_PRICES")
            if where is None or not _same(where.path, path)
            else where
        )
    try:
        entries = list(_prices_file.read(where.path).values()) if where is not None else []
    except PricesFileError as exc:
        raise _file_failed(exc) from None
    if as_json:
        data = {
            "prices_file": _file_json(where),
            "entries": [
                {
                    "model": e.model,
                    "provider": e.provider,
                    "line": e.line,
                    "per_mtok_usd": _entry_rates(e.rates),
                    "service_tiers": [
                        {
                            "tier": t.tier,
                            "since": _day(t.since),
                            "line": t.line,
                            "per_mtok_usd": _entry_rates(t.rates),
                        }
                        for t in e.tiers
                    ],
                    "changes": [
                        {
                            "since": _day(c.since),
                            "line": c.line,
                            "per_mtok_usd": _entry_rates(c.rates),
                        }
                        for c in e.changes
                    ],
                }
                for e in entries
            ],
        }
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    if where is None:
        console.print(
            "No prices file. `llmctx prices set MODEL --input USD --output USD` creates "
            f"{_prices_file.user_prices_path()}; LLMCTX_PRICES or a project llmctx.toml with "
            "[prices] tables work too.",
            highlight=False,
            markup=False,
        )
        return
    state = "" if where.path.is_file() else ", does not exist yet"
    console.print(f"Prices file: {where.path} ({where.why}{state})", highlight=False, markup=False)
    if not entries:
        console.print("No entries.", highlight=False)
        return

    def usd(rates: Mapping[str, Decimal], key: str) -> str:
        return format_usd(rates[key]) if key in rates else "input rate"

    columns = [
        Column("model"),
        Column("provider", drop=2),
        Column("input", justify="right"),
        Column("output", justify="right"),
        Column("cached input", justify="right", drop=1),
        Column("cache write", justify="right", drop=1),
        Column("tiers & dates", drop=2),
        Column("line", justify="right", drop=3),
    ]
    rows = [
        [
            e.model,
            e.provider or "any",
            format_usd(e.rates["input_per_mtok"]),
            format_usd(e.rates["output_per_mtok"]),
            usd(e.rates, "cache_read_per_mtok"),
            usd(e.rates, "cache_write_per_mtok"),
            _extras(e),
            str(e.line or ""),
        ]
        for e in entries
    ]
    print_fitted(console, columns, rows, notes=["US dollars per million tokens"])
