"""Budget limits and the in-memory ledger: validation, arithmetic, refusals, concurrency."""

from __future__ import annotations

import asyncio
import random
import threading
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from llmctx._budget import Amount, Budget, Ledger, LedgerSnapshot, MemoryLedger
from llmctx._exceptions import BudgetExceeded, ConfigError, LLMCtxError


class NotANumber:
    """An object with a stable repr (test ids) that is not a number."""

    def __repr__(self) -> str:
        return "NotANumber()"


PRICE = Decimal("0.0000025")  # dollars per token, a typical small-model price
DIMENSIONS = ("usd", "tokens", "requests", "calls", "tool_calls")


def total(*amounts: Amount) -> Amount:
    """The sum of ``amounts`` (Amount() when empty)."""
    out = Amount()
    for amount in amounts:
        out = out + amount
    return out


def fits(budget: Budget, spent: Amount, reserved: Amount, want: Amount) -> str | None:
    """The first dimension ``want`` does not fit in, or None: the rule a ledger must follow."""
    for dim in DIMENSIONS:
        limit = budget.limit(dim)
        ask = want.get(dim)
        if limit is not None and ask and spent.get(dim) + reserved.get(dim) + ask > limit:
            return dim
    return None


# -- Budget validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"usd": -1},
        {"usd": "-0.01"},
        {"usd": Decimal("-0.000001")},
        {"usd": float("nan")},
        {"usd": "NaN"},
        {"usd": Decimal("sNaN")},
        {"usd": float("inf")},
        {"usd": "-Infinity"},
        {"usd": True},
        {"usd": "fifty cents"},
        {"usd": "0.50 USD"},
        {"usd": [1]},
        {"usd": NotANumber()},
        {"tokens": -1},
        {"tokens": 1.5},
        {"tokens": 100.0},
        {"tokens": "100"},
        {"tokens": True},
        {"tokens": Decimal(100)},
        {"requests": -5},
        {"requests": False},
        {"requests": 2.0},
        {"calls": -1},
        {"calls": 1.0},
        {"calls": True},
        {"tool_calls": -3},
        {"tool_calls": "5"},
    ],
    ids=repr,
)
def test_budget_rejects_bad_limits(kwargs: dict[str, Any]) -> None:
    """Negative, NaN, infinite, bool and non-numeric limits raise ConfigError naming the arg."""
    with pytest.raises(ConfigError) as info:
        Budget(**kwargs)
    (name,) = kwargs
    assert f"Budget({name}=" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LLMCtxError)


@pytest.mark.parametrize(
    ("given_usd", "expected"),
    [
        ("0.10", Decimal("0.10")),
        ("0.0000025", Decimal("0.0000025")),
        ("1e-7", Decimal("1E-7")),
        (0.1, Decimal("0.1")),  # via str(): the float's shortest repr, not its binary value
        (3, Decimal(3)),
        (Decimal("12.345678901234567890"), Decimal("12.345678901234567890")),
        ("0", Decimal(0)),
    ],
)
def test_budget_parses_usd_exactly(given_usd: Any, expected: Decimal) -> None:
    """A money limit becomes the exact Decimal the user wrote (floats via their shortest repr)."""
    budget = Budget(usd=given_usd)
    assert isinstance(budget.usd, Decimal)
    assert budget.usd == expected
    assert str(budget.usd) == str(expected)


def test_budget_defaults_and_accessors() -> None:
    """Unset limits are None (unlimited), each budget gets its own fresh MemoryLedger."""
    a, b = Budget(), Budget(tokens=10)
    assert (a.usd, a.tokens, a.requests) == (None, None, None)
    assert not a.limits_money
    assert Budget(usd=0).limits_money
    assert isinstance(a.ledger, MemoryLedger)
    assert isinstance(a.ledger, Ledger)
    assert a.ledger is not b.ledger
    assert b.limit("tokens") == 10
    assert b.limit("usd") is None
    assert repr(Budget(usd="0.5", tokens=7)) == "Budget(usd=Decimal('0.5'), tokens=7)"


@given(
    usd=st.none() | st.decimals(min_value=0, max_value=10**6, places=9),
    tokens=st.none() | st.integers(0, 10**12),
    requests=st.none() | st.integers(0, 10**6),
    calls=st.none() | st.integers(0, 10**6),
    tool_calls=st.none() | st.integers(0, 10**6),
)
def test_budget_dict_round_trip(
    usd: Decimal | None,
    tokens: int | None,
    requests: int | None,
    calls: int | None,
    tool_calls: int | None,
) -> None:
    """to_dict/from_dict keep every limit exactly (usd travels as a string)."""
    budget = Budget(usd=usd, tokens=tokens, requests=requests, calls=calls, tool_calls=tool_calls)
    data = budget.to_dict()
    assert data["usd"] is None or isinstance(data["usd"], str)
    back = Budget.from_dict(data)
    assert [back.limit(d) for d in DIMENSIONS] == [budget.limit(d) for d in DIMENSIONS]
    ledger = MemoryLedger()
    assert Budget.from_dict(data, ledger=ledger).ledger is ledger


# -- Reserve / settle / release arithmetic ----------------------------------------------------


def test_reserve_settle_release_arithmetic() -> None:
    """Reservations add to ``reserved``; settle moves the actual to ``spent``; release drops it."""
    budget = Budget(usd="0.01", tokens=1_000, requests=10)
    ledger = budget.ledger
    a = ledger.reserve(Amount(PRICE * 300, 300, 1), budget)
    b = ledger.reserve(Amount(PRICE * 200, 200, 1), budget)
    assert a != b
    assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(PRICE * 500, 500, 2), 2)

    ledger.settle(a, Amount(PRICE * 123, 123, 1))
    snap = ledger.snapshot()
    assert snap.spent == Amount(Decimal("0.0003075"), 123, 1)
    assert snap.reserved == Amount(PRICE * 200, 200, 1)
    assert snap.reservations == 1

    ledger.release(b)
    assert ledger.snapshot() == LedgerSnapshot(Amount(Decimal("0.0003075"), 123, 1), Amount(), 0)


def test_settle_and_release_are_idempotent() -> None:
    """A second settle/release, a settle after release and unknown tokens change nothing."""
    budget = Budget(tokens=100)
    ledger = budget.ledger
    a = ledger.reserve(Amount(tokens=40), budget)
    b = ledger.reserve(Amount(tokens=30), budget)
    ledger.settle(a, Amount(tokens=25))
    after_settle = ledger.snapshot()
    ledger.settle(a, Amount(tokens=25))
    ledger.release(a)
    assert ledger.snapshot() == after_settle

    ledger.release(b)
    after_release = ledger.snapshot()
    ledger.release(b)
    ledger.settle(b, Amount(tokens=30))
    ledger.settle("no-such-token", Amount(tokens=1))
    ledger.release("no-such-token")
    assert ledger.snapshot() == after_release == LedgerSnapshot(Amount(tokens=25), Amount(), 0)


def test_capacity_returns_after_settle_and_release() -> None:
    """Released capacity and the unused part of a settled reservation can be reserved again."""
    budget = Budget(tokens=100)
    ledger = budget.ledger
    a = ledger.reserve(Amount(tokens=100), budget)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(tokens=1), budget)
    ledger.settle(a, Amount(tokens=60))
    b = ledger.reserve(Amount(tokens=40), budget)
    ledger.release(b)
    ledger.reserve(Amount(tokens=40), budget)
    assert ledger.snapshot().spent.tokens + ledger.snapshot().reserved.tokens == 100


def test_exact_fit_is_admitted() -> None:
    """A reservation that brings spent + reserved exactly to the limit fits (the limit is <=)."""
    budget = Budget(usd="0.0000075", tokens=3, requests=1)
    budget.ledger.reserve(Amount(PRICE * 3, 3, 1), budget)
    assert budget.ledger.snapshot().reserved == Amount(Decimal("0.0000075"), 3, 1)


def test_zero_request_in_a_dimension_is_not_checked() -> None:
    """A call that asks nothing of an exhausted dimension is not refused for it."""
    budget = Budget(usd="0.001", tokens=10)
    ledger = budget.ledger
    ledger.settle(ledger.reserve(Amount(tokens=10), budget), Amount(tokens=10))
    ledger.reserve(Amount(usd=Decimal("0.0005")), budget)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(tokens=1), budget)


def test_budget_exceeded_fields_and_message() -> None:
    """BudgetExceeded names the dimension, limit, spent, reserved and requested amounts."""
    budget = Budget(usd="0.50", tokens=1_000)
    ledger = budget.ledger
    ledger.settle(
        ledger.reserve(Amount(Decimal("0.20"), 100, 1), budget), Amount(Decimal("0.20"), 100, 1)
    )
    ledger.reserve(Amount(Decimal("0.25"), 100, 1), budget)
    before = ledger.snapshot()

    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(Decimal("0.06"), 10, 1), budget)
    err = info.value
    assert (err.dimension, err.limit, err.spent, err.reserved, err.requested) == (
        "usd",
        Decimal("0.50"),
        Decimal("0.20"),
        Decimal("0.25"),
        Decimal("0.06"),
    )
    assert err.remaining == Decimal("0.05")
    message = str(err)
    assert message.startswith("money budget exceeded before sending")
    for part in (
        "limit $0.50",
        "spent $0.20",
        "in flight $0.25",
        "up to $0.06",
        "Raise the budget",
    ):
        assert part in message
    assert ledger.snapshot() == before  # nothing was held

    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(Decimal("0.01"), 801, 1), budget)
    err = info.value
    assert (err.dimension, err.limit, err.spent, err.reserved, err.requested) == (
        "tokens",
        1_000,
        100,
        100,
        801,
    )
    assert err.remaining == 800
    assert "token budget exceeded" in str(err)
    assert "$" not in str(err)


def test_usd_is_checked_before_tokens_and_requests() -> None:
    """When several dimensions overflow, the error names them in the order usd, tokens, requests."""
    budget = Budget(usd="0.001", tokens=10, requests=1)
    with pytest.raises(BudgetExceeded) as info:
        budget.ledger.reserve(Amount(Decimal(1), 11, 2), budget)
    assert info.value.dimension == "usd"
    with pytest.raises(BudgetExceeded) as info:
        budget.ledger.reserve(Amount(Decimal(0), 11, 2), budget)
    assert info.value.dimension == "tokens"
    with pytest.raises(BudgetExceeded) as info:
        budget.ledger.reserve(Amount(Decimal(0), 1, 2), budget)
    assert info.value.dimension == "requests"


def test_call_caps_are_limits_like_tokens() -> None:
    """calls and tool_calls caps refuse the call past the cap, name the dimension, and free up."""
    budget = Budget(calls=2, tool_calls=1)
    assert (budget.limit("calls"), budget.limit("tool_calls")) == (2, 1)
    assert repr(budget) == "Budget(calls=2, tool_calls=1)"
    ledger = budget.ledger
    first = ledger.reserve(Amount(calls=1), budget)
    ledger.reserve(Amount(calls=1), budget)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(calls=1), budget)
    assert (info.value.dimension, info.value.limit, info.value.reserved) == ("calls", 2, 2)
    ledger.release(first)
    ledger.reserve(Amount(calls=1), budget)
    tool = ledger.reserve(Amount(tool_calls=1), budget)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(tool_calls=1), budget)
    assert info.value.dimension == "tool_calls"
    ledger.settle(tool, Amount(tool_calls=1))
    assert ledger.snapshot().spent == Amount(tool_calls=1)
    ledger.reserve(Amount(tokens=10**9), budget)  # no token limit: only the capped dims count


def test_limit_names_the_five_dimensions() -> None:
    """limit() answers for the five dimensions of Amount and refuses any other name."""
    budget = Budget(usd="1", tokens=2, requests=3, calls=4, tool_calls=5)
    assert [budget.limit(d) for d in DIMENSIONS] == [Decimal(1), 2, 3, 4, 5]
    with pytest.raises(ValueError, match="no dimension 'dollars'"):
        budget.limit("dollars")


def test_restore_sets_spent() -> None:
    """restore() replaces the settled spend (a resumed session) and later checks count it."""
    budget = Budget(tokens=100)
    budget.ledger.restore(Amount(Decimal("0.3"), 90, 4))
    assert budget.ledger.snapshot().spent == Amount(Decimal("0.3"), 90, 4)
    with pytest.raises(BudgetExceeded) as info:
        budget.ledger.reserve(Amount(tokens=11), budget)
    assert info.value.spent == 90


# -- Property-based: the ledger behaves like a plain model ---------------------------------------

small_usd = st.integers(0, 400).map(lambda n: PRICE * n)


class LedgerModel(RuleBasedStateMachine):
    """Random reserve/settle/release/restore sequences agree with a sequential model.

    One machine for every :class:`Ledger`: a subclass overrides :meth:`make_ledger` (and
    ``teardown`` to clean up), and says with ``restore_overwrites`` which of the two
    ``restore`` policies the protocol allows its ledger follows. A ledger whose reservations
    can expire adds a rule that expires one and calls :meth:`expired` (the model of what the
    ledger must do then: count it as spent at its reserved amount until it is settled).
    """

    reservations = Bundle("reservations")
    #: True: restore() replaces the settled spend (MemoryLedger). False: it only sets it on
    #: an empty ledger and is a no-op once there is spend (RedisLedger, where the shared
    #: state is authoritative).
    restore_overwrites = True

    def __init__(self) -> None:
        super().__init__()
        self.ledger = self.make_ledger()
        self.budget = Budget(
            usd="0.002", tokens=800, requests=12, calls=9, tool_calls=6, ledger=self.ledger
        )
        self.spent = Amount()
        self.held: dict[str, Amount] = {}
        #: Reservations that expired unsettled: spent at their reserved amount until settled.
        self.swept: dict[str, Amount] = {}
        #: The part of spent that expired reservations put there (a release leaves it there).
        self.expired_spend = Amount()
        #: What settles and restores put into spent: a ledger may never forget it.
        self.settled = Amount()

    def make_ledger(self) -> Ledger:
        """The ledger under test, fresh for each run of the machine."""
        return MemoryLedger()

    @rule(
        target=reservations,
        usd=small_usd,
        tokens=st.integers(0, 400),
        requests=st.integers(0, 3),
        calls=st.integers(0, 2),
        tool_calls=st.integers(0, 2),
    )
    def reserve(self, usd: Decimal, tokens: int, requests: int, calls: int, tool_calls: int) -> Any:
        want = Amount(usd, tokens, requests, calls, tool_calls)
        refused = fits(self.budget, self.spent, total(*self.held.values()), want)
        try:
            token = self.ledger.reserve(want, self.budget)
        except BudgetExceeded as exc:
            err = exc
        else:
            assert refused is None
            self.held[token] = want
            return token
        assert err.dimension == refused
        assert err.requested == want.get(err.dimension)
        assert err.spent == self.spent.get(err.dimension)
        assert err.reserved == total(*self.held.values()).get(err.dimension)
        return multiple()

    @rule(token=reservations, data=st.data())
    def settle(self, token: str, data: st.DataObject) -> None:
        held = self.held.pop(token, None)
        swept = self.swept.pop(token, None)
        cap = held or swept or Amount(PRICE * 10, 10, 1, 1, 1)
        actual = Amount(
            PRICE * data.draw(st.integers(0, int(cap.usd / PRICE))),
            data.draw(st.integers(0, cap.tokens)),
            data.draw(st.integers(0, cap.requests)),
            data.draw(st.integers(0, cap.calls)),
            data.draw(st.integers(0, cap.tool_calls)),
        )
        self.ledger.settle(token, actual)
        if held is not None:
            self.spent = self.spent + actual
            self.settled = self.settled + actual
        elif swept is not None:  # its reserved amount was spent: the actual one replaces it
            self.spent = self.spent - swept + actual
            self.expired_spend = self.expired_spend - swept
            self.settled = self.settled + actual

    @rule(token=reservations)
    def release(self, token: str) -> None:
        self.held.pop(token, None)
        self.swept.pop(token, None)  # an expired reservation stays spent: the call may have run
        self.ledger.release(token)

    def expired(self, token: str) -> None:
        """Model the expiry of the live reservation ``token``: its reserved amount is spent."""
        amount = self.held.pop(token)
        self.swept[token] = amount
        self.spent = self.spent + amount
        self.expired_spend = self.expired_spend + amount

    @precondition(lambda self: not self.held)
    @rule(tokens=st.integers(0, 200))
    def restore(self, tokens: int) -> None:
        spent = Amount(PRICE * tokens, tokens, 1)
        self.ledger.restore(spent)
        if self.restore_overwrites or self.spent == Amount():
            self.spent = self.settled = spent

    @invariant()
    def matches_model(self) -> None:
        snap = self.ledger.snapshot()
        assert snap.spent == self.spent
        assert snap.reserved == total(*self.held.values())
        assert snap.reservations == len(self.held)
        assert snap.expired == self.expired_spend

    @invariant()
    def never_forgets_spend_nor_overspends(self) -> None:
        # The model only settles at most what was reserved, so it allows no overrun: spent +
        # reserved stays within every limit, and never drops below what was settled.
        snap = self.ledger.snapshot()
        in_use = snap.spent + snap.reserved
        for dim in DIMENSIONS:
            assert in_use.get(dim) >= self.settled.get(dim)
            limit = self.budget.limit(dim)
            assert limit is None or in_use.get(dim) <= limit


TestMemoryLedgerModel = LedgerModel.TestCase
TestMemoryLedgerModel.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- Concurrency ------------------------------------------------------------------------------


class InvariantLock:
    """A lock for MemoryLedger that checks the ledger's invariants before each release.

    The check runs while the ledger's own lock is still held, so it sees every state the
    ledger ever publishes, not a sample.
    """

    def __init__(self, budget: Budget) -> None:
        self._lock = threading.Lock()
        self.budget = budget
        self.ledger: MemoryLedger | None = None
        self.violations: list[str] = []
        self.checks = 0
        self.max_reservations = 0

    def __enter__(self) -> InvariantLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            ledger = self.ledger
            assert ledger is not None
            self.checks += 1
            self.max_reservations = max(self.max_reservations, len(ledger._held))
            if total(*ledger._held.values()) != ledger._reserved:
                self.violations.append(f"reserved {ledger._reserved} != sum of holds")
            in_use = ledger._spent + ledger._reserved
            for dim in DIMENSIONS:
                limit = self.budget.limit(dim)
                if limit is not None and in_use.get(dim) > limit:
                    self.violations.append(f"{dim}: {in_use.get(dim)} > {limit}")
        finally:
            self._lock.release()


def test_concurrent_reservations_never_exceed_budget() -> None:
    """1,000 reservations from asyncio tasks in 4 threads and 4 plain threads never overspend."""
    budget = Budget(usd="0.03", tokens=10_000, requests=900)
    lock = InvariantLock(budget)
    ledger = MemoryLedger(_lock=lock)  # type: ignore[arg-type]
    lock.ledger = ledger
    budget.ledger = ledger
    want = Amount(PRICE * 37, 37, 1)
    settled: list[Amount] = []
    outcomes: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def plan(seed: int) -> tuple[int, Amount | None]:
        """A worker's fixed choices: how long to hold, and settle (with what) or release."""
        rng = random.Random(seed)
        hold = rng.randint(0, 5)
        if rng.random() < 0.2:
            return hold, None
        used = rng.randint(20, 37)
        return hold, Amount(PRICE * used, used, 1)

    def finish(token: str, actual: Amount | None) -> None:
        if actual is None:
            ledger.release(token)
            outcomes.append("released")
        else:
            ledger.settle(token, actual)
            settled.append(actual)
            outcomes.append("settled")

    async def task(seed: int) -> None:
        hold, actual = plan(seed)
        try:
            token = ledger.reserve(want, budget)
        except BudgetExceeded:
            outcomes.append("refused")
            return
        for _ in range(hold):
            await asyncio.sleep(0)
        finish(token, actual)

    async def tasks(first: int) -> None:
        start.wait()
        await asyncio.gather(*(task(seed) for seed in range(first, first + 200)))

    def loop_thread(first: int) -> None:
        try:
            asyncio.run(tasks(first))
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    def plain_thread(first: int) -> None:
        try:
            start.wait()
            for seed in range(first, first + 50):
                _, actual = plan(seed)
                try:
                    token = ledger.reserve(want, budget)
                except BudgetExceeded:
                    outcomes.append("refused")
                    continue
                finish(token, actual)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(i * 200,)) for i in range(4)]
    threads += [threading.Thread(target=plain_thread, args=(800 + i * 50,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors

    assert len(outcomes) == 1_000
    assert lock.violations == []
    assert lock.checks >= 1_000 + outcomes.count("settled") + outcomes.count("released")
    assert lock.max_reservations > 1  # reservations really were in flight together
    assert outcomes.count("refused") > 0  # the budget really was the constraint
    snap = ledger.snapshot()
    assert snap.spent == total(*settled)
    assert snap.reserved == Amount()
    assert snap.reservations == 0
    assert snap.spent.tokens <= 10_000


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(0, 500),
    asks=st.lists(st.integers(1, 60), min_size=1, max_size=40),
)
def test_threads_admit_at_most_the_limit(limit: int, asks: list[int]) -> None:
    """Threads reserving concurrently are admitted for at most ``limit`` tokens in total."""
    budget = Budget(tokens=limit)
    admitted: list[int] = []
    barrier = threading.Barrier(4)

    def worker(part: list[int]) -> None:
        barrier.wait()
        for ask in part:
            try:
                budget.ledger.reserve(Amount(tokens=ask), budget)
            except BudgetExceeded:
                continue
            admitted.append(ask)

    threads = [threading.Thread(target=worker, args=(asks[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) <= limit
    assert budget.ledger.snapshot().reserved.tokens == sum(admitted)
    # Greedy admission: whatever was refused did not fit beside what was admitted at the end.
    refused = list(asks)
    for ask in admitted:
        refused.remove(ask)
    assert all(sum(admitted) + ask > limit for ask in refused)
