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

Lookups are cached per ``(model, provider)`` (misses too); changing an override or the file
empties the cache. Pricing one call (:func:`price_usage`) with a cached price costs a few
microseconds: the genai-prices price is compiled once into a short list of
``(token kind, rate)`` terms that reproduce ``genai_prices.calc_price`` operation by operation,
so the result is the very same ``Decimal``. Every compiled price is checked against
``calc_price`` on two probe usages when it is first looked up; a price that does not
reproduce exactly (or that varies with the time of day) is marked "complex" and every call
goes through ``calc_price`` instead.

Unknown prices are reported, never guessed: :func:`price_usage` returns ``(None, reason)``
and the caller applies the unknown-price policy (a money budget fails closed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    "PriceTier",
    "UnitPrice",
    "clear_prices",
    "estimate_cost",
    "is_unpriced",
    "known_models",
    "lookup_price",
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
_INPUT, _CACHE_READ, _CACHE_WRITE, _OUTPUT, _NONE, _ONE = range(6)
_SLOT_OF_USAGE_KEY: Final = {
    "input_tokens": _INPUT,
    "cache_read_tokens": _CACHE_READ,
    "cache_write_tokens": _CACHE_WRITE,
    "output_tokens": _OUTPUT,
    "requests": _ONE,
}
_KIND_OF_SLOT: Final = {
    _INPUT: "input",
    _CACHE_READ: "cache_read",
    _CACHE_WRITE: "cache_write",
    _OUTPUT: "output",
}

# (slot, base rate, tiers highest-threshold first as (start, rate), per)
_Term = tuple[int, Decimal, tuple[tuple[int, Decimal], ...], int]
# The fast path: (sum of the terms that do not depend on usage, the token terms,
# has a cache-read term, has a cache-write term)
_Fast = tuple[Decimal, tuple[_Term, ...], bool, bool]

# Probe usages for the self-check: odd, distinct counts so a wrongly routed term shows up,
# one above every tier threshold in the data (they are all <= 1M input tokens) and one below.
_PROBES: Final = (
    (1_234_567, 234_561, 34_567, 45_673),
    (1_013, 211, 97, 503),
)


@dataclass(frozen=True, slots=True)
class PriceTier:
    """A higher rate that applies to *all* tokens of a kind once a call's input exceeds a size.

    genai-prices' "cliff" model: with a tier at 200,000, a call with 200,001 input tokens pays
    the tier rate for every token of that kind, not only for those above the threshold.
    """

    kind: Literal["input", "output", "cache_read", "cache_write"]
    above_input_tokens: int
    per_mtok: Decimal


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
    # Compiled pricing: every priced unit as a term; the fast path, or None to call
    # calc_price on the genai (provider, model) pair; _expires_at (epoch seconds) is when a
    # dated price change makes this entry stale.
    _terms: tuple[_Term, ...] = field(default=(), repr=False, compare=False)
    _fast: _Fast | None = field(default=None, repr=False, compare=False)
    _genai: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)
    _expires_at: float | None = field(default=None, repr=False, compare=False)

    @property
    def tiered(self) -> bool:
        """True when some rate goes up for long prompts."""
        return bool(self.tiers)

    def cost(self, usage: Usage) -> Decimal:
        """The cost of ``usage`` at this price, in US dollars.

        Args:
            usage: one call's usage (``input_tokens`` includes the cache tokens).

        Returns:
            The exact ``Decimal`` ``genai_prices.calc_price`` would return for genai-prices
            data; for overrides, the sum of each token kind times its rate.

        Raises:
            PriceError: the usage is inconsistent (more cache tokens than input tokens).
        """
        from ._exceptions import PriceError

        cost, reason = _cost(self, usage)
        if cost is None:
            raise PriceError(reason or "the usage could not be priced")
        return cost


# --------------------------------------------------------------------------------------------
# State: overrides and the lookup cache.

_lock = threading.Lock()
_overrides: dict[tuple[str, str | None], ModelPrice] = {}
_cache: dict[tuple[str, str | None], ModelPrice | None] = {}
_generation = 0
_CACHE_MAX: Final = 4096
_MISSING: Final[Any] = object()


def _invalidate() -> None:
    # Caller holds _lock. A new dict (rather than .clear()) keeps lock-free readers safe.
    global _cache, _generation
    _cache = {}
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


def _override_price(
    model: str,
    *,
    input_per_mtok: Number,
    output_per_mtok: Number,
    cache_read_per_mtok: Number | None,
    cache_write_per_mtok: Number | None,
    provider: str | None,
    source: PriceSource = "code",
    origin: str = "llmctx.set_price",
) -> ModelPrice:
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model must be a non-empty model name, got {model!r}")
    if provider is not None and (not isinstance(provider, str) or not provider.strip()):
        raise ConfigError(f"provider must be None or a non-empty provider id, got {provider!r}")
    inp = _to_rate("input_per_mtok", input_per_mtok)
    out = _to_rate("output_per_mtok", output_per_mtok)
    cread = _to_optional_rate("cache_read_per_mtok", cache_read_per_mtok)
    cwrite = _to_optional_rate("cache_write_per_mtok", cache_write_per_mtok)
    terms: list[_Term] = [(_INPUT, inp, (), _MTOK)]
    if cread is not None:
        terms.append((_CACHE_READ, cread, (), _MTOK))
    if cwrite is not None:
        terms.append((_CACHE_WRITE, cwrite, (), _MTOK))
    terms.append((_OUTPUT, out, (), _MTOK))
    return ModelPrice(
        provider=provider.strip() if provider else None,
        model=model.strip(),
        input_per_mtok=inp,
        output_per_mtok=out,
        cache_read_per_mtok=cread,
        cache_write_per_mtok=cwrite,
        source=source,
        origin=origin,
        _terms=tuple(terms),
        _fast=_compile_fast(tuple(terms)),
    )


def set_price(
    model: str,
    *,
    input_per_mtok: Number,
    output_per_mtok: Number,
    cache_read_per_mtok: Number | None = None,
    cache_write_per_mtok: Number | None = None,
    provider: str | None = None,
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
        cache_write_per_mtok: per million cache-write tokens; ``None`` charges the input rate.
        provider: restrict the override to this provider id; ``None`` applies to all.

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
                    provider=entry.provider,
                    source="file",
                    origin=f"{where.path}, line {entry.line}" if entry.line else str(where.path),
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
    return ModelPrice(
        provider=_LOCAL_PROVIDER,
        model=model,
        input_per_mtok=_ZERO,
        output_per_mtok=_ZERO,
        source="local model",
        origin=origin,
        # No terms: every usage costs exactly Decimal(0).
        _fast=(_ZERO, (), False, False),
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


def _active_model_price(info: Any, now: datetime) -> tuple[Any, float | None, str | None]:
    """genai's price in force at ``now``, when it next changes, and why it is complex."""
    from genai_prices import types as gt

    prices = info.prices
    if isinstance(prices, gt.ModelPrice):
        return prices, None, None
    if any(isinstance(c.constraint, gt.TimeOfDateConstraint) for c in prices):
        return info.get_prices(now), None, "the price depends on the time of day"
    today = now.date()
    upcoming = [
        c.constraint.start_date
        for c in prices
        if isinstance(c.constraint, gt.StartDateConstraint) and c.constraint.start_date > today
    ]
    expires = None
    if upcoming:
        first = min(upcoming)
        expires = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
    return info.get_prices(now), expires, None


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
    order = ("input", "output", "cache_read", "cache_write")
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


def _genai_usage(usage: Usage) -> Any:
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
    return GenaiUsage(**kwargs)


def _resolve_genai(model: str, provider: str | None) -> ModelPrice | None:
    found = _genai_find(model, provider)
    if found is None:
        return None
    gprovider, info = found
    now = datetime.now(tz=UTC)
    model_price, expires_at, note = _active_model_price(info, now)
    terms, tiers, units = _compile_terms(model_price)
    if note is None and _reasoning_priced(model_price):
        note = "reasoning tokens have a rate of their own"
    if note is None:
        note = _self_check(terms, info, gprovider, now)
    return ModelPrice(
        provider=gprovider.id,
        model=info.id,
        input_per_mtok=_rate_of(terms, _INPUT) or _ZERO,
        output_per_mtok=_rate_of(terms, _OUTPUT) or _ZERO,
        cache_read_per_mtok=_rate_of(terms, _CACHE_READ),
        cache_write_per_mtok=_rate_of(terms, _CACHE_WRITE),
        source="genai-prices",
        name=info.name,
        tiers=tuple(tiers),
        other_prices=tuple(u.text for u in units),
        snapshot=_snapshot_label(),
        note=note,
        origin=_snapshot_label(),
        unit_prices=tuple(units),
        _terms=terms,
        _fast=_compile_fast(terms) if note is None else None,
        _genai=found,
        _expires_at=expires_at,
    )


def _reasoning_priced(model_price: Any) -> bool:
    return any(
        k.startswith("output_reasoning") or k.startswith("output_text_reasoning")
        for k, v in model_price.__dict__.items()
        if v is not None
    )


def _self_check(terms: tuple[_Term, ...], info: Any, gprovider: Any, now: datetime) -> str | None:
    """None when the fast path reproduces calc_price exactly on the probes, else why not."""
    for inp, cread, cwrite, out in _PROBES:
        usage = Usage(
            input_tokens=inp, output_tokens=out, cache_read_tokens=cread, cache_write_tokens=cwrite
        )
        try:
            expected = info.calc_price(
                _genai_usage(usage), gprovider, genai_request_timestamp=now
            ).total_price
        except Exception as exc:  # genai raising on a plain token usage: let it decide per call
            return f"genai-prices prices this model in a way llmctx cannot precompute ({exc})"
        got = _fast_cost(_compile_fast(terms), usage)
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


def lookup_price(model: str, provider: str | None = None) -> ModelPrice | None:
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

    Returns:
        The :class:`ModelPrice`, or ``None``.

    Raises:
        PricesFileError: (a ``ConfigError``) the prices file cannot be used and code does not
            price the model: its message names the file, the line and the fix.
    """
    if time.monotonic() >= _file_next_check:
        _check_file()
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
    variable: list[_Term] = []
    for term in terms:
        slot, base, _steps, per = term
        if slot == _NONE:
            start += base * Decimal(0) / per
        elif slot == _ONE:
            start += base * Decimal(1) / per
        else:
            variable.append(term)
    slots = {t[0] for t in variable}
    return start, tuple(variable), _CACHE_READ in slots, _CACHE_WRITE in slots


def _fast_cost(fast: _Fast, usage: Usage) -> Decimal | None:
    total, terms, has_read, has_write = fast
    inp = usage.input_tokens
    cread = usage.cache_read_tokens
    cwrite = usage.cache_write_tokens
    out = usage.output_tokens
    # Input tokens not priced as cache reads/writes; a cache kind without a rate of its own
    # stays in here, at the input rate (genai-prices does the same).
    plain = inp - (cread if has_read else 0) - (cwrite if has_write else 0)
    if plain < 0 or cread < 0 or cwrite < 0 or out < 0:
        return None
    counts = (plain, cread, cwrite, out)
    # Same operations as genai_prices' calc_unit_price, so the Decimal (value and exponent)
    # is identical.
    for slot, base, steps, per in terms:
        rate = base
        for start, step_rate in steps:
            if inp > start:
                rate = step_rate
                break
        total += rate * Decimal(counts[slot]) / per
    return total


def _cost(price: ModelPrice, usage: Usage) -> tuple[Decimal | None, str | None]:
    fast = price._fast
    if fast is not None:
        cost = _fast_cost(fast, usage)
        if cost is None:
            return None, _inconsistent(usage)
        return cost, None
    assert price._genai is not None  # a price without terms always comes from genai
    gprovider, info = price._genai
    try:
        calc = info.calc_price(_genai_usage(usage), gprovider)
    except ValueError as exc:
        return None, f"{_inconsistent(usage)} ({exc})"
    return calc.total_price, None


def _inconsistent(usage: Usage) -> str:
    return (
        f"the usage is inconsistent (input_tokens={usage.input_tokens} must include "
        f"cache_read_tokens={usage.cache_read_tokens} and "
        f"cache_write_tokens={usage.cache_write_tokens}; counts must be >= 0)"
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
        raw_usage: the provider's own usage object as recorded (for what ``usage`` does not
            split, such as cache writes by TTL).
        service_tier: the tier the provider served the call at (OpenAI ``flex``,
            ``priority``; ``batch`` for the Batch API), when known.
        at: when the call was made, for the price in force then (default: now).

    Returns:
        ``(cost, None)``, or ``(None, reason)`` when the model has no known price or the usage
        is inconsistent. Never raises for an unknown model: the caller decides the policy.
    """
    if model is None:
        return None, "the call reported no model name, so it cannot be priced"
    if time.monotonic() >= _file_next_check:
        _check_file()
    key = (model, provider)
    price = _cache.get(key, _MISSING)
    try:
        if price is _MISSING:
            price = lookup_price(model, provider)
        if price is None:
            return None, unknown_reason(model, provider)
        if price._expires_at is not None and time.time() >= price._expires_at:
            with _lock:
                _invalidate()
            price = lookup_price(model, provider)
            if price is None:  # pragma: no cover - a dated price change never removes a model
                return None, unknown_reason(model, provider)
    except PricesFileError as exc:
        return None, str(exc)
    return _cost(price, usage)


def estimate_cost(
    model: str, input_tokens: int, max_output_tokens: int, provider: str | None = None
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

    Returns:
        The worst-case cost in US dollars, or ``None`` when the model has no known price.

    Raises:
        ConfigError: a token count is negative.
        PricesFileError: the prices file cannot be used (so a budgeted call is refused).
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ConfigError(
            f"token counts must be >= 0, got input_tokens={input_tokens}, "
            f"max_output_tokens={max_output_tokens}"
        )
    price = lookup_price(model, provider)
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
    return max(_worst_case(_compile_terms(v)[0], input_tokens, max_output_tokens) for v in variants)


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

    candidates = [r for r in (rate(_INPUT), rate(_CACHE_READ), rate(_CACHE_WRITE)) if r is not None]
    in_rate = max(candidates) if candidates else _ZERO
    out_rate = rate(_OUTPUT) or _ZERO
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
