"""Budgets: limits as data, and ledgers that hold what was spent and what is reserved.

A call reserves its worst case (input tokens + max output tokens, priced) *before* it is sent;
the reservation is settled with the actual usage when the call ends, or released when it
fails. A ledger's ``reserve`` is atomic: the check and the hold happen together, so concurrent
callers (tasks, threads, or processes with a shared Redis ledger) never take a budget past its
limit together.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol, runtime_checkable

from ._exceptions import BudgetExceeded, ConfigError
from ._interrupt import protected

__all__ = [
    "Amount",
    "Budget",
    "BudgetWarning",
    "BudgetWindow",
    "Holds",
    "Ledger",
    "LedgerSnapshot",
    "MemoryLedger",
]

logger = logging.getLogger("llmctx")
warn_logger = logging.getLogger("llmctx.budget")

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Amount:
    """What a call costs, or may cost, in the dimensions a budget limits.

    ``requests`` counts model requests (what a provider bills per request); ``calls`` counts
    model calls and ``tool_calls`` MCP tool calls, for caps on runaway agent loops.
    """

    usd: Decimal = _ZERO
    tokens: int = 0
    requests: int = 0
    calls: int = 0
    tool_calls: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(
            self.usd + other.usd,
            self.tokens + other.tokens,
            self.requests + other.requests,
            self.calls + other.calls,
            self.tool_calls + other.tool_calls,
        )

    def __sub__(self, other: Amount) -> Amount:
        return Amount(
            self.usd - other.usd,
            self.tokens - other.tokens,
            self.requests - other.requests,
            self.calls - other.calls,
            self.tool_calls - other.tool_calls,
        )

    def get(self, dimension: str) -> Decimal | int:
        """The value in ``usd``, ``tokens``, ``requests``, ``calls`` or ``tool_calls``."""
        value: Decimal | int = getattr(self, dimension)
        return value


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """A ledger's state at one moment: spend and what calls in flight hold.

    Attributes:
        spent: settled spend, plus the reserved amount of every reservation that expired
            unsettled (see ``expired``).
        reserved: the sum of the live reservations.
        reservations: how many reservations are live.
        expired: the part of ``spent`` counted only because a reservation's holder vanished:
            the reserved amounts of reservations that expired (a process crashed, stalled or
            lost Redis longer than the reservation's ttl) and were not settled since. A
            settle that arrives later moves its reservation's share from here to its actual
            spend. Always zero for :class:`MemoryLedger`, whose reservations never expire.
    """

    spent: Amount
    reserved: Amount
    reservations: int
    expired: Amount = Amount()


@runtime_checkable
class Ledger(Protocol):
    """Holds one budget's spend and reservations. Every method is atomic and thread-safe."""

    def reserve(self, amount: Amount, budget: Budget) -> str:
        """Hold ``amount`` if it fits under ``budget``; return a reservation token.

        Raises:
            BudgetExceeded: it does not fit; nothing was held.
        """

    def settle(self, token: str, actual: Amount) -> None:
        """Replace the reservation by the actual spend. Unknown or settled tokens: no-op."""

    def release(self, token: str) -> None:
        """Drop the reservation without spending. Unknown or settled tokens: no-op."""

    def snapshot(self, budget: Budget | None = None) -> LedgerSnapshot:
        """Current spend and reservations (of ``budget``'s account and window, if given)."""

    def restore(self, spent: Amount) -> None:
        """Set the settled spend (used when a session is resumed from its store)."""


def _parse_usd(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError("Budget(usd=...) must be a number of dollars such as '0.50', not a bool")
    try:
        usd = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ConfigError(
            f"Budget(usd={value!r}) is not a number; pass dollars as a string, e.g. usd='0.50'"
        ) from None
    if not usd.is_finite() or usd < 0:
        raise ConfigError(f"Budget(usd={value!r}) must be a finite amount >= 0, e.g. usd='0.50'")
    return usd


def _parse_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"Budget({name}={value!r}) must be a whole number >= 0, e.g. {name}=50_000"
        )
    if value < 0:
        raise ConfigError(f"Budget({name}={value!r}) is negative; a limit must be >= 0")
    return value


_DIMS: tuple[str, ...] = ("usd", "tokens", "requests", "calls", "tool_calls")

_UNITS: Final = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_DURATION: Final = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_PERIODS: Final = ("day", "week", "month")
_KEY_FORBIDDEN: Final = re.compile(r"[{}\s]")


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """The period a budget counts spend over; spend from an earlier window no longer counts.

    A duration (``"60s"``, ``"1h"``, ``"1d"``, a ``timedelta``) is a run of back-to-back
    windows of that length aligned on the Unix epoch (UTC): a ``"1h"`` window starts on the
    hour. A calendar period (``"day"``, ``"week"`` from Monday, ``"month"``) starts at
    midnight in ``tz``. Build one through ``Budget(window=..., tz=...)``.

    Attributes:
        spec: the canonical text: ``"3600s"`` or ``"day@Europe/Paris"`` (names the window
            in Redis keys and in ``llmctx budgets``).
        length_ms: a duration's length in milliseconds; 0 for a calendar period.
        period: ``"day"``, ``"week"`` or ``"month"``; None for a duration.
        tz: the calendar period's time zone (IANA name).
    """

    spec: str
    length_ms: int = 0
    period: str | None = None
    tz: str = "UTC"

    @classmethod
    def parse(cls, window: str | timedelta, tz: str = "UTC") -> BudgetWindow:
        """The window ``window`` names.

        Raises:
            ConfigError: an unknown window, a zero or negative duration, an unknown time zone.
        """
        if isinstance(window, timedelta):
            length = window // timedelta(milliseconds=1)
            if length <= 0:
                raise ConfigError(f"Budget(window={window!r}) must be a positive duration")
            return cls(f"{length // 1000}s" if length % 1000 == 0 else f"{length}ms", length)
        if not isinstance(window, str):
            raise ConfigError(
                f"Budget(window={window!r}) must be a duration such as '60s', '1h', '1d' or "
                "a timedelta, or a calendar period 'day', 'week' or 'month'"
            )
        text = window.strip().lower()
        if text in _PERIODS:
            try:
                from zoneinfo import ZoneInfo

                ZoneInfo(tz)
            except Exception:
                raise ConfigError(
                    f"Budget(tz={tz!r}) is not a time zone this machine knows; use an IANA "
                    "name such as 'UTC' or 'Europe/Paris' (pip install tzdata if none is known)"
                ) from None
            return cls(f"{text}@{tz}", 0, text, tz)
        match = _DURATION.fullmatch(text.replace(" ", ""))
        if match is None:
            raise ConfigError(
                f"Budget(window={window!r}) is not a window llmctx knows: use a duration "
                "such as '60s', '15m', '1h', '1d', '2w' (units ms, s, m, h, d, w) or a "
                "timedelta, or a calendar period 'day', 'week' or 'month' (with tz=...)"
            )
        length = int(match[1]) * _UNITS[match[2]]
        if length <= 0:
            raise ConfigError(f"Budget(window={window!r}) must be a positive duration")
        return cls(f"{length // 1000}s" if length % 1000 == 0 else f"{length}ms", length)

    def bounds(self, now_ms: int) -> tuple[int, int]:
        """The window holding the instant ``now_ms`` (Unix milliseconds): [start, end)."""
        if self.length_ms:
            start = now_ms - now_ms % self.length_ms
            return start, start + self.length_ms
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(now_ms / 1000, zone)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        if self.period == "day":
            first, after = day, day + timedelta(days=1)
        elif self.period == "week":
            first = day - timedelta(days=day.weekday())
            after = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            after = (first + timedelta(days=32)).replace(day=1)

        def ms(naive: datetime) -> int:
            return int(naive.replace(tzinfo=zone).astimezone(UTC).timestamp() * 1000)

        return ms(first), ms(after)


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A soft limit was reached: what ``Budget(on_warn=...)`` is called with (and logged).

    Attributes:
        budget: the budget whose ``warn_at`` was reached.
        key: its spend account (None: the ledger's own account).
        dimension: ``"usd"``, ``"tokens"``, ``"requests"``, ``"calls"`` or ``"tool_calls"``.
        spent: settled spend plus what calls in flight hold, in that dimension, when the
            reservation that crossed the threshold was taken.
        limit: the budget's (hard) limit in that dimension.
        window: the budget's window (its spec: ``"3600s"``, ``"day@Europe/Paris"``), None
            without a window.
        window_start: the start of the window it happened in (UTC), None without a window.
    """

    budget: Budget
    key: str | None
    dimension: str
    spent: Decimal | int
    limit: Decimal | int
    window: str | None = None
    window_start: datetime | None = None

    def __str__(self) -> str:
        share = Decimal(self.spent) / Decimal(self.limit) if self.limit else Decimal(1)
        where = f" {self.key!r}" if self.key else ""
        when = ""
        if self.window is not None and self.window_start is not None:
            when = f" in its {self.window} window from {self.window_start:%Y-%m-%d %H:%M:%S} UTC"
        return (
            f"budget{where} reached {share:.0%} of its {self.dimension} limit "
            f"({self.spent} of {self.limit}){when}"
        )


class Budget:
    """Limits on money, tokens, requests and call counts for a session and what nests in it.

    Args:
        usd: money limit in dollars (``"0.50"``, ``Decimal``, int or float; kept as Decimal).
        tokens: limit on input + output tokens.
        requests: limit on the number of model requests.
        calls: limit on the number of model calls (a cap for runaway agent loops).
        tool_calls: limit on the number of MCP tool calls.
        ledger: where spend is kept. By default a fresh in-memory ledger, or, for a budget
            with a ``key``, one in-memory ledger this process shares between every budget of
            that key. Pass a shared one (``llmctx.RedisLedger``) to let several processes or
            machines share the budget.
        key: names a spend account (``"user:42"``, ``"tenant:acme"``): every budget with the
            same key on the same ledger, in every session and process using that ledger,
            draws on one account. None: the ledger's own account.
        window: spend counts only within a window: a duration (``"60s"``, ``"1h"``, ``"1d"``,
            a ``timedelta``; back-to-back windows aligned on the Unix epoch) or a calendar
            period (``"day"``, ``"week"``, ``"month"`` in ``tz``). A reservation settles into
            the window it was reserved in. None: spend counts forever.
        tz: the time zone of a calendar window (IANA name, default UTC).
        warn_at: a soft limit, a fraction in (0, 1]: the first reservation in a window that
            takes settled spend plus what is in flight to ``warn_at`` x a limit fires
            ``on_warn`` once (per dimension and window, across processes on Redis) and logs
            a warning on the ``llmctx.budget`` logger.
        on_warn: called with a :class:`BudgetWarning` (in the thread or task that reserved;
            an exception it raises is logged, never raised into the call).
        on_exceed: what a refusal of this budget does. None (the default) raises
            :class:`BudgetExceeded`. A callable is called with that error (``refusal.request``
            is a copy of the refused request's body) and returns the fields to change in the
            request, e.g. ``{"model": "gpt-4o-mini"}`` or ``{"max_tokens": 256}``, or None to
            raise after all; the changed request goes through the charge path again (at most
            3 times a call), so it is priced, reserved and recorded like any call. The refused
            one is recorded as ``refused``. Applies to the OpenAI and Anthropic SDKs (and the
            frameworks built on them); elsewhere the error is raised as without it.
        shared: the key must be shared by every process: a ledger that lives in one process
            (in memory) is refused with a ConfigError instead of silently splitting the
            account per process.

    Raises:
        ConfigError: a negative, non-numeric or non-finite limit; an unknown window or time
            zone; ``warn_at`` outside (0, 1]; a malformed key; ``shared=True`` without a
            ledger that can share it.
    """

    __slots__ = (
        "_account",
        "calls",
        "key",
        "ledger",
        "on_exceed",
        "on_warn",
        "requests",
        "tokens",
        "tool_calls",
        "usd",
        "warn_at",
        "window",
    )

    def __init__(
        self,
        usd: Decimal | str | int | float | None = None,
        tokens: int | None = None,
        requests: int | None = None,
        *,
        calls: int | None = None,
        tool_calls: int | None = None,
        ledger: Ledger | None = None,
        key: str | None = None,
        window: str | timedelta | None = None,
        tz: str = "UTC",
        warn_at: float | None = None,
        on_warn: Callable[[BudgetWarning], object] | None = None,
        on_exceed: Callable[[BudgetExceeded], Mapping[str, Any] | None] | None = None,
        shared: bool = False,
    ) -> None:
        self.usd = _parse_usd(usd)
        self.tokens = _parse_count("tokens", tokens)
        self.requests = _parse_count("requests", requests)
        self.calls = _parse_count("calls", calls)
        self.tool_calls = _parse_count("tool_calls", tool_calls)
        if key is not None and (
            not isinstance(key, str) or not key or len(key) > 200 or _KEY_FORBIDDEN.search(key)
        ):
            raise ConfigError(
                f"Budget(key={key!r}) must be a non-empty string of at most 200 characters "
                "without spaces or braces, e.g. key='user:42'"
            )
        self.key = key
        self.window: BudgetWindow | None = (
            None if window is None else BudgetWindow.parse(window, tz)
        )
        if warn_at is not None and (
            isinstance(warn_at, bool)
            or not isinstance(warn_at, int | float | Decimal)
            or not 0 < warn_at <= 1
        ):
            raise ConfigError(
                f"Budget(warn_at={warn_at!r}) must be a fraction of the limit in (0, 1], "
                "e.g. warn_at=0.8 to warn at 80%"
            )
        if on_warn is not None and not callable(on_warn):
            raise ConfigError(f"Budget(on_warn={on_warn!r}) must be a callable or None")
        if on_exceed is not None and not callable(on_exceed):
            raise ConfigError(
                f"Budget(on_exceed={on_exceed!r}) must be a callable or None: it gets the "
                "BudgetExceeded and returns the request fields to change (or None to raise)"
            )
        self.on_exceed = on_exceed
        self.warn_at = None if warn_at is None else float(warn_at)
        self.on_warn = on_warn
        if ledger is None:
            if shared:
                raise ConfigError(
                    f"Budget(key={key!r}, shared=True) needs a ledger every process can reach, "
                    "and an in-memory one lives in this process only; pass "
                    "ledger=llmctx.RedisLedger('redis://...', name='...')"
                )
            ledger = MemoryLedger() if key is None else _process_ledger()
        elif shared and not getattr(ledger, "shared_across_processes", False):
            raise ConfigError(
                f"Budget(key={key!r}, shared=True) needs a ledger every process can reach, "
                f"and {type(ledger).__name__} lives in this process only; pass "
                "ledger=llmctx.RedisLedger('redis://...', name='...')"
            )
        self.ledger: Ledger = ledger
        #: The account this budget draws on within its ledger: (key, window spec).
        self._account: tuple[str | None, str | None] = (
            key,
            None if self.window is None else self.window.spec,
        )

    def __repr__(self) -> str:
        parts = [f"{dim}={value!r}" for dim in _DIMS if (value := getattr(self, dim)) is not None]
        if self.key is not None:
            parts.append(f"key={self.key!r}")
        if self.window is not None:
            parts.append(f"window={self.window.spec!r}")
        return f"Budget({', '.join(parts)})"

    def limit(self, dimension: str) -> Decimal | int | None:
        """The limit in ``usd``, ``tokens``, ``requests``, ``calls`` or ``tool_calls`` (None:
        unlimited).

        Raises:
            ValueError: ``dimension`` is not one of the five.
        """
        if dimension not in _DIMS:
            raise ValueError(f"a budget has no dimension {dimension!r}; use one of {_DIMS}")
        value: Decimal | int | None = getattr(self, dimension)
        return value

    def snapshot(self) -> LedgerSnapshot:
        """This budget's account in its current window: spend and what is in flight.

        Raises:
            StoreError: a shared ledger could not be reached.
        """
        return self.ledger.snapshot(self)

    def warn_thresholds(self) -> tuple[Decimal | int | None, ...]:
        """Per dimension (usd, tokens, requests, calls, tool_calls), what in-use amount fires
        the soft limit (None: no soft limit there)."""
        if self.warn_at is None:
            return (None,) * 5
        fraction = Decimal(str(self.warn_at))
        out: list[Decimal | int | None] = []
        for dim in _DIMS:
            limit = getattr(self, dim)
            if limit is None:
                out.append(None)
            elif dim == "usd":
                out.append(limit * fraction)
            else:
                whole = limit * fraction
                out.append(int(whole) + (whole != int(whole)))  # rounded up
        return tuple(out)

    def _warn(self, dimension: str, spent: Decimal | int, window_start_ms: int | None) -> None:
        """Log the soft limit reached in ``dimension`` and call ``on_warn``; never raises."""
        limit = getattr(self, dimension)
        event = BudgetWarning(
            self,
            self.key,
            dimension,
            spent,
            limit,
            None if self.window is None else self.window.spec,
            None
            if window_start_ms is None
            else datetime.fromtimestamp(window_start_ms / 1000, UTC),
        )
        warn_logger.warning("llmctx: %s (warn_at=%s)", event, self.warn_at)
        if self.on_warn is not None:
            try:
                self.on_warn(event)
            except Exception:
                warn_logger.exception("llmctx: on_warn of %r raised", self)

    @property
    def limits_money(self) -> bool:
        """True when this budget limits dollars (unknown prices then fail closed)."""
        return self.usd is not None

    def check(self, spent: Amount, reserved: Amount, amount: Amount) -> None:
        """Raise BudgetExceeded if ``amount`` does not fit beside ``spent`` and ``reserved``.

        Dimensions are checked in the order usd, tokens, requests, calls, tool_calls; one the
        call asks nothing of (0) is never refused.
        """
        for dim in _DIMS:
            limit = getattr(self, dim)
            if limit is None:
                continue
            want = getattr(amount, dim)
            if want and getattr(spent, dim) + getattr(reserved, dim) + want > limit:
                raise BudgetExceeded(
                    dimension=dim,
                    limit=limit,
                    spent=spent.get(dim),
                    reserved=reserved.get(dim),
                    requested=want,
                )

    def to_dict(self) -> dict[str, Any]:
        """The limits as data (usd as a string); the ledger and on_warn are not included.

        ``key``, ``window`` (its spec), ``tz`` and ``warn_at`` appear only when set.
        """
        data: dict[str, Any] = {
            "usd": None if self.usd is None else str(self.usd),
            "tokens": self.tokens,
            "requests": self.requests,
            "calls": self.calls,
            "tool_calls": self.tool_calls,
        }
        if self.key is not None:
            data["key"] = self.key
        if self.window is not None:
            spec, _, tz = self.window.spec.partition("@")
            data["window"] = spec
            if tz:
                data["tz"] = tz
        if self.warn_at is not None:
            data["warn_at"] = self.warn_at
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, ledger: Ledger | None = None) -> Budget:
        """Inverse of :meth:`to_dict` (a dict without calls/tool_calls: unlimited)."""
        return cls(
            usd=data.get("usd"),
            tokens=data.get("tokens"),
            requests=data.get("requests"),
            calls=data.get("calls"),
            tool_calls=data.get("tool_calls"),
            ledger=ledger,
            key=data.get("key"),
            window=data.get("window"),
            tz=data.get("tz", "UTC"),
            warn_at=data.get("warn_at"),
        )


# Ids of ledgers this process kept a settle for in the outbox (replayed on their next settle).
_kept_for: set[int] = set()


def _keep_settle(budget: Budget, token: str, actual: Amount, exc: Exception) -> None:
    """Put a settle the ledger refused into its outbox (Holds.settle's fallback); never raises."""
    from .stores._outbox import keep_settle

    amount = {
        "usd": str(actual.usd),
        "tokens": actual.tokens,
        "requests": actual.requests,
        "calls": actual.calls,
        "tool_calls": actual.tool_calls,
    }
    try:
        outbox = keep_settle(budget.ledger, token, amount)
        _kept_for.add(id(budget.ledger))
    except Exception:
        logger.exception(
            "llmctx: could not settle a reservation on %r (%s), nor keep the settle in the outbox",
            budget,
            exc,
        )
        return
    logger.error(
        "llmctx: could not settle a reservation on %r (%s); the settle waits in %s and is "
        "applied after the next settle this ledger takes",
        budget,
        exc,
        outbox,
    )


_replay: Callable[[Any, Callable[[str, dict[str, Any]], None]], int] | None = None


def _replay_settles(ledger: Ledger) -> None:
    """Apply the settles waiting for ``ledger`` (cheap when none wait); never raises."""
    global _replay
    replay = _replay
    if replay is None:
        # Imported on first use (stores import this module), then kept: an import statement
        # per settle was a fifth of this check's cost.
        from .stores._outbox import replay_settles

        replay = _replay = replay_settles

    def settle(token: str, actual: dict[str, Any]) -> None:
        ledger.settle(
            token,
            Amount(
                Decimal(actual["usd"]),
                int(actual["tokens"]),
                int(actual["requests"]),
                int(actual.get("calls", 0)),
                int(actual.get("tool_calls", 0)),
            ),
        )

    replay(ledger, settle)


def _one_per_ledger(
    owners: Sequence[tuple[Budget, str, str | None]],
) -> Iterator[tuple[Budget, str, str | None]]:
    # One account (a ledger, key and window) shared by several budgets of a chain is reserved
    # on once: its first budget.
    seen: set[tuple[int, tuple[str | None, str | None]]] = set()
    for owner in owners:
        key = (id(owner[0].ledger), owner[0]._account)
        if key not in seen:
            seen.add(key)
            yield owner


def _after_settle(ledger: Ledger) -> None:
    # Settles wait only for a ledger with a journal on disk (one with a durable journal_key,
    # e.g. a RedisLedger, kept by any process) or one this process kept a settle for: skip the
    # rest quickly.
    if id(ledger) in _kept_for or hasattr(ledger, "journal_key"):
        _replay_settles(ledger)


class Holds:
    """The reservations one call holds on a chain of budgets: taken together, ended together.

    :meth:`reserve` is all-or-nothing: if one budget refuses, the holds already taken on the
    others are released before :class:`BudgetExceeded` propagates. :meth:`settle` and
    :meth:`release` end every hold once (a second call does nothing) and never raise: a settle
    a ledger cannot take (Redis down) waits in the outbox until it can (see :meth:`settle`);
    a release it cannot take is logged, and the reservation stays counted (a Redis one as
    spent at its reserved amount once it expires).
    """

    __slots__ = ("_held",)

    def __init__(self, held: list[tuple[Budget, str]] | None = None) -> None:
        self._held = held or []

    def __bool__(self) -> bool:
        return bool(self._held)

    @classmethod
    @protected
    def reserve(
        cls,
        owners: Sequence[tuple[Budget, str, str | None]],
        amount: Amount,
        into: Holds | None = None,
    ) -> Holds:
        """Reserve ``amount`` on every budget of ``(budget, session_id, session_name)``.

        One account (a ledger, key and window) shared by several budgets of the chain is
        reserved on once. Each hold goes into ``into`` (a new Holds if None) the moment its
        ledger agrees, so whoever owns ``into`` can release what was taken even if this is
        interrupted half-way.

        Raises:
            BudgetExceeded: some budget has no room (its session named on the error); nothing
                is held.
        """
        holds = cls() if into is None else into
        held = holds._held
        try:
            for budget, session_id, session_name in _one_per_ledger(owners):
                try:
                    held.append((budget, budget.ledger.reserve(amount, budget)))
                except BudgetExceeded as exc:
                    exc.session_id, exc.session_name = session_id, session_name
                    exc.budget = budget
                    raise
        except BaseException:
            holds.release()
            raise
        return holds

    @protected
    def settle(self, actual: Amount) -> None:
        """Turn every hold into spend of ``actual``.

        A settle its ledger cannot take (Redis down) is kept in the ledger's outbox and
        applied after the next settle that ledger takes, in this process or, for a
        :class:`~llmctx.RedisLedger`, in any process that settles on the same server, prefix
        and name (the journal is named by those, never by a password). Applying it twice
        counts once: a ledger ignores a second settle of a token. Until then the reservation
        stays counted (as reserved, then as spent at its reserved amount once it expires).
        The outbox of any other ledger lives in this process only: a settle it holds is lost
        with the process, and its reservation stays as that ledger keeps unsettled ones.
        """
        held, self._held = self._held, []  # one assignment: a second end finds nothing
        for budget, token in held:
            ledger = budget.ledger
            try:
                ledger.settle(token, actual)
            except Exception as exc:
                _keep_settle(budget, token, actual, exc)
            else:
                _after_settle(ledger)

    @protected
    def release(self) -> None:
        """Give every hold back unspent."""
        held, self._held = self._held, []
        for budget, token in held:
            try:
                budget.ledger.release(token)
            except Exception:
                logger.exception("llmctx: could not release a reservation on %r", budget)

    # ------------------------------------------------------------------ async twins
    # The same holds taken from async code: a ledger with async faces (``areserve``,
    # ``asettle``, ``arelease``: a RedisLedger on redis.asyncio) is awaited, so the event loop
    # keeps running while Redis answers; any other ledger (in memory) is called directly.
    @classmethod
    async def areserve(
        cls,
        owners: Sequence[tuple[Budget, str, str | None]],
        amount: Amount,
        into: Holds | None = None,
    ) -> Holds:
        """Async twin of :meth:`reserve` (all or nothing, the same errors)."""
        holds = cls() if into is None else into
        held = holds._held
        try:
            for budget, session_id, session_name in _one_per_ledger(owners):
                ledger = budget.ledger
                areserve = getattr(ledger, "areserve", None)
                try:
                    token = (
                        await areserve(amount, budget)
                        if areserve is not None
                        else ledger.reserve(amount, budget)
                    )
                except BudgetExceeded as exc:
                    exc.session_id, exc.session_name = session_id, session_name
                    exc.budget = budget
                    raise
                held.append((budget, token))
        except BaseException:
            await holds.arelease()
            raise
        return holds

    async def asettle(self, actual: Amount) -> None:
        """Async twin of :meth:`settle` (never raises; what a ledger cannot take waits).

        Cancellation: the holds this did not finish (the one whose settle was in flight and
        those after it) are settled all the same, by the ledger in a task of its own
        (``settle_soon``: a RedisLedger) or right here (a ledger without async faces); a
        settle applied twice counts once. The cancellation then propagates.
        """
        held, self._held = self._held, []
        done = 0
        try:
            for budget, token in held:
                ledger = budget.ledger
                asettle = getattr(ledger, "asettle", None)
                try:
                    if asettle is not None:
                        await asettle(token, actual)
                    else:
                        ledger.settle(token, actual)
                except Exception as exc:
                    _keep_settle(budget, token, actual, exc)
                else:
                    _after_settle(ledger)
                done += 1
        finally:
            if done < len(held):  # interrupted (cancelled) before every hold was settled
                _end_rest(held[done:], actual)

    async def arelease(self) -> None:
        """Async twin of :meth:`release` (cancellation: as for :meth:`asettle`)."""
        held, self._held = self._held, []
        done = 0
        try:
            for budget, token in held:
                ledger = budget.ledger
                arelease = getattr(ledger, "arelease", None)
                try:
                    if arelease is not None:
                        await arelease(token)
                    else:
                        ledger.release(token)
                except Exception:
                    logger.exception("llmctx: could not release a reservation on %r", budget)
                done += 1
        finally:
            if done < len(held):
                _end_rest(held[done:], None)


def _end_rest(rest: Sequence[tuple[Budget, str]], actual: Amount | None) -> None:
    """Settle (``actual``) or release (None) holds an interrupted async end did not finish.

    Never blocks on I/O the caller's cancellation would wait for and never raises: a ledger
    with ``settle_soon``/``release_soon`` (a RedisLedger) ends them in a task of its own; any
    other ledger is synchronous and ends them here. A settle that fails waits in the outbox.
    """
    for budget, token in rest:
        ledger = budget.ledger
        try:
            if actual is None:
                release_soon = getattr(ledger, "release_soon", None)
                if release_soon is not None:
                    release_soon(token)
                else:
                    ledger.release(token)
                continue
            settle_soon = getattr(ledger, "settle_soon", None)
            if settle_soon is not None:
                settle_soon(
                    token,
                    actual,
                    on_error=lambda exc, b=budget, t=token: _keep_settle(b, t, actual, exc),
                )
            else:
                ledger.settle(token, actual)
        except Exception as exc:
            if actual is not None:
                _keep_settle(budget, token, actual, exc)
            else:
                logger.exception("llmctx: could not release a reservation on %r", budget)


class _Window:
    """One account's totals in one window of a MemoryLedger: spent and reserved as lists in
    the order of ``_DIMS`` (added in place: no Amount built per reserve or settle)."""

    __slots__ = ("end", "holds", "reserved", "spent", "start", "warned")

    def __init__(self, start: int | None, end: int | None) -> None:
        self.start = start
        self.end = end
        self.spent: list[Any] = [_ZERO, 0, 0, 0, 0]
        self.reserved: list[Any] = [_ZERO, 0, 0, 0, 0]
        self.holds = 0
        self.warned: set[str] = set()


def _warnings(budget: Budget, in_use: Amount, warned: set[str]) -> list[tuple[str, Any]]:
    """The soft limits ``in_use`` reached that ``warned`` has not fired yet (marked fired)."""
    out: list[tuple[str, Any]] = []
    for dim, threshold in zip(_DIMS, budget.warn_thresholds(), strict=True):
        if threshold is not None and dim not in warned and in_use.get(dim) >= threshold:
            warned.add(dim)
            out.append((dim, in_use.get(dim)))
    return out


@dataclass
class MemoryLedger:
    """A ledger in this process: one lock, exact Decimal arithmetic.

    Budgets with a ``key`` or a ``window`` draw on accounts of their own in it (one per key
    and window); every other budget on it shares the ledger's own account.

    Args:
        clock: seconds since the epoch, for windows (``time.time`` by default; tests pass a
            fake clock).
    """

    _spent: Amount = field(default_factory=Amount)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _held: dict[str, Amount] = field(default_factory=dict)
    _reserved: Amount = field(default_factory=Amount)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Callable[[], float] = time.time
    _warned: set[str] = field(default_factory=set)
    # (key, window spec) -> window start (None without a window) -> totals
    _accounts: dict[tuple[str | None, str | None], dict[int | None, _Window]] = field(
        default_factory=dict
    )
    _account_held: dict[str, tuple[_Window, tuple[Any, ...]]] = field(default_factory=dict)
    # (key, window spec) -> the window last found current (most reserves land in it).
    _current: dict[tuple[str | None, str | None], _Window] = field(default_factory=dict)

    #: A MemoryLedger lives in one process: ``Budget(shared=True)`` refuses it.
    shared_across_processes = False

    def _window(self, budget: Budget) -> _Window:
        """The totals of ``budget``'s account in the current window (made if new)."""
        account = budget._account
        current = self._current.get(account)
        if budget.window is None:
            if current is None:
                current = self._current[account] = _Window(None, None)
            return current
        now = int(self.clock() * 1000)
        if current is not None and current.start <= now < current.end:  # type: ignore[operator]
            return current
        start, end = budget.window.bounds(now)
        windows = self._accounts.setdefault(account, {})
        found = windows.get(start)
        if found is None:
            # Forget the windows that ended and hold nothing: their spend no longer counts.
            for old in [k for k, w in windows.items() if not w.holds]:
                del windows[old]
            found = windows[start] = _Window(start, end)
        self._current[account] = found
        return found

    @protected
    def reserve(self, amount: Amount, budget: Budget) -> str:
        warn: list[tuple[str, Any]] = []
        with self._lock:
            token = str(next(self._ids))
            if budget._account == (None, None):
                budget.check(self._spent, self._reserved, amount)
                self._held[token] = amount
                self._reserved = self._reserved + amount
                if budget.warn_at is not None:
                    warn = _warnings(budget, self._spent + self._reserved, self._warned)
                start = None
            else:
                window = self._window(budget)
                spent, reserved = window.spent, window.reserved
                want = (amount.usd, amount.tokens, amount.requests, amount.calls, amount.tool_calls)
                limits = (
                    budget.usd,
                    budget.tokens,
                    budget.requests,
                    budget.calls,
                    budget.tool_calls,
                )
                for i in range(5):
                    limit = limits[i]
                    if limit is not None and want[i] and spent[i] + reserved[i] + want[i] > limit:
                        budget.check(Amount(*spent), Amount(*reserved), amount)  # raises
                token = f"w{token}"
                self._account_held[token] = (window, want)
                reserved[0] += want[0]
                reserved[1] += want[1]
                reserved[2] += want[2]
                reserved[3] += want[3]
                reserved[4] += want[4]
                window.holds += 1
                if budget.warn_at is not None:
                    in_use = Amount(*(a + b for a, b in zip(spent, reserved, strict=True)))
                    warn = _warnings(budget, in_use, window.warned)
                start = window.start
        for dim, spent_then in warn:
            budget._warn(dim, spent_then, start)
        return token

    @protected
    def settle(self, token: str, actual: Amount) -> None:
        with self._lock:
            held = self._held.pop(token, None)
            if held is not None:
                self._reserved = self._reserved - held
                self._spent = self._spent + actual
                return
            found = self._account_held.pop(token, None)
            if found is not None:  # it settles into the window it was reserved in
                window, want = found
                spent, reserved = window.spent, window.reserved
                reserved[0] -= want[0]
                reserved[1] -= want[1]
                reserved[2] -= want[2]
                reserved[3] -= want[3]
                reserved[4] -= want[4]
                spent[0] += actual.usd
                spent[1] += actual.tokens
                spent[2] += actual.requests
                spent[3] += actual.calls
                spent[4] += actual.tool_calls
                window.holds -= 1

    @protected
    def release(self, token: str) -> None:
        with self._lock:
            held = self._held.pop(token, None)
            if held is not None:
                self._reserved = self._reserved - held
                return
            found = self._account_held.pop(token, None)
            if found is not None:
                window, want = found
                reserved = window.reserved
                for i in range(5):
                    reserved[i] -= want[i]
                window.holds -= 1

    def snapshot(self, budget: Budget | None = None) -> LedgerSnapshot:
        with self._lock:
            if budget is None or budget._account == (None, None):
                return LedgerSnapshot(self._spent, self._reserved, len(self._held))
            window = self._window(budget)
            return LedgerSnapshot(Amount(*window.spent), Amount(*window.reserved), window.holds)

    @protected
    def restore(self, spent: Amount) -> None:
        with self._lock:
            self._spent = spent


_PROCESS_LEDGER: MemoryLedger | None = None
_PROCESS_LEDGER_LOCK = threading.Lock()


def _process_ledger() -> MemoryLedger:
    """The in-memory ledger keyed budgets without a ledger share in this process."""
    global _PROCESS_LEDGER
    with _PROCESS_LEDGER_LOCK:
        if _PROCESS_LEDGER is None:
            _PROCESS_LEDGER = MemoryLedger()
        return _PROCESS_LEDGER
