"""Keyed and windowed budgets and soft limits, in memory (a fake clock) and on a real Redis
(Redis server time): accounts shared by key, windows that roll over, settles that go to the
window they were reserved in, warnings that fire once per crossing, and clear errors for bad
input."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import llmctx
from llmctx._budget import (
    Amount,
    Budget,
    BudgetWarning,
    BudgetWindow,
    Holds,
    LedgerSnapshot,
    MemoryLedger,
)
from llmctx._exceptions import BudgetExceeded, ConfigError


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


NOON = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio."""
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """A clock standing at noon UTC on 2026-03-14."""
    return FakeClock(NOON)


@pytest.fixture
def ledger(clock: FakeClock) -> MemoryLedger:
    """A MemoryLedger on the fake clock."""
    return MemoryLedger(clock=clock)


# -- Windows and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "spec", "length_ms"),
    [
        ("60s", "60s", 60_000),
        ("1h", "3600s", 3_600_000),
        ("1d", "86400s", 86_400_000),
        ("15m", "900s", 900_000),
        ("250ms", "250ms", 250),
        (timedelta(minutes=1), "60s", 60_000),
        (timedelta(milliseconds=1500), "1500ms", 1500),
    ],
)
def test_duration_windows_parse(window: Any, spec: str, length_ms: int) -> None:
    """Durations and timedeltas become one canonical spec and length."""
    parsed = Budget(tokens=1, window=window).window
    assert parsed == BudgetWindow(spec, length_ms)


def test_calendar_windows_follow_their_time_zone() -> None:
    """A "day" in Europe/Paris starts at Paris midnight; a "month" on the 1st (DST included)."""
    day = BudgetWindow.parse("day", "Europe/Paris")
    assert day.spec == "day@Europe/Paris"
    # 23:30 UTC on 14 March is 00:30 on the 15th in Paris (UTC+1).
    late = int(datetime(2026, 3, 14, 23, 30, tzinfo=UTC).timestamp() * 1000)
    start, end = day.bounds(late)
    assert datetime.fromtimestamp(start / 1000, UTC) == datetime(2026, 3, 14, 23, 0, tzinfo=UTC)
    assert end - start == 86_400_000
    month = BudgetWindow.parse("month", "Europe/Paris")
    start, end = month.bounds(late)
    assert datetime.fromtimestamp(start / 1000, UTC) == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    # April starts in summer time (UTC+2): the month is one hour shorter than 31 days.
    assert datetime.fromtimestamp(end / 1000, UTC) == datetime(2026, 3, 31, 22, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": "fortnight"}, "not a window llmctx knows"),
        ({"window": "1y"}, "not a window llmctx knows"),
        ({"window": "0s"}, "positive duration"),
        ({"window": timedelta(seconds=-5)}, "positive duration"),
        ({"window": 60}, "must be a duration"),
        ({"window": "day", "tz": "Mars/Olympus_Mons"}, "not a time zone"),
        ({"warn_at": 0}, "in (0, 1]"),
        ({"warn_at": 1.5}, "in (0, 1]"),
        ({"warn_at": -0.2}, "in (0, 1]"),
        ({"warn_at": True}, "in (0, 1]"),
        ({"warn_at": "0.8"}, "in (0, 1]"),
        ({"on_warn": "print"}, "must be a callable"),
        ({"tokens": -1}, "negative"),
        ({"calls": -1}, "negative"),
        ({"tool_calls": -3}, "negative"),
        ({"usd": "-0.01"}, ">= 0"),
        ({"key": ""}, "non-empty string"),
        ({"key": "user 42"}, "without spaces or braces"),
        ({"key": "{user}"}, "without spaces or braces"),
        ({"key": "user:1", "shared": True}, "needs a ledger every process can reach"),
        (
            {"key": "user:1", "shared": True, "ledger": MemoryLedger()},
            "MemoryLedger lives in this process only",
        ),
    ],
)
def test_bad_budget_input_is_a_clear_config_error(kwargs: dict[str, Any], message: str) -> None:
    """Unknown windows, warn_at outside (0, 1], negative caps, unshareable keys: ConfigError."""
    with pytest.raises(ConfigError) as info:
        Budget(**{"tokens": 100, **kwargs})
    assert message in str(info.value)


def test_keyed_budget_round_trips_as_data() -> None:
    """key, window, tz and warn_at survive to_dict/from_dict; a plain budget's dict is as before."""
    budget = Budget(usd="2", key="user:42", window="day", tz="Europe/Paris", warn_at=0.8)
    data = budget.to_dict()
    assert data == {
        "usd": "2",
        "tokens": None,
        "requests": None,
        "calls": None,
        "tool_calls": None,
        "key": "user:42",
        "window": "day",
        "tz": "Europe/Paris",
        "warn_at": 0.8,
    }
    again = Budget.from_dict(data)
    assert (again.key, again.window, again.warn_at) == (budget.key, budget.window, 0.8)
    assert set(Budget(tokens=5).to_dict()) == {"usd", "tokens", "requests", "calls", "tool_calls"}


# -- Keys and windows in memory ----------------------------------------------------------------


def test_budgets_with_one_key_share_an_account(ledger: MemoryLedger) -> None:
    """Two budgets with the same key draw on one account; another key and no key do not."""
    alice_a = Budget(tokens=100, key="user:alice", ledger=ledger)
    alice_b = Budget(tokens=100, key="user:alice", ledger=ledger)
    bob = Budget(tokens=100, key="user:bob", ledger=ledger)
    plain = Budget(tokens=100, ledger=ledger)
    ledger.settle(ledger.reserve(Amount(tokens=70), alice_a), Amount(tokens=70))
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(Amount(tokens=31), alice_b)
    assert info.value.spent == 70
    ledger.reserve(Amount(tokens=100), bob)
    ledger.reserve(Amount(tokens=100), plain)
    assert alice_b.snapshot() == LedgerSnapshot(Amount(tokens=70), Amount(), 0)
    assert bob.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=100), 1)
    assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=100), 1)


def test_keyed_budgets_without_a_ledger_share_one_in_this_process() -> None:
    """Budget(key=...) without a ledger: every budget of that key in the process shares spend."""
    key = f"user:{uuid.uuid4().hex}"
    first, second = Budget(tokens=10, key=key), Budget(tokens=10, key=key)
    assert first.ledger is second.ledger
    first.ledger.reserve(Amount(tokens=10), first)
    with pytest.raises(BudgetExceeded):
        second.ledger.reserve(Amount(tokens=1), second)
    assert Budget(tokens=10).ledger is not first.ledger  # unkeyed budgets stay private


def test_spend_stops_counting_when_the_window_rolls_over(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    """A "1h" window: spend of 12:xx no longer counts at 13:00, when the next window starts."""
    budget = Budget(tokens=100, key="user:1", window="1h", ledger=ledger)
    ledger.settle(ledger.reserve(Amount(tokens=100), budget), Amount(tokens=90))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(tokens=11), budget)
    clock.advance(3_599.999)  # 12:59:59.999, still the same window
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(tokens=11), budget)
    clock.advance(0.001)  # 13:00:00
    ledger.reserve(Amount(tokens=100), budget)
    assert budget.snapshot() == LedgerSnapshot(Amount(), Amount(tokens=100), 1)


def test_a_settle_goes_to_the_window_it_was_reserved_in(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    """Reserved at 12:59, settled at 13:01: the spend is the 12:00 window's, not the 13:00's."""
    budget = Budget(tokens=100, window="1h", ledger=ledger)
    clock.advance(59 * 60)
    token = ledger.reserve(Amount(tokens=80), budget)
    clock.advance(2 * 60)
    assert budget.snapshot() == LedgerSnapshot(Amount(), Amount(), 0)
    ledger.settle(token, Amount(tokens=75))
    ledger.reserve(Amount(tokens=100), budget)  # the new window has all of its room
    clock.now = NOON.timestamp() + 30 * 60  # look back at the 12:00 window
    assert budget.snapshot() == LedgerSnapshot(Amount(tokens=75), Amount(), 0)


def test_calendar_day_window_resets_at_local_midnight(
    ledger: MemoryLedger, clock: FakeClock
) -> None:
    """A "day" budget in Asia/Tokyo (UTC+9) resets at 15:00 UTC, not at UTC midnight."""
    budget = Budget(usd="1", window="day", tz="Asia/Tokyo", key="t:1", ledger=ledger)
    clock.now = datetime(2026, 3, 14, 14, 59, tzinfo=UTC).timestamp()
    ledger.settle(ledger.reserve(Amount(Decimal(1)), budget), Amount(Decimal(1)))
    with pytest.raises(BudgetExceeded):
        ledger.reserve(Amount(Decimal("0.01")), budget)
    clock.now = datetime(2026, 3, 14, 15, 0, tzinfo=UTC).timestamp()
    ledger.reserve(Amount(Decimal(1)), budget)


def test_session_with_several_keyed_budgets_is_all_or_nothing(ledger: MemoryLedger) -> None:
    """budget=[per_user, per_tenant]: a call that one refuses holds nothing on the other."""
    per_user = Budget(tokens=50, key="user:1", window="1d", ledger=ledger)
    per_tenant = Budget(tokens=1_000, key="tenant:a", window="1d", ledger=ledger)
    with llmctx.session(
        "keyed", budget=[per_user, per_tenant], store=llmctx.testing.MemoryStore()
    ) as s:
        holds = s.reserve(Amount(tokens=40))
        with pytest.raises(BudgetExceeded) as info:
            s.reserve(Amount(tokens=20))
        assert info.value.limit == 50
        assert per_tenant.snapshot().reserved == Amount(tokens=40)  # the refused 20 let go
        holds.settle(Amount(tokens=30))
    assert per_user.snapshot().spent == per_tenant.snapshot().spent == Amount(tokens=30)


# -- Soft limits --------------------------------------------------------------------------------


def test_warn_at_fires_once_per_window_and_logs(
    ledger: MemoryLedger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """warn_at=0.8 fires on_warn once when in-use spend reaches 80%, and again next window."""
    events: list[BudgetWarning] = []
    budget = Budget(
        tokens=100, key="user:7", window="1h", warn_at=0.8, on_warn=events.append, ledger=ledger
    )
    caplog.set_level(logging.WARNING, "llmctx.budget")
    ledger.settle(ledger.reserve(Amount(tokens=50), budget), Amount(tokens=50))
    assert events == []
    ledger.reserve(Amount(tokens=30), budget)  # 80 in use: the threshold
    ledger.reserve(Amount(tokens=10), budget)  # past it again: no second warning
    assert len(events) == 1
    event = events[0]
    assert (event.budget, event.key, event.dimension, event.spent, event.limit) == (
        budget,
        "user:7",
        "tokens",
        80,
        100,
    )
    assert event.window == "3600s"
    assert event.window_start == NOON
    assert "'user:7' reached 80% of its tokens limit (80 of 100)" in caplog.text
    clock.advance(3600)
    ledger.reserve(Amount(tokens=85), budget)
    assert len(events) == 2 and events[1].window_start == NOON + timedelta(hours=1)


def test_a_failing_on_warn_never_breaks_the_call(
    ledger: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_warn that raises is logged; the reservation it came with stands."""

    def broken(event: BudgetWarning) -> None:
        raise RuntimeError("pager down")

    budget = Budget(usd="1", warn_at=0.5, on_warn=broken, ledger=ledger)
    token = ledger.reserve(Amount(Decimal("0.6")), budget)
    assert budget.snapshot().reservations == 1
    ledger.settle(token, Amount(Decimal("0.6")))
    assert "on_warn of" in caplog.text and "pager down" in caplog.text


def test_warn_fires_exactly_once_under_thread_contention(ledger: MemoryLedger) -> None:
    """16 threads reserving past warn_at together: on_warn fires exactly once."""
    events: list[BudgetWarning] = []
    budget = Budget(tokens=10_000, key="hot", warn_at=0.5, on_warn=events.append, ledger=ledger)
    barrier = threading.Barrier(16)

    def work() -> None:
        barrier.wait()
        for _ in range(50):
            ledger.settle(ledger.reserve(Amount(tokens=10), budget), Amount(tokens=10))

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.snapshot().spent == Amount(tokens=8_000)
    assert len(events) == 1 and events[0].spent == 5_000


# -- The same on a real Redis (server time) ----------------------------------------------------


@pytest.fixture
def redis_ledgers(redis_url: str) -> Iterator[Any]:
    """Build RedisLedgers on one fresh name; every account's keys are deleted after the test."""
    pytest.importorskip("redis")
    from llmctx._redis import RedisLedger

    name = f"t-{uuid.uuid4().hex}"
    made: list[RedisLedger] = []

    def make(**kwargs: Any) -> RedisLedger:
        ledger = RedisLedger(redis_url, name, prefix="llmctx-test", renew_every=0, **kwargs)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger._closed = False
        ledger.reset()
        ledger.close()


def server_ms(ledger: Any) -> int:
    """Redis server time in Unix milliseconds."""
    seconds, micros = ledger._client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.redis
def test_redis_keys_are_shared_across_ledger_objects(redis_ledgers: Any) -> None:
    """Two ledger objects (two processes' worth) share a key's account, apart from others."""
    first, second = redis_ledgers(), redis_ledgers()
    mine = Budget(tokens=100, calls=2, key="user:1", window="1d", ledger=first)
    theirs = Budget(tokens=100, calls=2, key="user:1", window="1d", ledger=second)
    other = Budget(tokens=100, key="user:2", window="1d", ledger=second)
    first.settle(first.reserve(Amount(tokens=60, calls=1), mine), Amount(tokens=60, calls=1))
    second.reserve(Amount(tokens=40, calls=1), theirs)
    with pytest.raises(BudgetExceeded) as info:
        second.reserve(Amount(tokens=1), theirs)
    assert (info.value.spent, info.value.reserved) == (60, 40)
    with pytest.raises(BudgetExceeded) as info:
        first.reserve(Amount(calls=1), mine)
    assert info.value.dimension == "calls"
    second.reserve(Amount(tokens=100), other)
    assert mine.snapshot() == LedgerSnapshot(
        Amount(tokens=60, calls=1), Amount(tokens=40, calls=1), 1
    )
    assert first.snapshot() == LedgerSnapshot(Amount(), Amount(), 0)  # the ledger's own account


@pytest.mark.redis
def test_redis_window_rolls_over_on_server_time(redis_ledgers: Any) -> None:
    """A 1 s window on Redis: full in one window, empty in the next, and a settle that comes
    after the boundary goes to the window it was reserved in."""
    ledger = redis_ledgers()
    budget = Budget(tokens=100, key="user:1", window="1s", ledger=ledger)
    token = ledger.reserve(Amount(tokens=100), budget)
    start = window_of(token)
    assert start % 1000 == 0 and start <= server_ms(ledger)
    try:
        late = ledger.reserve(Amount(tokens=1), budget)
    except BudgetExceeded:
        pass  # the same window: full
    else:  # the boundary passed in between: it was held in the next window
        assert window_of(late) >= start + 1000
        ledger.release(late)
    while server_ms(ledger) < start + 1000:  # wait for the boundary on the server's clock
        time.sleep(0.02)
    ledger.settle(token, Amount(tokens=90))
    assert budget.snapshot().spent == Amount()  # the 90 went to the window that ended
    totals = ledger._client.hgetall(f"{{llmctx-test:{ledger.name}#user:1}}:1s:w:{start}")
    assert int(totals[b"spent_tokens"]) == 90 and int(totals[b"held_tokens"]) == 0
    assert ledger._client.pttl(f"{{llmctx-test:{ledger.name}#user:1}}:1s:w:{start}") > 0
    ledger.reserve(Amount(tokens=100), budget)  # the new window has all of its room


def window_of(token: str) -> int:
    """The window start (Unix ms) a Redis reservation token was held in."""
    return int(token.rpartition(" ")[2].partition("|")[0])


@pytest.mark.redis
def test_redis_calendar_window_uses_client_bounds_checked_by_the_server(
    redis_ledgers: Any,
) -> None:
    """A "day" window in a time zone on Redis: the hold lands in today's local window."""
    ledger = redis_ledgers()
    budget = Budget(usd="1", key="t:1", window="day", tz="Pacific/Auckland", ledger=ledger)
    token = ledger.reserve(Amount(Decimal("0.4")), budget)
    start = window_of(token)
    assert start == budget.window.bounds(server_ms(ledger))[0]  # type: ignore[union-attr]
    ledger.settle(token, Amount(Decimal("0.25")))
    assert budget.snapshot() == LedgerSnapshot(Amount(Decimal("0.25")), Amount(), 0)


@pytest.mark.redis
def test_redis_warn_fires_exactly_once_across_threads_and_ledgers(redis_ledgers: Any) -> None:
    """8 threads on 2 ledger objects crossing warn_at together: one warning in all."""
    ledgers = [redis_ledgers(), redis_ledgers()]
    events: list[BudgetWarning] = []
    lock = threading.Lock()

    def record(event: BudgetWarning) -> None:
        with lock:
            events.append(event)

    budgets = [
        Budget(tokens=4_000, key="hot", window="1d", warn_at=0.5, on_warn=record, ledger=lg)
        for lg in ledgers
    ]
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        budget = budgets[i % 2]
        barrier.wait()
        for _ in range(40):
            token = budget.ledger.reserve(Amount(tokens=10), budget)
            budget.ledger.settle(token, Amount(tokens=10))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budgets[0].snapshot().spent == Amount(tokens=3_200)
    assert len(events) == 1
    assert events[0].spent >= 2_000 and events[0].window == "86400s"


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_warn_fires_exactly_once_across_tasks(redis_ledgers: Any) -> None:
    """100 concurrent areserve calls crossing warn_at: one warning, in the task that crossed."""
    import asyncio

    ledger = redis_ledgers()
    events: list[BudgetWarning] = []
    budget = Budget(calls=100, key="agents", warn_at=0.9, on_warn=events.append, ledger=ledger)
    tokens = await asyncio.gather(*(ledger.areserve(Amount(calls=1), budget) for _ in range(100)))
    assert len(events) == 1 and (events[0].dimension, events[0].spent) == ("calls", 90)
    await asyncio.gather(*(ledger.asettle(t, Amount(calls=1)) for t in tokens))
    assert budget.snapshot().spent == Amount(calls=100)
    await ledger.aclose()


@pytest.mark.redis
def test_redis_holds_on_several_keyed_budgets_are_all_or_nothing(redis_ledgers: Any) -> None:
    """Holds on a per-user and a per-tenant key of one ledger: a refusal releases the other."""
    ledger = redis_ledgers()
    per_user = Budget(tokens=50, key="user:1", window="1d", ledger=ledger)
    per_tenant = Budget(tokens=1_000, key="tenant:a", window="1d", ledger=ledger)
    owners = [(per_user, "s1", "user"), (per_tenant, "s0", "tenant")]
    Holds.reserve(owners, Amount(tokens=40)).settle(Amount(tokens=40))
    with pytest.raises(BudgetExceeded) as info:
        Holds.reserve(owners, Amount(tokens=20))
    assert info.value.session_name == "user"
    assert per_tenant.snapshot() == LedgerSnapshot(Amount(tokens=40), Amount(), 0)
