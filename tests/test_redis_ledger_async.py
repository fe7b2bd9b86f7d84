"""RedisLedger's call caps and its async faces (redis.asyncio), on the real test Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

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


@pytest.fixture
def make_ledger(redis_url: str) -> Iterator[Any]:
    """Build RedisLedgers on unique budget names; their keys are deleted after the test."""
    made: list[RedisLedger] = []

    def make(name: str | None = None, **kwargs: Any) -> RedisLedger:
        ledger = RedisLedger(redis_url, name or f"t-{uuid.uuid4().hex}", prefix=PREFIX, **kwargs)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger._closed = False
        ledger.reset()
        ledger.close()


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
    assert ticks >= 50  # the loop ran other tasks between round trips
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
