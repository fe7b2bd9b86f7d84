"""Prices per million tokens: code, then the prices file, then genai-prices' bundled data.

Four sources answer :func:`lookup_price`; the first that knows the model wins:

1. **code**: prices set with :func:`set_price` (for the process) or :func:`price_override`
   (for a ``with`` block), matched on the model name (case-insensitive) and, when the price
   names one, the provider. Code wins because it is the most specific decision: a test pinning
   a price, a program's negotiated rate.
2. **the prices file** (``$LLMCTX_PRICES``, else the per-user ``prices.toml``, else a project
   ``llmctx.toml``; see :mod:`llmctx._prices_file`), written by ``llmctx prices set`` or by
   hand, shared by every program and the CLI. It is read at the first lookup and checked
   again at most once a second, so a running program sees an edit within a second.
3. **genai-prices**: the data snapshot bundled with the installed ``genai-prices`` package.
   llmctx never starts genai-prices' network auto-update (``UpdatePrices``): these prices
   change only when the package is upgraded.
4. **the bundled local model** (``SmolLM2-135M-Instruct``, also as
   ``llama-cpp/SmolLM2-135M-Instruct``): $0, source ``"local model"``; it runs on this machine.

A prices file that cannot be used (bad TOML, a negative rate, an unknown key) never makes a
price up and never hides: :func:`lookup_price` and :func:`estimate_cost` raise
:class:`~llmctx._prices_file.PricesFileError` (a ``ConfigError`` naming the file, the line
and the fix) for every model that code does not price, so a call under a money budget is
refused before it is sent (fail closed); :func:`price_usage`, which runs after a call, returns
no cost with that message as the reason (the call is recorded unpriced and warned about).

Lookups are cached per ``(model, provider)`` (misses too), prices at a tier or on another
day per ``(model, provider, tier, day)``; changing an override or the file empties the
caches. Pricing one call (:func:`price_usage`) with a cached price costs a few microseconds:
the genai-prices price is compiled once into a short list of ``(token kind, rate)`` terms
that reproduce ``genai_prices.calc_price`` operation by operation, so the result is the very
same ``Decimal``. Every compiled price is checked against ``calc_price`` on two probe usages
when it is first looked up; a price that does not
reproduce exactly (or that varies with the time of day) is marked "complex" and every call
goes through ``calc_price`` instead.

What a call is billed for, beyond input and output tokens (:func:`price_usage`):

* **reasoning tokens** cost the output rate (they are part of ``output_tokens``), unless the
  source gives them a rate of their own (genai-prices' ``output_reasoning_mtok``, a prices
  file's ``reasoning_per_mtok``);
* **cache writes by TTL**: Anthropic reports 1-hour writes in the raw usage
  (``cache_creation.ephemeral_1h_input_tokens``); they cost the 1-hour write rate where the
  source has one (genai-prices' ``cache_write_1h_mtok``), the rest of the cache writes the
  5-minute rate;
* **service tiers**: OpenAI ``flex`` / ``priority``, the Batch API (``"batch"``), Anthropic's
  ``speed="fast"``, priced from genai-prices' price variants (or the file's / code's
  ``service_tiers``). A tier the source has no rates for on that day makes the call unpriced
  (``None`` and a reason): genai-prices would charge the standard rate, llmctx does not guess;
* **the price in force at the call's time** (``at``): genai-prices' dated prices, a prices
  file's ``changes``.

Each cached price knows the UTC days it is valid for, so a call whose ``at`` falls inside
costs no more than one without; another day or a tier is looked up once per
``(model, provider, tier, day)`` and cached too.

Unknown prices are reported, never guessed: :func:`price_usage` returns ``(None, reason)``
and the caller applies the unknown-price policy (a money budget fails closed).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal

from . import _prices_file
from ._exceptions import ConfigError
from ._money import format_usd
from ._prices_file import PricesFile, PricesFileError
from ._usage import Usage

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot

__all__ = [
    "LOCAL_MODEL_NAMES",
    "ModelPrice",
    "PriceChange",
    "PriceTier",
    "Rates",
    "ServiceTierPrice",
    "UnitPrice",
    "clear_prices",
    "estimate_cost",
    "is_unpriced",
    "known_models",
    "lookup_price",
    "price_at",
    "price_override",
    "price_sources",
    "price_usage",
    "prices_file",
    "reload_prices",
    "set_price",
]

PriceSource = Literal["code", "file", "genai-prices", "local model"]
Number = str | int | float | Decimal

_ZERO: Final = Decimal(0)
_MTOK: Final = 1_000_000

# Slots index the per-call counts tuple built in _fast_cost; the order is fixed.
(
    _INPUT,
    _CACHE_READ,
    _CACHE_WRITE,
    _CACHE_WRITE_1H,
    _OUTPUT,
    _REASONING,
    _NONE,
    _ONE,
) = range(8)
_SLOT_OF_USAGE_KEY: Final = {
    "input_tokens": _INPUT,
    "cache_read_tokens": _CACHE_READ,
    "cache_write_tokens": _CACHE_WRITE,
    "cache_write_1h_tokens": _CACHE_WRITE_1H,
    "output_tokens": _OUTPUT,
    "output_reasoning_tokens": _REASONING,
    "requests": _ONE,
}
_KIND_OF_SLOT: Final = {
    _INPUT: "input",
    _CACHE_READ: "cache_read",
    _CACHE_WRITE: "cache_write",
    _CACHE_WRITE_1H: "cache_write_1h",
    _OUTPUT: "output",
    _REASONING: "reasoning",
}
# The prices file's and set_price's rate names, in the order their terms are added.
_SLOT_OF_RATE: Final = {
    "input_per_mtok": _INPUT,
    "cache_read_per_mtok": _CACHE_READ,
    "cache_write_per_mtok": _CACHE_WRITE,
    "cache_write_1h_per_mtok": _CACHE_WRITE_1H,
    "output_per_mtok": _OUTPUT,
    "reasoning_per_mtok": _REASONING,
}

# (slot, base rate, tiers highest-threshold first as (start, rate), per)
_Term = tuple[int, Decimal, tuple[tuple[int, Decimal], ...], int]
# The fast path: (sum of the terms that do not depend on usage, the token terms, has a
# cache-read term, has a cache-write term, has a 1-hour cache-write term, has a reasoning term)
_FastTerm = tuple[
    int, Decimal, tuple[tuple[int, Decimal, Decimal | None], ...], Decimal, Decimal | None
]
_Fast = tuple[Decimal, tuple[_FastTerm, ...], bool, bool, bool, bool]
# A price context: sorted (key, value) pairs in genai-prices' terms, e.g.
# (("service_tier", "flex"),) or (("processing", "batch"),); () is the standard price.
_Ctx = tuple[tuple[str, str], ...]

# Probe usages for the self-check: odd, distinct counts so a wrongly routed term shows up,
# one above every tier threshold in the data (they are all <= 1M input tokens) and one below.
# (input, cache read, cache write, of which 1-hour, output, of which reasoning)
_PROBES: Final = (
    (1_234_567, 234_561, 34_567, 12_343, 45_673, 6_781),
    (1_013, 211, 97, 41, 503, 89),
)


@dataclass(frozen=True, slots=True)
class PriceTier:
    """A higher rate that applies to *all* tokens of a kind once a call's input exceeds a size.

    genai-prices' "cliff" model: with a tier at 200,000, a call with 200,001 input tokens pays
    the tier rate for every token of that kind, not only for those above the threshold.
    """

    kind: Literal["input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning"]
    above_input_tokens: int
    per_mtok: Decimal


@dataclass(frozen=True, slots=True)
class Rates:
    """The per-million-token rates of one price, US dollars (``None``: see each attribute).

    Attributes:
        input_per_mtok: input tokens that are neither cache reads nor cache writes.
        output_per_mtok: output tokens (reasoning included unless ``reasoning_per_mtok``).
        cache_read_per_mtok: cache reads; ``None``: the input rate.
        cache_write_per_mtok: cache writes (Anthropic's 5-minute writes); ``None``: the input
            rate.
        cache_write_1h_per_mtok: 1-hour cache writes (Anthropic); ``None``: the cache-write
            rate.
        reasoning_per_mtok: reasoning tokens; ``None``: the output rate (how OpenAI,
            Anthropic and Google bill them).
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ServiceTierPrice:
    """What a model costs when served at a service tier other than the standard one.

    Attributes:
        tier: the tier as a call reports it: ``"flex"``, ``"priority"`` (OpenAI
            ``service_tier``), ``"batch"`` (the Batch API), ``"fast"``, ...
        rates: the rates at that tier (those the tier does not change are the standard ones).
        since: the first day (UTC) the data has this tier's rates, when it says.
    """

    tier: str
    rates: Rates
    since: date | None = None


@dataclass(frozen=True, slots=True)
class PriceChange:
    """One dated version of a model's standard price.

    Attributes:
        since: the first day (UTC) this price is in force; ``None`` for the oldest known.
        rates: its rates (the base rate where a rate is tiered by prompt size).
        tiered: some rate of it goes up for long prompts.
    """

    since: date | None
    rates: Rates
    tiered: bool = False


@dataclass(frozen=True, slots=True)
class UnitPrice:
    """A price of a unit other than input/output/cache tokens (web searches, requests, audio).

    Attributes:
        unit: what is counted, in words: ``"web searches"``, ``"requests"``, ``"input audio
            tokens"``, ``"seconds of audio"``.
        per: how many units the price is for (``1000`` for "per 1K web searches").
        usd: US dollars per ``per`` units (the base rate when the price is tiered).
        charged: ``True`` when llmctx charges it (a per-request fee); ``False`` when llmctx
            does not see that unit, so it is shown, not charged.
    """

    unit: str
    per: int
    usd: Decimal
    charged: bool

    @property
    def text(self) -> str:
        """``"$10.00 per 1K web searches"``, ``"$0.006 per hour of audio"``."""
        return _unit_text(self.unit, self.per, self.usd)


def _count_label(n: int) -> str:
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if n >= size and n % size == 0:
            return f"{n // size:,}{suffix}"
    return f"{n:,}"


def _unit_text(unit: str, per: int, usd: Decimal) -> str:
    if unit.startswith("seconds of ") and per == 3600:
        return f"{format_usd(usd)} per hour of {unit.removeprefix('seconds of ')}"
    if per == 1:
        return f"{format_usd(usd)} per {unit.removesuffix('s')}"
    return f"{format_usd(usd)} per {_count_label(per)} {unit}"


@dataclass(frozen=True, slots=True)
class _Schedule:
    """How one source's price of one model varies with the date and the service tier.

    ``genai`` is ``(provider, model info, the model is the provider's own)`` for a
    genai-prices model (its conditional prices and price variants are the schedule); else
    ``base`` rates (the prices-file key names) with dated ``changes`` (ascending, each a whole
    price) and service ``tiers`` (``((key, value), since, partial rates)``). ``meta`` holds the
    display fields every price derived from it carries.
    """

    meta: Mapping[str, Any]
    genai: tuple[Any, Any, bool] | None = None
    base: Mapping[str, Decimal] = field(default_factory=dict)
    changes: tuple[tuple[date, Mapping[str, Decimal]], ...] = ()
    tiers: tuple[tuple[tuple[str, str], date | None, Mapping[str, Decimal]], ...] = ()


@dataclass(frozen=True)
class ModelPrice:
    """What one model costs, in US dollars per million tokens.

    Attributes:
        provider: the provider id (genai-prices' id, or the one given to :func:`set_price`;
            ``None`` for an override that applies to every provider).
        model: the canonical model id (genai-prices') or the overridden model name.
        input_per_mtok: rate for input tokens that are neither cache reads nor cache writes
            (the base rate when the price is tiered).
        output_per_mtok: rate for output tokens, reasoning included.
        cache_read_per_mtok: rate for cache reads; ``None`` means they cost the input rate.
        cache_write_per_mtok: rate for cache writes; ``None`` means they cost the input rate.
        source: where the price comes from: ``"code"`` (:func:`set_price` /
            :func:`price_override`), ``"file"`` (the prices file), ``"genai-prices"``, or
            ``"local model"`` (the bundled model, $0).
        name: a display name, when genai-prices has one.
        tiers: higher rates for long prompts, lowest threshold first.
        other_prices: :attr:`unit_prices` as text, e.g. ``"$10.00 per 1K web searches"``.
        snapshot: where the data comes from, e.g. ``"genai-prices 0.2.3 (bundled data)"``.
        note: why this price is computed by ``genai_prices.calc_price`` on every call
            (time-of-day pricing, ...), or ``None`` when the fast path applies.
        origin: where exactly, for people: ``"llmctx.set_price"``, ``"<file>, line 3"``,
            the genai-prices snapshot, or ``"the bundled local model"``.
        unit_prices: prices of units other than tokens (web searches, per-request fees, ...).
        cache_write_1h_per_mtok: rate for 1-hour cache writes (Anthropic); ``None`` means
            they cost the cache-write rate.
        reasoning_per_mtok: rate for reasoning tokens when the provider bills them apart;
            ``None`` means they cost the output rate (as OpenAI, Anthropic, Google bill them).
        service_tier: the tier this price is for (``"flex"``, ``"priority"``, ``"batch"``,
            ...), ``None`` for the standard price.
        service_tiers: the other tiers the source prices for this model, at the same date.
        history: the standard price's dated versions, oldest first (empty when it never
            changed).
        valid_from: the first day (UTC) this price is in force, ``None`` when always was.
        valid_until: the day (UTC) a dated change replaces it, ``None`` when none is known.
    """

    provider: str | None
    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    source: PriceSource = "code"
    name: str | None = None
    tiers: tuple[PriceTier, ...] = ()
    other_prices: tuple[str, ...] = ()
    snapshot: str | None = None
    note: str | None = None
    origin: str | None = None
    unit_prices: tuple[UnitPrice, ...] = ()
    cache_write_1h_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    service_tier: str | None = None
    service_tiers: tuple[ServiceTierPrice, ...] = ()
    history: tuple[PriceChange, ...] = ()
    valid_from: date | None = None
    valid_until: date | None = None
    # Compiled pricing: every priced unit as a term; the fast path, or None to call
    # calc_price on the genai (provider, model) pair; _expires_at (epoch seconds) and _valid
    # seconds) is when this price is in force (a dated change makes it stale); _schedule is
    # how the source's price varies with the date and the tier; _ctx the tier's context.
    _terms: tuple[_Term, ...] = field(default=(), repr=False, compare=False)
    _fast: _Fast | None = field(default=None, repr=False, compare=False)
    _genai: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)
    _expires_at: float | None = field(default=None, repr=False, compare=False)
    _valid: tuple[datetime, datetime] | None = field(default=None, repr=False, compare=False)
    _schedule: _Schedule | None = field(default=None, repr=False, compare=False)
    _ctx: _Ctx = field(default=(), repr=False, compare=False)

    @property
    def rates(self) -> Rates:
        """This price's per-million-token rates as one value."""
        return Rates(
            self.input_per_mtok,
            self.output_per_mtok,
            self.cache_read_per_mtok,
            self.cache_write_per_mtok,
            self.cache_write_1h_per_mtok,
            self.reasoning_per_mtok,
        )

    @property
    def tiered(self) -> bool:
        """True when some rate goes up for long prompts."""
        return bool(self.tiers)

    def cost(
        self, usage: Usage, *, cache_write_1h_tokens: int = 0, at: datetime | None = None
    ) -> Decimal:
        """The cost of ``usage`` at this price, in US dollars.

        Args:
            usage: one call's usage (``input_tokens`` includes the cache tokens).
            cache_write_1h_tokens: how many of ``usage.cache_write_tokens`` were 1-hour
                cache writes (Anthropic reports them in ``usage.cache_creation``).
            at: when the call was made, for a price that depends on the time of day (the
                day is this price's own: see :func:`price_at`); default now.

        Returns:
            The exact ``Decimal`` ``genai_prices.calc_price`` would return for genai-prices
            data; for overrides, the sum of each token kind times its rate.

        Raises:
            PriceError: the usage is inconsistent (more cache tokens than input tokens).
        """
        from ._exceptions import PriceError

        cost, reason = _cost(self, usage, cache_write_1h_tokens, at)
        if cost is None:
            raise PriceError(reason or "the usage could not be priced")
        return cost


# --------------------------------------------------------------------------------------------
# State: overrides and the lookup cache.

_lock = threading.Lock()
_overrides: dict[tuple[str, str | None], ModelPrice] = {}
_cache: dict[tuple[str, str | None], ModelPrice | None] = {}
# Prices at a service tier or on another day than today's price covers:
# (model, provider, context, UTC day) -> the price, or why there is none.
_derived: dict[tuple[str, str | None, _Ctx, date], ModelPrice | str] = {}
_ctx_cache: dict[tuple[str | None, str | None], _Ctx] = {}
_generation = 0
_CACHE_MAX: Final = 4096
_MISSING: Final[Any] = object()


def _invalidate() -> None:
    # Caller holds _lock. A new dict (rather than .clear()) keeps lock-free readers safe.
    global _cache, _derived, _generation
    _cache = {}
    _derived = {}
    _generation += 1


def _to_rate(name: str, value: Number) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ConfigError(
            f"{name} must be a number of US dollars per million tokens, got {value!r}"
        )
    try:
        # str() first so a float like 0.1 becomes Decimal('0.1'), not its binary expansion.
        rate = Decimal(str(value)) if isinstance(value, float | int) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a number of US dollars per million tokens (str, int, float or "
            f"Decimal), got {value!r}"
        ) from None
    problem = _prices_file.rate_problem(rate)
    if problem is not None:
        raise ConfigError(f"{name} {problem}, got {value!r}")
    return rate


def _to_optional_rate(name: str, value: Number | None) -> Decimal | None:
    return None if value is None else _to_rate(name, value)


def _norm(text: str | None) -> str | None:
    return None if text is None else text.strip().lower()


def _rate_map(**rates: Number | None) -> dict[str, Decimal]:
    return {key: _to_rate(key, value) for key, value in rates.items() if value is not None}


#: Service tiers that mean "the standard price" (OpenAI reports "default", Anthropic
#: "standard"; "auto" is the request value that lets OpenAI or Anthropic choose, and
#: "standard_only" Anthropic's request value that keeps a call off its priority tier).
_STANDARD_TIERS: Final = frozenset({"", "default", "auto", "standard", "standard_only"})


def _tier_pair(tier: str) -> tuple[str, str]:
    """A tier name as llmctx shows it -> genai-prices' price-context pair."""
    if tier == "batch":
        return ("processing", "batch")
    if "=" in tier:
        key, value = tier.split("=", 1)
        return (key.strip(), value.strip())
    return ("service_tier", tier)


def _tier_label(pair: tuple[str, str]) -> str:
    key, value = pair
    if pair == ("processing", "batch"):
        return "batch"
    return value if key == "service_tier" else f"{key}={value}"


def _tiers_of(
    service_tiers: Mapping[str, Mapping[str, Number]] | None,
) -> tuple[tuple[tuple[str, str], date | None, Mapping[str, Decimal]], ...]:
    if not service_tiers:
        return ()
    if not isinstance(service_tiers, Mapping):
        raise ConfigError(
            "service_tiers must map a tier name to its rates, e.g. "
            '{"flex": {"input_per_mtok": "0.10", "output_per_mtok": "0.40"}}, '
            f"got {service_tiers!r}"
        )
    out = []
    for name, rates in service_tiers.items():
        tier = name.strip().lower() if isinstance(name, str) else ""
        if not tier or tier in _STANDARD_TIERS:
            raise ConfigError(
                f"service tier {name!r} cannot have rates of its own: give a tier such as "
                "'flex', 'priority' or 'batch' (the standard price is the main rates)"
            )
        if not isinstance(rates, Mapping) or not rates:
            raise ConfigError(
                f"service tier {tier!r} needs a mapping of rates, e.g. "
                f'{{"input_per_mtok": "0.10"}}, got {rates!r}'
            )
        unknown = [k for k in rates if k not in _SLOT_OF_RATE]
        if unknown:
            raise ConfigError(
                f"unknown rate {unknown[0]!r} for service tier {tier!r}; the rates are "
                f"{', '.join(_SLOT_OF_RATE)}"
            )
        out.append((_tier_pair(tier), None, {k: _to_rate(k, v) for k, v in rates.items()}))
    return tuple(out)


def _override_price(
    model: str,
    *,
    input_per_mtok: Number,
    output_per_mtok: Number,
    cache_read_per_mtok: Number | None,
    cache_write_per_mtok: Number | None,
    provider: str | None,
    cache_write_1h_per_mtok: Number | None = None,
    reasoning_per_mtok: Number | None = None,
    service_tiers: Mapping[str, Mapping[str, Number]] | None = None,
    source: PriceSource = "code",
    origin: str = "llmctx.set_price",
    changes: tuple[tuple[date, Mapping[str, Decimal]], ...] = (),
    tiers: tuple[tuple[tuple[str, str], date | None, Mapping[str, Decimal]], ...] = (),
) -> ModelPrice:
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model must be a non-empty model name, got {model!r}")
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise ConfigError(f"provider must be None or a non-empty provider id, got {provider!r}")
    base = {
        "input_per_mtok": _to_rate("input_per_mtok", input_per_mtok),
        "output_per_mtok": _to_rate("output_per_mtok", output_per_mtok),
    }
    base.update(
        _rate_map(
            cache_read_per_mtok=cache_read_per_mtok,
            cache_write_per_mtok=cache_write_per_mtok,
            cache_write_1h_per_mtok=cache_write_1h_per_mtok,
            reasoning_per_mtok=reasoning_per_mtok,
        )
    )
    problem = _prices_file.rates_problem(base)
    if problem is not None:
        raise ConfigError(f"the price of {model.strip()!r} {problem}")
    schedule = _Schedule(
        meta={
            "provider": provider.strip() if provider else None,
            "model": model.strip(),
            "source": source,
            "origin": origin,
        },
        base=base,
        changes=tuple(sorted(changes, key=lambda c: c[0])),
        tiers=tiers + _tiers_of(service_tiers),
    )
    price = _price_at(schedule, (), datetime.now(tz=UTC))
    assert isinstance(price, ModelPrice)  # the standard price always exists
    return price


def set_price(
    model: str,
    *,
    input_per_mtok: Number,
    output_per_mtok: Number,
    cache_read_per_mtok: Number | None = None,
    cache_write_per_mtok: Number | None = None,
    provider: str | None = None,
    cache_write_1h_per_mtok: Number | None = None,
    reasoning_per_mtok: Number | None = None,
    service_tiers: Mapping[str, Mapping[str, Number]] | None = None,
) -> None:
    """Set (or replace) the price of ``model`` for this process; it wins over every other source.

    Use it for models genai-prices does not know, for negotiated rates, or to pin a price in
    tests. A price set here wins over the prices file and genai-prices (see the module
    docstring); to price a model for every program and the CLI, write the prices file
    instead (``llmctx prices set MODEL --input ... --output ...``). The price lasts for the
    process; :func:`price_override` scopes one to a ``with`` block.

    Args:
        model: the model name as the provider returns it (matched case-insensitively; a
            ``"provider/model"`` reference also finds an override set on ``model``).
        input_per_mtok: US dollars per million input tokens (str, int, float or Decimal).
        output_per_mtok: US dollars per million output tokens (reasoning included).
        cache_read_per_mtok: per million cache-read tokens; ``None`` charges the input rate.
        cache_write_per_mtok: per million cache-write tokens (Anthropic's 5-minute writes);
            ``None`` charges the input rate.
        provider: restrict the override to this provider id; ``None`` applies to all.
        cache_write_1h_per_mtok: per million 1-hour cache-write tokens (Anthropic);
            ``None`` charges the cache-write rate.
        reasoning_per_mtok: per million reasoning tokens, for a provider that bills them
            apart; ``None`` charges the output rate (how most providers bill them).
        service_tiers: rates for calls served at other tiers, e.g. ``{"flex":
            {"input_per_mtok": "0.10", "output_per_mtok": "0.40"}, "batch": {...}}`` (rates a
            tier leaves out are the standard ones). A call reported at a tier this price
            does not list has no cost (fail closed), it is not charged the standard rate.

    Raises:
        ConfigError: a rate is negative, not finite or not a number, or the name is empty.
    """
    price = _override_price(
        model,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cache_read_per_mtok=cache_read_per_mtok,
        cache_write_per_mtok=cache_write_per_mtok,
        provider=provider,
        cache_write_1h_per_mtok=cache_write_1h_per_mtok,
        reasoning_per_mtok=reasoning_per_mtok,
        service_tiers=service_tiers,
    )
    key = (price.model.lower(), _norm(price.provider))
    with _lock:
        _overrides[key] = price
        _invalidate()


def clear_prices() -> None:
    """Remove every price set in code with :func:`set_price` (the file and genai-prices stay).

    A :func:`price_override` block still running puts back what it replaced when it ends.
    """
    with _lock:
        _overrides.clear()
        _invalidate()


@contextmanager
def price_override(
    model: str,
    *,
    input_per_mtok: Number,
    output_per_mtok: Number,
    cache_read_per_mtok: Number | None = None,
    cache_write_per_mtok: Number | None = None,
    provider: str | None = None,
    cache_write_1h_per_mtok: Number | None = None,
    reasoning_per_mtok: Number | None = None,
) -> Iterator[ModelPrice]:
    """Price ``model`` inside a ``with`` block only, then put back what was there.

    ::

        with llmctx.price_override("my-model", input_per_mtok="0.50", output_per_mtok="1.50"):
            ...  # calls of my-model are charged at these rates, money budgets apply

    A price set in code, like :func:`set_price`'s: it wins over the prices file and
    genai-prices while the block runs. Handy in tests and demos (``llmctx demo`` prices the
    free local model this way to show money budgets). The price is process-wide while the
    block runs (prices are configuration, not per-task context), so concurrent tasks and
    threads see it too; nest blocks rather than overlap them for the same model.

    Args:
        model: as :func:`set_price`.
        input_per_mtok: as :func:`set_price`.
        output_per_mtok: as :func:`set_price`.
        cache_read_per_mtok: as :func:`set_price`.
        cache_write_per_mtok: as :func:`set_price`.
        provider: as :func:`set_price`.
        cache_write_1h_per_mtok: as :func:`set_price`.
        reasoning_per_mtok: as :func:`set_price`.

    Yields:
        The :class:`ModelPrice` in force inside the block (source ``"code"``).

    Raises:
        ConfigError: as :func:`set_price`, before the block runs.

    On exit (normal, exception, cancellation or KeyboardInterrupt) the price set in code
    before the block for the same ``(model, provider)`` is restored, or removed when there
    was none; the prices file and genai-prices then answer again.
    """
    price = _override_price(
        model,
        input_per_mtok=input_per_mtok,
        output_per_mtok=output_per_mtok,
        cache_read_per_mtok=cache_read_per_mtok,
        cache_write_per_mtok=cache_write_per_mtok,
        provider=provider,
        cache_write_1h_per_mtok=cache_write_1h_per_mtok,
        reasoning_per_mtok=reasoning_per_mtok,
        origin="llmctx.price_override",
    )
    key = (price.model.lower(), _norm(price.provider))
    with _lock:
        previous = _overrides.get(key)
        _overrides[key] = price
        _invalidate()
    try:
        yield price
    finally:
        with _lock:
            if previous is None:
                _overrides.pop(key, None)
            else:
                _overrides[key] = previous
            _invalidate()


# --------------------------------------------------------------------------------------------
# The prices file: read on first use, checked again at most once a second.

_FILE_CHECK_EVERY: Final = 1.0
_file_next_check = 0.0  # time.monotonic() of the next check; 0: never checked
_file_signature: tuple[Any, ...] | None = None
_file_where: PricesFile | None = None
_file_prices: dict[tuple[str, str | None], ModelPrice] = {}
_file_error: PricesFileError | None = None


def _signature(where: PricesFile | None) -> tuple[Any, ...]:
    if where is None:
        return (None,)
    try:
        st = where.path.stat()
    except OSError:
        return (where.path, where.chosen_by, None)
    return (where.path, where.chosen_by, st.st_mtime_ns, st.st_size, st.st_ino)


def _load_file(where: PricesFile | None) -> None:
    # Caller holds _lock.
    global _file_where, _file_prices, _file_error
    prices: dict[tuple[str, str | None], ModelPrice] = {}
    error: PricesFileError | None = None
    if where is not None:
        try:
            for entry in _prices_file.read(where.path).values():
                rates = entry.rates
                price = _override_price(
                    entry.model,
                    input_per_mtok=rates["input_per_mtok"],
                    output_per_mtok=rates["output_per_mtok"],
                    cache_read_per_mtok=rates.get("cache_read_per_mtok"),
                    cache_write_per_mtok=rates.get("cache_write_per_mtok"),
                    cache_write_1h_per_mtok=rates.get("cache_write_1h_per_mtok"),
                    reasoning_per_mtok=rates.get("reasoning_per_mtok"),
                    provider=entry.provider,
                    source="file",
                    origin=f"{where.path}, line {entry.line}" if entry.line else str(where.path),
                    changes=tuple((c.since, c.rates) for c in entry.changes),
                    tiers=tuple((_tier_pair(t.tier), t.since, t.rates) for t in entry.tiers),
                )
                prices[(price.model.lower(), _norm(price.provider))] = price
        except PricesFileError as exc:
            prices, error = {}, exc
    _file_where, _file_prices, _file_error = where, prices, error
    _invalidate()


def _check_file(force: bool = False) -> None:
    global _file_next_check, _file_signature
    now = time.monotonic()
    if not force and now < _file_next_check:
        return
    where = _prices_file.locate()
    signature = _signature(where)
    with _lock:
        _file_next_check = now + _FILE_CHECK_EVERY
        if force or signature != _file_signature:
            _load_file(where)
            # Only once loaded: an interrupt in the load leaves the next check to redo it.
            _file_signature = signature


def reload_prices() -> PricesFile | None:
    """Read the prices file again now (normally it is checked at most once a second).

    Returns:
        Where the prices file is (it may not exist yet), or ``None`` when there is none.
    """
    _check_file(force=True)
    return _file_where


def prices_file() -> tuple[PricesFile | None, PricesFileError | None]:
    """The prices file in force and, when it cannot be used, why (read now if it changed)."""
    _check_file()
    with _lock:
        return _file_where, _file_error


# --------------------------------------------------------------------------------------------
# The bundled local model: free, because it runs on this machine.

#: The names the bundled model's calls carry (``providers.LOCAL_MODEL_NAME``; a test keeps
#: them equal), and its GGUF file's stem, which ``instrument(Llama(...))`` uses.
LOCAL_MODEL_NAMES: Final = ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1")
_LOCAL_PROVIDER: Final = "llama-cpp"
_LOCAL_KEYS: Final = frozenset(n.lower() for n in LOCAL_MODEL_NAMES)


def _local_price(name: str, provider: str | None) -> ModelPrice | None:
    """$0 for the bundled model's names, bare or as ``llama-cpp/NAME``; else None."""
    if provider not in (None, _LOCAL_PROVIDER):
        return None
    if name.startswith(_LOCAL_PROVIDER + "/"):
        name = name[len(_LOCAL_PROVIDER) + 1 :]
    if name not in _LOCAL_KEYS:
        return None
    return local_price(LOCAL_MODEL_NAMES[0], origin="the bundled model runs on this machine")


def local_price(model: str, *, origin: str) -> ModelPrice:
    """A $0 price of source ``"local model"`` for ``model``, run by llama.cpp on this machine."""
    schedule = _Schedule(
        meta={"provider": _LOCAL_PROVIDER, "model": model, "source": "local model",
              "origin": origin},
        base={"input_per_mtok": _ZERO, "output_per_mtok": _ZERO},
    )  # fmt: skip
    return ModelPrice(
        provider=_LOCAL_PROVIDER,
        model=model,
        input_per_mtok=_ZERO,
        output_per_mtok=_ZERO,
        source="local model",
        origin=origin,
        # No terms: every usage costs exactly Decimal(0).
        _fast=(_ZERO, (), False, False, False, False),
        _schedule=schedule,
    )


# --------------------------------------------------------------------------------------------
# genai-prices: the bundled snapshot, compiled into fast-path terms.

_snapshot_obj: DataSnapshot | None = None
_snapshot_lock = threading.Lock()


def _snapshot() -> DataSnapshot:
    """genai-prices' bundled data, in a snapshot object of our own.

    Our own object (rather than ``genai_prices.calc_price``'s global one) means an
    application that installs auto-updated prices does not silently change llmctx's figures,
    and nothing here can start a download. The import takes ~0.4 s, so it happens on the
    first lookup, not on ``import llmctx``.
    """
    global _snapshot_obj
    if _snapshot_obj is None:
        with _snapshot_lock:
            if _snapshot_obj is None:
                from genai_prices.data import providers
                from genai_prices.data_snapshot import DataSnapshot

                _snapshot_obj = DataSnapshot(providers=providers, from_auto_update=False)
    return _snapshot_obj


def prices_loaded() -> bool:
    """Whether genai-prices' bundled data is loaded (its first load takes ~0.4-1 s)."""
    return _snapshot_obj is not None


def load_prices() -> None:
    """Load genai-prices' bundled data now (async code does it in a worker thread, so the
    first priced call does not stall the event loop on the import)."""
    _snapshot()


def _snapshot_label() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"genai-prices {version('genai-prices')} (bundled data)"
    except PackageNotFoundError:  # pragma: no cover - vendored without metadata
        return "genai-prices (bundled data)"


def _genai_find(model: str, provider: str | None) -> tuple[Any, Any] | None:
    snap = _snapshot()
    candidates: list[tuple[str, str | None]] = [(model, provider)]
    if "/" in model:
        # "anthropic/claude-..." style references: the prefix names the provider.
        prefix, rest = model.split("/", 1)
        if rest:
            candidates.append((rest, provider or prefix))
    for ref, prov in candidates:
        try:
            return snap.find_provider_model(ref, None, prov, None)
        except LookupError:
            continue
    return None


def _compile_terms(
    model_price: Any,
) -> tuple[tuple[_Term, ...], list[PriceTier], list[UnitPrice]]:
    """Mirror genai's ModelPrice.calc_price: one term per priced unit, in its order."""
    from genai_prices import types as gt
    from genai_prices.units import _get_registry

    registry = _get_registry()
    terms: list[_Term] = []
    tiers: list[PriceTier] = []
    other: list[UnitPrice] = []
    for key, value in model_price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        unit = registry.unit_for_price_key(key)
        slot = _SLOT_OF_USAGE_KEY.get(unit.usage_key, _NONE)
        if isinstance(value, gt.TieredPrices):
            base = value.base
            steps = tuple((t.start, t.price) for t in reversed(value.tiers))
            kind = _KIND_OF_SLOT.get(slot)
            if kind is not None:
                tiers.extend(
                    PriceTier(kind, t.start, t.price)  # type: ignore[arg-type]
                    for t in value.tiers
                )
        else:
            base, steps = value, ()
        terms.append((slot, base, steps, unit.per))
        if slot not in _KIND_OF_SLOT:
            other.append(UnitPrice(_unit_name(unit.usage_key), unit.per, base, slot == _ONE))
    order = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")
    tiers.sort(key=lambda t: (t.above_input_tokens, order.index(t.kind)))
    return tuple(terms), tiers, other


def _unit_name(usage_key: str) -> str:
    """``web_searches`` -> ``web searches``; ``audio_seconds`` -> ``seconds of audio``."""
    words = usage_key.replace("_", " ")
    if words.endswith(" seconds") or words == "seconds":
        what = words.removesuffix("seconds").strip()
        return f"seconds of {what}" if what else "seconds"
    return words


def _rate_of(terms: tuple[_Term, ...], slot: int) -> Decimal | None:
    for s, base, _steps, per in terms:
        if s == slot:
            # per is 1M for every token unit; normalise anyway so the display stays right.
            return base if per == _MTOK else base * _MTOK / per
    return None


def _genai_usage(usage: Usage, cache_write_1h: int = 0) -> Any:
    from genai_prices import Usage as GenaiUsage

    kwargs: dict[str, int] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.reasoning_tokens:
        # Priced separately only by the few models with a reasoning rate; harmless otherwise.
        kwargs["output_reasoning_tokens"] = usage.reasoning_tokens
    if cache_write_1h:
        kwargs["cache_write_1h_tokens"] = cache_write_1h
    return GenaiUsage(**kwargs)


def _resolve_genai(model: str, provider: str | None) -> ModelPrice | None:
    found = _genai_find(model, provider)
    if found is None:
        return None
    gprovider, info = found
    schedule = _Schedule(
        meta={
            "provider": gprovider.id,
            "model": info.id,
            "source": "genai-prices",
            "name": info.name,
            "snapshot": _snapshot_label(),
            "origin": _snapshot_label(),
        },
        genai=(gprovider, info, any(m is info for m in gprovider.models)),
    )
    price = _price_at(schedule, (), datetime.now(tz=UTC))
    assert isinstance(price, ModelPrice)  # the standard price always exists
    return price


def _at_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _midnight(day: date) -> float:
    return _at_midnight(day).timestamp()


def _utc(at: datetime) -> datetime:
    """``at`` as an aware UTC datetime (a naive one is taken as UTC, as genai-prices does)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _genai_dates(info: Any, variants: list[Any], ctx: _Ctx) -> tuple[list[date], bool]:
    """The start dates that change a genai model's price at tier ``ctx``, and whether a
    price depends on the hour."""
    from genai_prices import types as gt

    dates: list[date] = []
    hourly = False
    conditionals = [] if isinstance(info.prices, gt.ModelPrice) else info.prices
    applied = [v for v in variants if ctx and all(dict(ctx).get(k) == x for k, x in v.when.items())]
    for c in [*conditionals, *applied]:
        if isinstance(c.constraint, gt.StartDateConstraint):
            dates.append(c.constraint.start_date)
        elif isinstance(c.constraint, gt.TimeOfDateConstraint):
            hourly = True
    return dates, hourly


def _variant_covers(variant: Any, pair: tuple[str, str], ctx: _Ctx, at: datetime) -> bool:
    when = variant.when
    if when.get(pair[0]) != pair[1] or any(dict(ctx).get(k) != v for k, v in when.items()):
        return False
    return variant.constraint is None or bool(variant.constraint.active(at))


def _rates_of_terms(terms: tuple[_Term, ...]) -> Rates:
    return Rates(
        input_per_mtok=_rate_of(terms, _INPUT) or _ZERO,
        output_per_mtok=_rate_of(terms, _OUTPUT) or _ZERO,
        cache_read_per_mtok=_rate_of(terms, _CACHE_READ),
        cache_write_per_mtok=_rate_of(terms, _CACHE_WRITE),
        cache_write_1h_per_mtok=_rate_of(terms, _CACHE_WRITE_1H),
        reasoning_per_mtok=_rate_of(terms, _REASONING),
    )


def _rate_terms(rates: Mapping[str, Decimal]) -> tuple[_Term, ...]:
    return tuple(
        (slot, rates[key], (), _MTOK) for key, slot in _SLOT_OF_RATE.items() if key in rates
    )


def _no_tier_price(schedule: _Schedule, pair: tuple[str, str], at: datetime) -> str:
    model = schedule.meta["model"]
    tier = _tier_label(pair)
    where = {
        "genai-prices": f"genai-prices' data ({_snapshot_label()})",
        "file": f"the prices file ({schedule.meta['origin']})",
        "code": "the price set in code",
        "local model": "the bundled local model's price",
    }[schedule.meta["source"]]
    table = tier if re.fullmatch(r"[A-Za-z0-9_-]+", tier) else f'"{tier}"'
    return (
        f"{where} has no {tier!r} service-tier price for model {model!r} on "
        f"{at:%Y-%m-%d} (UTC), and llmctx does not charge such a call the standard rate "
        f'(price that tier in the prices file, [prices."{model}".service_tiers.{table}], or '
        f"in code with llmctx.set_price({model!r}, ..., service_tiers={{{tier!r}: "
        "{'input_per_mtok': ..., 'output_per_mtok': ...}}))"
    )


def _price_at(schedule: _Schedule, ctx: _Ctx, at: datetime) -> ModelPrice | str:
    """The price ``schedule`` sets for tier ``ctx`` on ``at``'s UTC day, or why there is none.

    A tier (``ctx``) the source has no rates for at that date is refused, not priced at the
    standard rate: genai-prices would charge the standard rate, which under-charges a
    priority call and over-charges a flex one.
    """
    at = _utc(at)
    today = at.date()
    note: str | None = None
    units: list[UnitPrice] = []
    long_tiers: list[PriceTier] = []
    service_tiers: list[ServiceTierPrice] = []
    history: list[PriceChange] = []
    if schedule.genai is not None:
        from genai_prices import types as gt

        gprovider, info, own = schedule.genai
        variants = list(info.price_variants or ()) if own else []
        for pair in ctx:
            if not any(_variant_covers(v, pair, ctx, at) for v in variants):
                return _no_tier_price(schedule, pair, at)
        dates, hourly = _genai_dates(info, variants, ctx)
        model_price = info.get_prices(at, dict(ctx) if ctx else None)
        terms, long_tiers, units = _compile_terms(model_price)
        if hourly:
            note = "the price depends on the time of day"
        else:
            note = _self_check(terms, info, gprovider, at, ctx)
        conditionals = (
            [gt.ConditionalPrice(prices=info.prices)]
            if isinstance(info.prices, gt.ModelPrice)
            else info.prices
        )
        if len(conditionals) > 1 and not hourly:
            history = [
                PriceChange(
                    c.constraint.start_date
                    if isinstance(c.constraint, gt.StartDateConstraint)
                    else None,
                    _rates_of_terms(_compile_terms(c.prices)[0]),
                    bool(_compile_terms(c.prices)[1]),
                )
                for c in conditionals
            ]
        seen: set[_Ctx] = set()
        for v in variants:
            when = tuple(sorted(v.when.items()))
            if len(when) != 1 or when in seen or when == ctx or when[0] in _STANDARD_PAIRS:
                continue
            seen.add(when)
            since = (
                v.constraint.start_date
                if isinstance(v.constraint, gt.StartDateConstraint)
                else None
            )
            when_at = (
                at if since is None or since <= today else datetime.combine(since, at.timetz())
            )
            active = [
                w for w in variants
                if tuple(sorted(w.when.items())) == when
                and (w.constraint is None or w.constraint.active(when_at))
            ]  # fmt: skip
            if not active:
                continue
            since = max(
                (w.constraint.start_date for w in active
                 if isinstance(w.constraint, gt.StartDateConstraint)),
                default=None,
            )  # fmt: skip
            tier_terms = _compile_terms(info.get_prices(when_at, dict(when)))[0]
            service_tiers.append(
                ServiceTierPrice(_tier_label(when[0]), _rates_of_terms(tier_terms), since)
            )
    else:
        rates: Mapping[str, Decimal] = schedule.base
        for change_day, changed in schedule.changes:
            if today >= change_day:
                rates = changed
        standard = rates
        for pair in ctx:
            found = [
                r for p, since_day, r in schedule.tiers
                if p == pair and (since_day is None or today >= since_day)
            ]  # fmt: skip
            if not found:
                return _no_tier_price(schedule, pair, at)
            rates = {**rates, **found[-1]}
        terms = _rate_terms(rates)
        dates = [d for d, _ in schedule.changes] + [t[1] for t in schedule.tiers if t[1]]
        if schedule.changes:
            history = [PriceChange(None, _rates_of_terms(_rate_terms(schedule.base)))] + [
                PriceChange(d, _rates_of_terms(_rate_terms(r))) for d, r in schedule.changes
            ]
        for pair, since_day, partial in schedule.tiers:
            if (pair,) == ctx:
                continue
            service_tiers.append(
                ServiceTierPrice(
                    _tier_label(pair),
                    _rates_of_terms(_rate_terms({**standard, **partial})),
                    since_day,
                )
            )
        gprovider = info = None
    earlier = [d for d in dates if d <= today]
    later = [d for d in dates if d > today]
    valid_from = max(earlier) if earlier else None
    valid_until = min(later) if later else None
    rates_now = _rates_of_terms(terms)
    meta = schedule.meta
    return ModelPrice(
        provider=meta["provider"],
        model=meta["model"],
        input_per_mtok=rates_now.input_per_mtok,
        output_per_mtok=rates_now.output_per_mtok,
        cache_read_per_mtok=rates_now.cache_read_per_mtok,
        cache_write_per_mtok=rates_now.cache_write_per_mtok,
        source=meta["source"],
        name=meta.get("name"),
        tiers=tuple(long_tiers),
        other_prices=tuple(u.text for u in units),
        snapshot=meta.get("snapshot"),
        note=note,
        origin=meta.get("origin"),
        unit_prices=tuple(units),
        cache_write_1h_per_mtok=rates_now.cache_write_1h_per_mtok,
        reasoning_per_mtok=rates_now.reasoning_per_mtok,
        service_tier=", ".join(_tier_label(p) for p in ctx) or None,
        service_tiers=tuple(service_tiers),
        history=tuple(history),
        valid_from=valid_from,
        valid_until=valid_until,
        _terms=terms,
        _fast=_compile_fast(terms) if note is None else None,
        _genai=None if info is None else (gprovider, info),
        _expires_at=None if valid_until is None else _midnight(valid_until),
        _valid=None
        if valid_from is None and valid_until is None
        else (
            _EARLIEST if valid_from is None else _at_midnight(valid_from),
            _LATEST if valid_until is None else _at_midnight(valid_until),
        ),
        _schedule=schedule,
        _ctx=ctx,
    )


_STANDARD_PAIRS: Final = frozenset(("service_tier", t) for t in _STANDARD_TIERS)
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
_LATEST: Final = datetime.max.replace(tzinfo=UTC)


def _self_check(
    terms: tuple[_Term, ...], info: Any, gprovider: Any, at: datetime, ctx: _Ctx
) -> str | None:
    """None when the fast path reproduces calc_price exactly on the probes, else why not."""
    fast = _compile_fast(terms)
    for inp, cread, cwrite, cw1h, out, reasoning in _PROBES:
        usage = Usage(
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=cread,
            cache_write_tokens=cwrite,
            reasoning_tokens=reasoning,
        )
        try:
            expected = info.calc_price(
                _genai_usage(usage, cw1h),
                gprovider,
                genai_request_timestamp=at,
                price_context=dict(ctx) if ctx else None,
            ).total_price
        except Exception as exc:  # genai raising on a plain token usage: let it decide per call
            return f"genai-prices prices this model in a way llmctx cannot precompute ({exc})"
        got = _fast_cost(fast, usage, cw1h)
        if got is None or got != expected or str(got) != str(expected):
            return "genai-prices prices this model in a way llmctx cannot precompute"
    return None


# --------------------------------------------------------------------------------------------
# Lookup and pricing.


def _keys(name: str, prov: str | None) -> list[tuple[str, str | None]]:
    keys: list[tuple[str, str | None]] = [(name, prov), (name, None)]
    if "/" in name:
        prefix, rest = name.split("/", 1)
        keys += [(rest, prov or prefix), (rest, None)]
    return keys


def _resolve(model: str, provider: str | None) -> ModelPrice | None:
    name = _norm(model) or ""
    prov = _norm(provider)
    keys = _keys(name, prov)
    with _lock:
        for key in keys:
            hit = _overrides.get(key)
            if hit is not None:
                return hit
        if _file_error is not None:
            # Fail closed: the file may have priced this model; no other source may guess.
            raise _file_error
        for key in keys:
            hit = _file_prices.get(key)
            if hit is not None:
                return hit
    if not name:
        return None
    return _resolve_genai(name, prov) or _local_price(name, prov)


def price_sources(model: str, provider: str | None = None) -> list[ModelPrice]:
    """Every source that prices ``model``, the one in force first (code, file, genai, local).

    What ``llmctx prices MODEL`` shows: the price :func:`lookup_price` returns, then those it
    shadows.

    Raises:
        PricesFileError: the prices file cannot be used.
    """
    _check_file()
    name = _norm(model) or ""
    prov = _norm(provider)
    keys = _keys(name, prov)
    found: list[ModelPrice] = []
    with _lock:
        for layer in (_overrides, _file_prices):
            hit = next((layer[k] for k in keys if k in layer), None)
            if hit is not None:
                found.append(hit)
        error = _file_error
    if error is not None:
        raise error
    if name:
        for other in (_resolve_genai(name, prov), _local_price(name, prov)):
            if other is not None:
                found.append(other)
    return found


def _context(service_tier: str | None, speed: str | None = None) -> _Ctx:
    """The genai-prices price context of a call's service tier (and Anthropic speed)."""
    key = (service_tier, speed)
    hit = _ctx_cache.get(key)
    if hit is not None:
        return hit
    pairs: set[tuple[str, str]] = set()
    if isinstance(service_tier, str):
        tier = service_tier.strip().lower()
        if tier not in _STANDARD_TIERS:
            pairs.add(_tier_pair(tier))
    if isinstance(speed, str) and speed.strip().lower() not in ("", "standard"):
        pairs.add(("speed", speed.strip().lower()))
    ctx = tuple(sorted(pairs))
    if len(_ctx_cache) < 256:
        _ctx_cache[key] = ctx
    return ctx


def _priced_at(
    model: str, provider: str | None, ctx: _Ctx, at: datetime | None
) -> ModelPrice | str | None:
    """The price in force on ``at``'s UTC day (default today) at tier ``ctx``.

    ``None`` when no source knows the model; a reason when its source has no price for that
    tier on that day. Cached per (model, provider, tier, day).
    """
    when = datetime.now(tz=UTC) if at is None else _utc(at)
    key = (model, provider, ctx, when.date())
    hit = _derived.get(key)
    if hit is not None:
        return hit
    generation = _generation
    base = lookup_price(model, provider)
    if base is None or base._schedule is None:
        return base
    got = _price_at(base._schedule, ctx, when)
    with _lock:
        if generation == _generation:
            if len(_derived) >= _CACHE_MAX:
                _invalidate()
            _derived[key] = got
    return got


def price_at(
    price: ModelPrice, *, service_tier: str | None = None, at: datetime | None = None
) -> ModelPrice | str:
    """``price``'s source's price at ``service_tier`` on ``at`` (default now), or why none.

    What ``llmctx prices MODEL --tier T --at DATE`` shows, for any source (code, the prices
    file, genai-prices).

    Args:
        price: a price from :func:`lookup_price` or :func:`price_sources`.
        service_tier: ``"flex"``, ``"priority"``, ``"batch"``, ...; ``None`` or
            ``"default"`` for the standard price.
        at: the moment (a naive datetime is UTC); only its UTC day matters, except for a
            price that depends on the time of day.

    Returns:
        The :class:`ModelPrice` in force then, or the reason the source has none for that
        tier on that day.
    """
    if price._schedule is None:  # pragma: no cover - every price is built with one
        return price
    when = datetime.now(tz=UTC) if at is None else _utc(at)
    return _price_at(price._schedule, _context(service_tier), when)


def lookup_price(
    model: str,
    provider: str | None = None,
    *,
    service_tier: str | None = None,
    at: datetime | None = None,
) -> ModelPrice | None:
    """The price of ``model`` (from ``provider`` when given), or ``None`` when unknown.

    Names as providers return them work: ``"gpt-4o-2024-08-06"``,
    ``"claude-sonnet-4-5-20250929"``, ``"anthropic/claude-sonnet-4-5"``. The first lookup of a
    genai-prices model loads its data (~0.4 s once per process) and checks the compiled price
    against ``genai_prices.calc_price`` (1-3 ms); later lookups are a dict hit.

    Sources, first match wins: prices set in code, the prices file, genai-prices, the
    bundled local model ($0); see the module docstring.

    Args:
        model: the model name.
        provider: a provider id (``"openai"``, ``"anthropic"``, ``"google"``, ...). A provider
            genai-prices does not know yields ``None`` unless code or the file prices it.
        service_tier: the price at this tier (``"flex"``, ``"priority"``, ``"batch"``, ...);
            ``None`` for the standard price.
        at: the price in force at this moment (a naive datetime is UTC); default now.

    Returns:
        The :class:`ModelPrice`, or ``None`` when no source knows the model or its source has
        no price for ``service_tier`` on that day (:func:`price_at` says why).

    Raises:
        PricesFileError: (a ``ConfigError``) the prices file cannot be used and code does not
            price the model: its message names the file, the line and the fix.
    """
    if time.monotonic() >= _file_next_check:
        _check_file()
    if service_tier is not None or at is not None:
        got = _priced_at(model, provider, _context(service_tier), at)
        return got if isinstance(got, ModelPrice) else None
    key = (model, provider)
    hit = _cache.get(key, _MISSING)
    if hit is not _MISSING:
        return hit  # type: ignore[no-any-return]
    generation = _generation
    result = _resolve(model, provider)
    with _lock:
        # Do not store a result computed while an override changed: it may be stale.
        if generation == _generation:
            if len(_cache) >= _CACHE_MAX:
                _invalidate()
            _cache[key] = result
    return result


def _compile_fast(terms: tuple[_Term, ...]) -> _Fast:
    """Fold the terms that do not depend on usage into one constant.

    Those are per-request fees (count 1) and units llmctx never reports (count 0, but
    genai-prices still adds ``rate * 0 / per``, whose exponent shows in the result's
    digits). Decimal addition is exact at these magnitudes, so moving them first changes
    neither value nor exponent; the self-check proves it for every genai-prices price.
    """
    start = _ZERO
    variable: list[_FastTerm] = []
    zero = Decimal(0)
    for slot, base, steps, per in terms:
        if slot == _NONE:
            start += base * zero / per
        elif slot == _ONE:
            start += base * Decimal(1) / per
        else:
            # A kind the call did not use still adds rate * 0 / per (a zero whose exponent
            # shows in the sum's digits): computed once here, not on every call, and None
            # when its exponent is >= 0, as adding it to a sum that starts at Decimal(0)
            # then changes nothing.
            variable.append(
                (
                    slot,
                    base,
                    tuple((at, rate, _zero_term(rate, per)) for at, rate in steps),
                    # Dividing by a Decimal, and multiplying by the int count, gives the very
                    # result of genai's rate * Decimal(count) / per (ints convert exactly),
                    # without two conversions per term.
                    Decimal(per),
                    _zero_term(base, per),
                )
            )
    slots = {t[0] for t in variable}
    return (
        start,
        tuple(variable),
        _CACHE_READ in slots,
        _CACHE_WRITE in slots,
        _CACHE_WRITE_1H in slots,
        _REASONING in slots,
    )


def _zero_term(rate: Decimal, per: int) -> Decimal | None:
    nothing = rate * Decimal(0) / per
    exponent = nothing.as_tuple().exponent
    return nothing if isinstance(exponent, int) and exponent < 0 else None


def _fast_cost(fast: _Fast, usage: Usage, cache_write_1h: int = 0) -> Decimal | None:
    total, terms, has_read, has_write, has_1h, has_reasoning = fast
    inp = usage.input_tokens
    cread = usage.cache_read_tokens
    cwrite = usage.cache_write_tokens
    out = usage.output_tokens
    # Each priced kind counts only the tokens no more specific priced kind takes (genai-prices'
    # leaf values): input without cache reads/writes, 5-minute writes without the 1-hour
    # ones, output without reasoning. A kind without a rate of its own stays in its parent
    # (a cache write without a write rate costs the input rate, as genai-prices does).
    w1h = cache_write_1h if has_1h else 0
    if has_write:
        plain = inp - (cread if has_read else 0) - cwrite
        cwrite -= w1h
    else:
        plain = inp - (cread if has_read else 0) - w1h
    reasoning = usage.reasoning_tokens if has_reasoning else 0
    out -= reasoning
    if plain < 0 or cread < 0 or cwrite < 0 or out < 0 or w1h < 0 or reasoning < 0:
        return None
    counts = (plain, cread, cwrite, w1h, out, reasoning)
    # Same operations as genai_prices' calc_unit_price, so the Decimal (value and exponent)
    # is identical.
    for slot, rate, steps, per, nothing in terms:
        for start, step_rate, step_nothing in steps:
            if inp > start:
                rate, nothing = step_rate, step_nothing
                break
        count = counts[slot]
        if count:
            total += rate * count / per
        elif nothing is not None:
            total += nothing
    return total


def _cost(
    price: ModelPrice, usage: Usage, cache_write_1h: int = 0, at: datetime | None = None
) -> tuple[Decimal | None, str | None]:
    fast = price._fast
    if fast is not None:
        cost = _fast_cost(fast, usage, cache_write_1h)
        if cost is None:
            return None, _inconsistent(usage, cache_write_1h)
        return cost, None
    assert price._genai is not None  # a price without terms always comes from genai
    gprovider, info = price._genai
    try:
        calc = info.calc_price(
            _genai_usage(usage, cache_write_1h),
            gprovider,
            genai_request_timestamp=at,
            price_context=dict(price._ctx) if price._ctx else None,
        )
    except ValueError as exc:
        return None, f"{_inconsistent(usage, cache_write_1h)} ({exc})"
    return calc.total_price, None


def _inconsistent(usage: Usage, cache_write_1h: int = 0) -> str:
    of_1h = (
        f", which must include the 1-hour cache writes ({cache_write_1h})" if cache_write_1h else ""
    )
    return (
        f"the usage is inconsistent (input_tokens={usage.input_tokens} must include "
        f"cache_read_tokens={usage.cache_read_tokens} and "
        f"cache_write_tokens={usage.cache_write_tokens}{of_1h}; output_tokens="
        f"{usage.output_tokens} must include reasoning_tokens={usage.reasoning_tokens}; "
        "counts must be >= 0)"
    )


def unknown_reason(model: str, provider: str | None) -> str:
    where = f" from provider {provider!r}" if provider else ""
    return (
        f"no price known for model {model!r}{where} (set one for every program with "
        f"`llmctx prices set {model} --input USD_PER_MTOK --output USD_PER_MTOK`, or in code "
        f"with llmctx.set_price({model!r}, input_per_mtok=..., output_per_mtok=...))"
    )


def is_unpriced(model: str | None, provider: str | None = None) -> bool:
    """True when nothing prices ``model``: for integrations whose unpriced calls are free.

    Never raises. False when the prices file cannot be used (it might price the model), so
    such a call is priced like any other and fails closed under a money budget.
    """
    if model is None:
        return True
    try:
        return lookup_price(model, provider) is None
    except PricesFileError:
        return False


def price_usage(
    model: str | None,
    usage: Usage,
    provider: str | None = None,
    *,
    raw_usage: Mapping[str, Any] | None = None,
    service_tier: str | None = None,
    at: datetime | None = None,
) -> tuple[Decimal | None, str | None]:
    """The cost in US dollars of one call's ``usage``, or why it has none.

    Args:
        model: the model name the provider reported (``None`` when it reported none).
        usage: the call's usage; ``input_tokens`` includes cache reads and writes.
        provider: the provider id, when known.
        raw_usage: the provider's own usage as recorded (a mapping). Read for what
            ``usage`` does not split: Anthropic's ``cache_creation.ephemeral_1h_input_tokens``
            (1-hour cache writes, charged at their own rate where the data has one; the rest
            of ``usage.cache_write_tokens`` are 5-minute writes), its ``service_tier`` when
            ``service_tier`` is not given, and its ``speed`` (``"fast"``).
        service_tier: the tier the provider served the call at (OpenAI ``flex``,
            ``priority``; ``batch`` for the Batch API), when known. ``"default"``,
            ``"standard"`` and ``"auto"`` are the standard price; a tier the model's source
            has no rates for makes the call unpriced (never the standard rate).
        at: when the call was made (naive means UTC), for the price in force then
            (default: now). A time inside the cached price's validity costs nothing extra.

    Returns:
        ``(cost, None)``, or ``(None, reason)`` when the model has no known price, its source
        has no price for the call's service tier on that day, or the usage is inconsistent.
        Never raises for an unknown model: the caller decides the policy.
    """
    if model is None:
        return None, "the call reported no model name, so it cannot be priced"
    if time.monotonic() >= _file_next_check:
        _check_file()
    cache_write_1h = 0
    speed = None
    if raw_usage is not None:
        created = raw_usage.get("cache_creation")
        if created:
            cache_write_1h = _count_in(created, "ephemeral_1h_input_tokens")
        if service_tier is None:
            tier = raw_usage.get("service_tier")
            service_tier = tier if isinstance(tier, str) else None
        raw_speed = raw_usage.get("speed")
        speed = raw_speed if isinstance(raw_speed, str) and raw_speed != "standard" else None
    ctx = (
        ()
        if speed is None and (service_tier is None or service_tier in _STANDARD_TIERS)
        else _context(service_tier, speed)
    )
    key = (model, provider)
    price = _cache.get(key, _MISSING)
    try:
        if price is _MISSING:
            price = lookup_price(model, provider)
        if price is None:
            return None, unknown_reason(model, provider)
        if at is None:
            if price._expires_at is not None and time.time() >= price._expires_at:
                with _lock:
                    _invalidate()
                price = lookup_price(model, provider)
                if price is None:  # pragma: no cover - a dated price change never removes a model
                    return None, unknown_reason(model, provider)
            stale = False
        else:
            valid = price._valid
            if valid is None:  # the price never changes: any time is inside
                stale = False
            else:
                if at.tzinfo is None:
                    at = at.replace(tzinfo=UTC)
                stale = not valid[0] <= at < valid[1]
        if ctx or stale:
            got = _priced_at(model, provider, ctx, at)
            if got is None:  # pragma: no cover - the standard price was just found
                return None, unknown_reason(model, provider)
            if isinstance(got, str):
                return None, got
            price = got
    except PricesFileError as exc:
        return None, str(exc)
    return _cost(price, usage, cache_write_1h, at)


def _count_in(data: Any, key: str) -> int:
    """``data[key]`` (or its attribute) when it is a token count, else 0."""
    value = data.get(key) if isinstance(data, Mapping) else getattr(data, key, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def estimate_cost(
    model: str,
    input_tokens: int,
    max_output_tokens: int,
    provider: str | None = None,
    *,
    service_tier: str | None = None,
    at: datetime | None = None,
) -> Decimal | None:
    """The most a call can cost: for reservations made before it is sent.

    Every input token is priced at the highest input-side rate that can apply to it (the
    input rate, or a cache rate when that is higher, as Anthropic's cache writes are), at
    the tier the prompt's size selects; every possible output token at the output rate. A
    price that varies by the time of day takes its highest variant. So the estimate is never
    below what :func:`price_usage` charges for the same token counts.

    Args:
        model: the model name.
        input_tokens: the prompt's tokens (an estimate is fine; over is safer than under).
        max_output_tokens: the request's output cap.
        provider: the provider id, when known.
        service_tier: the tier the request asks for (``"flex"``, ``"priority"``,
            ``"batch"``); ``None`` for the standard price. A higher tier costs more than the
            standard estimate, so pass it when the request names one.
        at: when the call is made (default now), for the price in force then.

    Returns:
        The worst-case cost in US dollars, or ``None`` when the model has no known price
        (or none at ``service_tier`` on that day).

    Raises:
        ConfigError: a token count is negative.
        PricesFileError: the prices file cannot be used (so a budgeted call is refused).
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ConfigError(
            f"token counts must be >= 0, got input_tokens={input_tokens}, "
            f"max_output_tokens={max_output_tokens}"
        )
    if service_tier in _STANDARD_TIERS:
        service_tier = None  # "auto", "default", "standard": the standard price, cached
    price = lookup_price(model, provider, service_tier=service_tier, at=at)
    if price is None:
        return None
    if price._fast is not None:
        return _worst_case(price._terms, input_tokens, max_output_tokens)
    assert price._genai is not None
    _gprovider, info = price._genai
    from genai_prices import types as gt

    variants = (
        [info.prices] if isinstance(info.prices, gt.ModelPrice) else [c.prices for c in info.prices]
    )
    return max(
        _worst_case(terms, input_tokens, max_output_tokens)
        for terms in (price._terms, *(_compile_terms(v)[0] for v in variants))
    )


# Per-token worst-case rates of prices without tiers, keyed by id(terms) and holding `terms`
# itself so a recycled id can never match: estimate_cost runs before every budgeted call.
_flat_worst: dict[int, tuple[tuple[_Term, ...], Decimal, Decimal, Decimal]] = {}


def _worst_case(terms: tuple[_Term, ...], input_tokens: int, max_output: int) -> Decimal:
    flat = _flat_worst.get(id(terms))
    if flat is not None and flat[0] is terms:
        _, in_rate, out_rate, fixed = flat
        return in_rate * input_tokens + out_rate * max_output + fixed
    if not any(steps for _s, _b, steps, _p in terms):
        per_mtok = _worst_case_uncached(terms, 1, 0), _worst_case_uncached(terms, 0, 1)
        fixed = _worst_case_uncached(terms, 0, 0)
        if len(_flat_worst) > 4096:
            _flat_worst.clear()
        _flat_worst[id(terms)] = (terms, per_mtok[0] - fixed, per_mtok[1] - fixed, fixed)
    return _worst_case_uncached(terms, input_tokens, max_output)


def _worst_case_uncached(terms: tuple[_Term, ...], input_tokens: int, max_output: int) -> Decimal:
    def rate(slot: int) -> Decimal | None:
        for s, base, steps, per in terms:
            if s == slot:
                chosen = base
                for start, step_rate in steps:
                    if input_tokens > start:
                        chosen = step_rate
                        break
                return chosen / per * _MTOK
        return None

    inputs = (rate(_INPUT), rate(_CACHE_READ), rate(_CACHE_WRITE), rate(_CACHE_WRITE_1H))
    candidates = [r for r in inputs if r is not None]
    in_rate = max(candidates) if candidates else _ZERO
    outputs = [r for r in (rate(_OUTPUT), rate(_REASONING)) if r is not None]
    out_rate = max(outputs) if outputs else _ZERO
    total = in_rate * input_tokens / _MTOK + out_rate * max_output / _MTOK
    for s, base, _steps, per in terms:
        if s == _ONE:
            total += base / per
    return total


def known_models(provider: str | None = None) -> list[str]:
    """Every model id a price is known for (code, the prices file, genai-prices), sorted.

    Args:
        provider: only models of this provider id.
    """
    _check_file()
    prov = _norm(provider)
    names: set[str] = set()
    with _lock:
        for layer in (_overrides, _file_prices):
            names.update(m for (m, p) in layer if prov is None or p in (None, prov))
    for gp in _snapshot().providers:
        if prov is None or gp.id == prov:
            names.update(m.id for m in gp.models)
    return sorted(names)
