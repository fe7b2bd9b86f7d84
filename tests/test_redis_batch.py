"""Scripts asked for in one event-loop pass go to Redis as one pipeline (_redis._Batcher), on a
real Redis: each caller gets its own reply or error, a caller cancelled before the send is left
out, and a burst of async reserves and settles all land."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from llmctx._budget import Amount, Budget
from llmctx._exceptions import StoreError
from llmctx._redis import RedisLedger
from llmctx._redis._client import _Connection
from llmctx._redis._script import _Script

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis

# Appends its argument to a list and returns the list's length; errors on "bad".
_SOURCE = """
if ARGV[1] == 'bad' then return redis.error_reply('ERR bad argument') end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


def _connection(redis_url: str) -> _Connection:
    return _Connection(
        redis_url,
        owner="test",
        subject="the batch test",
        consequences={},
        refused_fix="none",
    )


def test_each_caller_gets_its_own_reply_or_error(redis_url: str) -> None:
    """50 scripts of one pass run in order; the one that fails fails only its own caller."""
    key = f"llmctx-test:batch:{uuid.uuid4().hex}"
    connection = _connection(redis_url)
    script = _Script(connection, _SOURCE, [key])
    # Loaded beforehand: after a NOSCRIPT (a flushed script cache) each caller loads the
    # script and sends again on its own, and those second sends keep no order.
    connection.client.script_load(_SOURCE)

    async def main() -> list[Any]:
        head = script.head([key])
        runs = [script.arun("append", head, "bad" if i == 7 else str(i)) for i in range(50)]
        try:
            return await asyncio.gather(*runs, return_exceptions=True)
        finally:
            await connection.aclose()

    try:
        results = asyncio.run(main())
        assert isinstance(results[7], StoreError) and "bad argument" in str(results[7])
        others = [r for i, r in enumerate(results) if i != 7]
        assert sorted(others) == list(range(1, 50))  # every other one appended once
        stored = connection.client.lrange(key, 0, -1)
        assert [int(v) for v in stored] == [i for i in range(50) if i != 7]  # in call order
    finally:
        connection.client.delete(key)
        connection.close()


def test_a_caller_cancelled_before_the_send_is_left_out(redis_url: str) -> None:
    """A script whose caller is cancelled in the pass it was asked for never runs."""
    key = f"llmctx-test:batch:{uuid.uuid4().hex}"
    connection = _connection(redis_url)
    script = _Script(connection, _SOURCE, [key])

    async def main() -> None:
        head = script.head([key])
        tasks = [asyncio.ensure_future(script.arun("append", head, str(i))) for i in range(5)]
        await asyncio.sleep(0)  # every task has queued its script; the send is next pass
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        await connection.aclose()

    try:
        asyncio.run(main())
        assert [int(v) for v in connection.client.lrange(key, 0, -1)] == [0, 1, 3, 4]
    finally:
        connection.client.delete(key)
        connection.close()


@pytest.mark.parametrize("flushed", [False, True], ids=["scripts-loaded", "after-script-flush"])
def test_a_burst_of_async_reserves_and_settles_all_land(redis_url: str, flushed: bool) -> None:
    """200 concurrent areserve/asettle pairs through the batcher all land, exactly once. After
    a SCRIPT FLUSH every caller meets NOSCRIPT and they share the reloads: a few SCRIPT LOADs in
    all (one per pipeline in flight at most), where each caller loading its own took 203 and
    held a connection each (the pool's 50)."""
    admin = redis.Redis.from_url(redis_url)
    name = f"t-{uuid.uuid4().hex}"
    ledger = RedisLedger(redis_url, name, prefix="llmctx-test")
    budget = Budget(tokens=10**9, ledger=ledger)

    def loads() -> int:
        return int(admin.info("commandstats").get("cmdstat_script|load", {}).get("calls", 0))

    async def pair() -> None:
        token = await ledger.areserve(Amount(tokens=10), budget)
        await ledger.asettle(token, Amount(tokens=3))

    async def main() -> Any:
        try:
            await asyncio.wait_for(asyncio.gather(*(pair() for _ in range(200))), 60)
            return ledger.snapshot(budget)
        finally:
            await ledger.aclose()

    try:
        if flushed:
            admin.script_flush()
        before = loads()
        snapshot = asyncio.run(main())
        assert snapshot.spent.tokens == 600 and snapshot.reserved.tokens == 0
        if flushed:
            assert 2 <= loads() - before < 50  # both scripts were loaded again, a few times
    finally:
        cleanup = RedisLedger(redis_url, name, prefix="llmctx-test")
        cleanup.reset()
        cleanup.close()
        admin.close()


def test_a_caller_cancelled_while_the_script_loads_leaves_the_load_to_the_others(
    redis_url: str,
) -> None:
    """Of two callers waiting for one SCRIPT LOAD, the one cancelled leaves it running: the
    other gets through, and the script was loaded once. (The client is a stand-in whose load
    waits for the test: a real Redis answers a load faster than the test can cancel a caller.)"""
    connection = _connection(redis_url)
    script = _Script(connection, _SOURCE, [b"k"])

    class SlowLoad:
        def __init__(self) -> None:
            self.calls = 0
            self.release = asyncio.Event()

        async def script_load(self, source: str) -> str:
            self.calls += 1
            await self.release.wait()
            return script.sha

    async def main() -> None:
        client = SlowLoad()
        first = asyncio.create_task(script._aload(client))
        second = asyncio.create_task(script._aload(client))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        client.release.set()
        await asyncio.wait_for(second, 10)
        assert client.calls == 1

    try:
        asyncio.run(main())
    finally:
        connection.close()
