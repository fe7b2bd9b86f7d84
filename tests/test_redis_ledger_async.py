"""RedisLedger's call caps and its async faces (redis.asyncio) on a real Redis, including
cancellation while a reserve or settle is in flight."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

import test_redis_ledger
from llmctx._budget import Amount, Budget, Holds, LedgerSnapshot
from llmctx._exceptions import BudgetExceeded, StoreError
from llmctx._redis import RedisLedger

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis

PREFIX = "llmctx-test"


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio."""
    return "asyncio"


# test_redis_ledger's: RedisLedgers on unique names, their keys deleted after the test.
make_ledger = test_redis_ledger.make_ledger


def test_call_caps_on_redis(make_ledger: Any) -> None:
    """calls and tool_calls caps refuse past the cap across ledger objects, and count settles."""
    name = f"t-{uuid.uuid4().hex}"
    first, second = make_ledger(name), make_ledger(name)
    budget_a = Budget(calls=2, tool_calls=1, ledger=first)
    budget_b = Budget(calls=2, tool_calls=1, ledger=second)
    a = first.reserve(Amount(calls=1), budget_a)
    second.reserve(Amount(calls=1), budget_b)
    with pytest.raises(BudgetExceeded) as info:
        second.reserve(Amount(calls=1), budget_b)
    assert (info.value.dimension, info.value.limit, info.value.reserved) == ("calls", 2, 2)
    first.settle(a, Amount(tokens=5, calls=1))
    tool = second.reserve(Amount(tool_calls=1), budget_b)
    with pytest.raises(BudgetExceeded) as info:
        first.reserve(Amount(tool_calls=1), budget_a)
    assert info.value.dimension == "tool_calls"
    second.settle(tool, Amount(tool_calls=1))
    assert first.snapshot() == LedgerSnapshot(
        Amount(tokens=5, calls=1, tool_calls=1), Amount(calls=1), 1
    )


@pytest.mark.anyio
async def test_async_faces_match_the_sync_ones(make_ledger: Any) -> None:
    """areserve/asettle/arelease hold, spend and refuse exactly as reserve/settle/release do."""
    ledger: RedisLedger = make_ledger()
    budget = Budget(usd="0.01", tokens=100, calls=3, ledger=ledger)
    a = await ledger.areserve(Amount(Decimal("0.004"), 60, 1, 1), budget)
    b = await ledger.areserve(Amount(Decimal("0.004"), 30, 1, 1), budget)
    with pytest.raises(BudgetExceeded) as info:
        await ledger.areserve(Amount(Decimal("0.004"), 1, 1, 1), budget)
    assert (info.value.dimension, info.value.spent, info.value.reserved) == (
        "usd",
        Decimal(0),
        Decimal("0.008"),
    )
    await ledger.asettle(a, Amount(Decimal("0.001"), 20, 1, 1))
    await ledger.asettle(a, Amount(Decimal("0.001"), 20, 1, 1))  # a retry counts once
    await ledger.arelease(b)
    await ledger.arelease(b)
    assert ledger.snapshot() == LedgerSnapshot(Amount(Decimal("0.001"), 20, 1, 1), Amount(), 0)
    await ledger.aclose()


@pytest.mark.anyio
async def test_holds_areserve_awaits_the_ledger(make_ledger: Any) -> None:
    """Holds.areserve on two Redis accounts is all or nothing and never calls the sync face."""
    ledger: RedisLedger = make_ledger()
    sync_calls: list[str] = []
    for name in ("reserve", "settle", "release"):
        original = getattr(ledger, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            sync_calls.append(_name)
            return _original(*args)

        setattr(ledger, name, spy)
    roomy = Budget(tokens=100, ledger=ledger)
    tight = Budget(tokens=10, key="user:1", ledger=ledger)
    with pytest.raises(BudgetExceeded):
        await Holds.areserve([(roomy, "s1", None), (tight, "s2", None)], Amount(tokens=11))
    assert ledger.snapshot() == LedgerSnapshot(Amount(), Amount(), 0)  # the first was released
    holds = await Holds.areserve([(roomy, "s1", None), (tight, "s2", None)], Amount(tokens=4))
    await holds.asettle(Amount(tokens=3))
    assert ledger.snapshot().spent == Amount(tokens=3)
    assert tight.snapshot().spent == Amount(tokens=3)
    assert sync_calls == []
    await ledger.aclose()


@pytest.mark.anyio
async def test_async_face_keeps_the_event_loop_running(make_ledger: Any) -> None:
    """While 200 concurrent areserve/asettle pairs run, a ticker task keeps getting turns."""
    ledger: RedisLedger = make_ledger()
    budget = Budget(tokens=10**9, ledger=ledger)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def pair() -> None:
        await ledger.asettle(await ledger.areserve(Amount(tokens=10), budget), Amount(tokens=7))

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(pair() for _ in range(200)))
    done.set()
    await tick
    assert ticks >= 10  # a blocking face would give the ticker one or two turns in all
    assert ledger.snapshot() == LedgerSnapshot(Amount(tokens=1_400), Amount(), 0)
    await ledger.aclose()


@pytest.mark.anyio
async def test_async_unreachable_redis_raises_store_error() -> None:
    """areserve against a closed port raises StoreError saying nothing was reserved."""
    ledger = RedisLedger("redis://:s3cret-pw@127.0.0.1:1/0", "x", renew_every=0)
    with pytest.raises(StoreError) as info:
        await ledger.areserve(Amount(tokens=1), Budget(tokens=5, ledger=ledger))
    assert "nothing was reserved" in str(info.value)
    assert "s3cret-pw" not in str(info.value)
    await ledger.aclose()


# -- Cancellation while a round trip is in flight (a Redis of the test's own, paused) ---------


async def wait_until(condition: Any) -> None:
    """Poll ``condition`` on the loop until it holds (the caller bounds it with fail_after)."""
    while not condition():  # noqa: ASYNC110 (Redis state: nothing here could set an Event)
        await asyncio.sleep(0.01)


async def paused_call(admin: Any, started: Any) -> asyncio.Task[Any]:
    """Start ``started()`` while Redis is paused; return its task once Redis holds its command.

    ``CLIENT PAUSE ... WRITE`` parks the script on the server (``blocked_clients``), so the
    task is cancelled with its command sent and unanswered: the moment a cancellation can
    leave a reservation behind.
    """
    admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    task = asyncio.ensure_future(started())
    await wait_until(lambda: admin.info("clients")["blocked_clients"] >= 1)
    return task


async def cancel_and_unpause(task: asyncio.Task[Any], admin: Any) -> None:
    """Cancel ``task``, wait for it to end, then let Redis run what it parked."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    admin.execute_command("CLIENT", "UNPAUSE")


def pool_in_use(ledger: RedisLedger) -> int:
    """Connections the ledger's async client has checked out (a leak shows here)."""
    client = ledger._conn.async_client()
    return len(client.connection_pool._in_use_connections)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """URL of a redis-server started for this test alone (test_redis_ledger's), so pausing it
    stalls no one else."""
    yield from test_redis_ledger.own_redis.__wrapped__(tmp_path)


def patient(url: str) -> Any:
    """A client without redis-py's default 5 s read timeout: a paused Redis may take longer
    than that on a busy machine, and the tests bound their waits with fail_after instead."""
    return redis.Redis.from_url(url, socket_timeout=None)


@pytest.fixture
def admin(own_redis: str) -> Iterator[Any]:
    """A client on the test's own Redis that always unpauses it at the end."""
    client = redis.Redis.from_url(own_redis)
    yield client
    client.execute_command("CLIENT", "UNPAUSE")
    client.close()


@pytest.mark.anyio
async def test_areserve_cancelled_in_flight_holds_nothing_for_long(
    own_redis: str, admin: Any
) -> None:
    """An areserve cancelled with its script parked on Redis leaves no lasting hold or task."""
    ledger = RedisLedger(patient(own_redis), "cancel-reserve", reservation_ttl=2.0, renew_every=0)
    ledger._audit = True
    budget = Budget(tokens=100, ledger=ledger)
    before = asyncio.all_tasks()
    with anyio.fail_after(15):
        task = await paused_call(admin, lambda: ledger.areserve(Amount(tokens=100), budget))
        await cancel_and_unpause(task, admin)
        await ledger.aclose()  # waits for the release the cancellation started
        # The release either found the hold or ran first; then the hold is never renewed and
        # expires. Either way nothing stays held and nothing is double-counted.
        await wait_until(
            lambda: ledger_snapshot(own_redis, "cancel-reserve", audit=True).reservations == 0
        )
    snap = ledger_snapshot(own_redis, "cancel-reserve")
    assert snap.reserved == Amount()
    assert snap.spent in (Amount(), Amount(tokens=100))  # released, or expired (fail closed)
    assert snap.spent == snap.expired
    assert ledger._renewal.members() == []
    assert asyncio.all_tasks() <= before  # the release task is done, nothing else left
    assert not ledger._cleanups


@pytest.mark.anyio
async def test_asettle_cancelled_in_flight_settles_once(own_redis: str, admin: Any) -> None:
    """An asettle cancelled with its script parked on Redis is settled exactly once after all."""
    ledger = RedisLedger(patient(own_redis), "cancel-settle", renew_every=0)
    budget = Budget(tokens=100, ledger=ledger)
    with anyio.fail_after(15):
        token = await ledger.areserve(Amount(tokens=100), budget)
        task = await paused_call(admin, lambda: ledger.asettle(token, Amount(tokens=70)))
        await cancel_and_unpause(task, admin)
        assert pool_in_use(ledger) <= 1  # the cancelled connection was not kept
        await ledger.aclose()
    assert ledger_snapshot(own_redis, "cancel-settle") == LedgerSnapshot(
        Amount(tokens=70), Amount(), 0
    )


@pytest.mark.anyio
async def test_holds_asettle_cancelled_settles_every_hold(own_redis: str, admin: Any) -> None:
    """Holds.asettle cancelled on its first of two accounts still settles both, once each."""
    ledger = RedisLedger(patient(own_redis), "cancel-holds", renew_every=0)
    per_user = Budget(tokens=100, key="user:1", ledger=ledger)
    per_tenant = Budget(tokens=1_000, key="tenant:a", ledger=ledger)
    with anyio.fail_after(15):
        holds = await Holds.areserve(
            [(per_user, "s1", None), (per_tenant, "s0", None)], Amount(tokens=50)
        )
        task = await paused_call(admin, lambda: holds.asettle(Amount(tokens=20)))
        await cancel_and_unpause(task, admin)
        await ledger.aclose()
    reader = RedisLedger(own_redis, "cancel-holds", renew_every=0)
    for budget in (per_user, per_tenant):
        again = Budget(tokens=budget.tokens, key=budget.key, ledger=reader)
        assert again.snapshot() == LedgerSnapshot(Amount(tokens=20), Amount(), 0)
    reader.close()


@pytest.mark.anyio
async def test_cancelled_reserves_under_load_never_double_count(own_redis: str, admin: Any) -> None:
    """200 reserve/settle pairs, half cancelled at random points: no limit passed, none lost."""
    import random

    rng = random.Random(15)
    ledger = RedisLedger(patient(own_redis), "cancel-load", reservation_ttl=2.0, renew_every=0.5)
    ledger._audit = True
    budget = Budget(tokens=5_000, calls=150, ledger=ledger)
    settled: list[int] = []

    async def pair(i: int) -> None:
        try:
            token = await ledger.areserve(Amount(tokens=40, calls=1), budget)
        except BudgetExceeded:
            return
        await asyncio.sleep(0)
        await ledger.asettle(token, Amount(tokens=i % 40, calls=1))
        settled.append(i)

    with anyio.fail_after(30):
        tasks = [asyncio.ensure_future(pair(i)) for i in range(200)]
        for _ in range(100):
            await asyncio.sleep(0)
            rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ledger.aclose()
        await wait_until(
            lambda: ledger_snapshot(own_redis, "cancel-load", audit=True).reservations == 0
        )
    ledger._closed = False
    replayed = test_redis_ledger.replay_audit(
        ledger, budget
    )  # asserts no state ever passed a limit
    snap = ledger.snapshot()
    assert replayed == snap
    # Every settle that returned counted once; the rest were released or expired.
    assert snap.spent.calls - snap.expired.calls >= len(settled)
    ledger.close()


def ledger_snapshot(url: str, name: str, audit: bool = False) -> LedgerSnapshot:
    """The budget ``name``'s own account read through a fresh ledger (whose sweeps of expired
    reservations go to the audit log if ``audit``)."""
    reader = RedisLedger(url, name, renew_every=0)
    reader._audit = audit
    try:
        return reader.snapshot()
    finally:
        reader.close()
