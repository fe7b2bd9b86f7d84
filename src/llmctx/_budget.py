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
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

from ._exceptions import BudgetExceeded, ConfigError
from ._interrupt import protected

__all__ = ["Amount", "Budget", "Holds", "Ledger", "LedgerSnapshot", "MemoryLedger"]

logger = logging.getLogger("llmctx")

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

    def snapshot(self) -> LedgerSnapshot:
        """Current spend and reservations."""

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


class Budget:
    """Limits on money, tokens, requests and call counts for a session and what nests in it.

    Args:
        usd: money limit in dollars (``"0.50"``, ``Decimal``, int or float; kept as Decimal).
        tokens: limit on input + output tokens.
        requests: limit on the number of model requests.
        calls: limit on the number of model calls (a cap for runaway agent loops).
        tool_calls: limit on the number of MCP tool calls.
        ledger: where spend is kept; a fresh in-memory ledger by default. Pass a shared one
            (e.g. ``llmctx.RedisLedger``) to let several processes or machines share the budget.

    Raises:
        ConfigError: a negative, non-numeric or non-finite limit.
    """

    __slots__ = ("calls", "ledger", "requests", "tokens", "tool_calls", "usd")

    def __init__(
        self,
        usd: Decimal | str | int | float | None = None,
        tokens: int | None = None,
        requests: int | None = None,
        *,
        calls: int | None = None,
        tool_calls: int | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.usd = _parse_usd(usd)
        self.tokens = _parse_count("tokens", tokens)
        self.requests = _parse_count("requests", requests)
        self.calls = _parse_count("calls", calls)
        self.tool_calls = _parse_count("tool_calls", tool_calls)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()

    def __repr__(self) -> str:
        parts = [f"{dim}={value!r}" for dim in _DIMS if (value := getattr(self, dim)) is not None]
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
        """The limits as data (usd as a string); the ledger is not included."""
        return {
            "usd": None if self.usd is None else str(self.usd),
            "tokens": self.tokens,
            "requests": self.requests,
            "calls": self.calls,
            "tool_calls": self.tool_calls,
        }

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


def _replay_settles(ledger: Ledger) -> None:
    """Apply the settles waiting for ``ledger`` (cheap when none wait); never raises."""
    from .stores._outbox import replay_settles

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

    replay_settles(ledger, settle)


def _one_per_ledger(
    owners: Sequence[tuple[Budget, str, str | None]],
) -> Iterator[tuple[Budget, str, str | None]]:
    # One ledger shared by several budgets of a chain is reserved on once: its first budget.
    seen: set[int] = set()
    for owner in owners:
        key = id(owner[0].ledger)
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

        One ledger shared by several budgets of the chain is reserved on once. Each hold goes
        into ``into`` (a new Holds if None) the moment its ledger agrees, so whoever owns
        ``into`` can release what was taken even if this is interrupted half-way.

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
                    raise
                held.append((budget, token))
        except BaseException:
            await holds.arelease()
            raise
        return holds

    async def asettle(self, actual: Amount) -> None:
        """Async twin of :meth:`settle` (never raises; what a ledger cannot take waits)."""
        held, self._held = self._held, []
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

    async def arelease(self) -> None:
        """Async twin of :meth:`release`."""
        held, self._held = self._held, []
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


@dataclass
class MemoryLedger:
    """A ledger in this process: one lock, exact Decimal arithmetic."""

    _spent: Amount = field(default_factory=Amount)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _held: dict[str, Amount] = field(default_factory=dict)
    _reserved: Amount = field(default_factory=Amount)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @protected
    def reserve(self, amount: Amount, budget: Budget) -> str:
        with self._lock:
            token = str(next(self._ids))
            budget.check(self._spent, self._reserved, amount)
            self._held[token] = amount
            self._reserved = self._reserved + amount
        return token

    @protected
    def settle(self, token: str, actual: Amount) -> None:
        with self._lock:
            held = self._held.pop(token, None)
            if held is None:
                return
            self._reserved = self._reserved - held
            self._spent = self._spent + actual

    @protected
    def release(self, token: str) -> None:
        with self._lock:
            held = self._held.pop(token, None)
            if held is not None:
                self._reserved = self._reserved - held

    def snapshot(self) -> LedgerSnapshot:
        with self._lock:
            return LedgerSnapshot(self._spent, self._reserved, len(self._held))

    @protected
    def restore(self, spent: Amount) -> None:
        with self._lock:
            self._spent = spent
