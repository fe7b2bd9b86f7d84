"""The Redis stores on a real 3-master Redis Cluster: routing, hash slots, and a slot moving."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from redis.cluster import RedisCluster  # noqa: E402

import llmctx  # noqa: E402
import test_pool_redis  # noqa: E402
from llmctx._budget import Amount, Budget  # noqa: E402
from llmctx._exceptions import ConfigError, StoreError  # noqa: E402
from llmctx._limits import RateLimiter, WouldBlock  # noqa: E402
from llmctx._pool import ResourcePool  # noqa: E402
from llmctx._redis import RedisLeaseStore, RedisLedger, RedisRateStore  # noqa: E402
from llmctx._waiting import AcquireTimeout  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def anyio_backend() -> str:
    """Run the anyio-marked tests on asyncio (the stores' async side is asyncio)."""
    return "asyncio"


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[Any]:
    """A redis-py RedisCluster client on the test cluster."""
    client = RedisCluster.from_url(redis_cluster_url.replace("redis+cluster://", "redis://"))
    yield client
    client.close()


@pytest.fixture
def name(cluster: Any, unique: str) -> Iterator[str]:
    """A unique store name; every key under it is deleted afterwards (on every primary)."""
    yield f"c-{unique}"
    for pattern in (f"*c-{unique}*",):
        for key in list(cluster.scan_iter(match=pattern)):
            cluster.delete(key)


def _node(cluster: Any, slot: int) -> Any:
    return cluster.nodes_manager.get_node_from_slot(slot)


def _plain(node: Any) -> Any:
    return redis.Redis(host=node.host, port=node.port)


def _account_keys(cluster: Any, base: str) -> list[bytes]:
    glob = "".join(f"\\{c}" if c in "[]?*\\" else c for c in base)
    return sorted(cluster.scan_iter(match=f"{glob}:*"))


# -- connection -----------------------------------------------------------------------------------


def test_ledger_own_account_from_a_cluster_url(redis_cluster_url: str, name: str) -> None:
    """A RedisLedger built from a redis+cluster:// URL reserves, refuses and settles."""
    with RedisLedger(redis_cluster_url, name) as ledger:
        assert ledger._conn.cluster
        assert "cluster 127.0.0.1:" in repr(ledger)
        budget = Budget(usd="1.00", tokens=100, ledger=ledger)
        token = ledger.reserve(Amount(usd=Decimal("0.60"), tokens=10), budget)
        with pytest.raises(llmctx.BudgetExceeded):
            ledger.reserve(Amount(usd=Decimal("0.50")), budget)
        ledger.settle(token, Amount(usd=Decimal("0.25"), tokens=4))
        ledger.settle(token, Amount(usd=Decimal("0.25"), tokens=4))  # a retry counts once
        snap = ledger.snapshot()
        assert snap.spent == Amount(usd=Decimal("0.25"), tokens=4)
        assert snap.reservations == 0


def test_ledger_given_a_redis_cluster_client(cluster: Any, name: str) -> None:
    """A RedisLedger given a RedisCluster uses it and leaves it open at close()."""
    ledger = RedisLedger(cluster, name)
    budget = Budget(tokens=10, key="user:1", window="1h", ledger=ledger)
    ledger.settle(ledger.reserve(Amount(tokens=7), budget), Amount(tokens=6))
    with pytest.raises(llmctx.BudgetExceeded):
        ledger.reserve(Amount(tokens=5), budget)
    ledger.close()
    assert cluster.ping()  # still open: the caller's client
    with RedisLedger(cluster, name) as again:
        assert again.snapshot(budget).spent == Amount(tokens=6)


def test_the_outbox_identity_does_not_depend_on_the_startup_node(
    cluster: Any, redis_cluster_url: str, name: str
) -> None:
    """Ledgers started from different nodes of one cluster share one outbox journal (a settle
    kept by one is replayed by any), and it names no node, so a changed cluster keeps it."""
    nodes = sorted({(n.host, n.port) for n in cluster.get_primaries()})
    urls = [f"redis+cluster://{host}:{port}" for host, port in nodes]
    ledgers = [RedisLedger(url, name) for url in urls]
    try:
        keys = {ledger.journal_key for ledger in ledgers}
        assert keys == {f"redis cluster llmctx {name}"}
    finally:
        for ledger in ledgers:
            ledger.close()


def test_several_budgets_on_one_session_span_nodes(redis_cluster_url: str, name: str) -> None:
    """A session's keyed, windowed and own budgets, on accounts of different nodes, are all or
    nothing."""
    with RedisLedger(redis_cluster_url, name) as ledger:
        per_user = Budget(tokens=50, key="user:1", window="1d", ledger=ledger)
        per_tenant = Budget(tokens=1_000, key="tenant:a", window="1h", ledger=ledger)
        overall = Budget(tokens=5_000, ledger=ledger)
        slots = {
            ledger._client.keyslot(ledger._account(b).held) for b in (per_user, per_tenant, overall)
        }
        assert len(slots) == 3  # three accounts, three slots (on this cluster: distinct)
        store = llmctx.testing.MemoryStore()
        with llmctx.session("keyed", budget=[per_user, per_tenant, overall], store=store) as s:
            holds = s.reserve(Amount(tokens=40))
            with pytest.raises(llmctx.BudgetExceeded) as info:
                s.reserve(Amount(tokens=20))
            assert info.value.limit == 50
            assert per_tenant.snapshot().reserved == Amount(tokens=40)  # the refused 20 let go
            holds.settle(Amount(tokens=30))
        for budget in (per_user, per_tenant, overall):
            assert budget.snapshot().spent == Amount(tokens=30)


@pytest.mark.anyio
async def test_async_faces_on_the_async_cluster_client(redis_cluster_url: str, name: str) -> None:
    """areserve/asettle/arelease run on a redis.asyncio RedisCluster the ledger builds."""
    ledger = RedisLedger(redis_cluster_url, name)
    try:
        budget = Budget(tokens=1_000, key="user:9", window="60s", ledger=ledger)
        tokens = await asyncio.gather(
            *(ledger.areserve(Amount(tokens=10), budget) for _ in range(50))
        )
        await asyncio.gather(*(ledger.asettle(t, Amount(tokens=3)) for t in tokens[:40]))
        await asyncio.gather(*(ledger.arelease(t) for t in tokens[40:]))
        from redis.asyncio.cluster import RedisCluster as AsyncCluster

        assert isinstance(ledger._conn.async_client(), AsyncCluster)
        snap = ledger.snapshot(budget)
        assert snap.spent == Amount(tokens=120)
        assert snap.reservations == 0
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_300_concurrent_areserves_on_one_node_wait_for_a_connection(
    redis_cluster_url: str, name: str
) -> None:
    """300 tasks reserving at once on one account (one node, 50 connections) all get through:
    redis.asyncio's cluster client would refuse those past 50 with MaxConnectionsError."""
    ledger = RedisLedger(redis_cluster_url, name)
    try:
        budget = Budget(tokens=10**9, key="hot", ledger=ledger)
        for _ in range(3):
            tokens = await asyncio.gather(
                *(ledger.areserve(Amount(tokens=2), budget) for _ in range(300))
            )
            await asyncio.gather(*(ledger.asettle(t, Amount(tokens=1)) for t in tokens))
        snap = ledger.snapshot(budget)
        assert snap.spent == Amount(tokens=900)
        assert snap.reservations == 0
    finally:
        await ledger.aclose()


@pytest.mark.anyio
async def test_async_client_given_is_used(cluster: Any, redis_cluster_url: str, name: str) -> None:
    """An async_client= RedisCluster given to the ledger carries its async faces."""
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    given = AsyncCluster.from_url(redis_cluster_url.replace("redis+cluster://", "redis://"))
    try:
        ledger = RedisLedger(cluster, name, async_client=given)
        budget = Budget(tokens=100, ledger=ledger)
        await ledger.asettle(await ledger.areserve(Amount(tokens=9), budget), Amount(tokens=8))
        assert ledger._conn.async_client() is given
        assert ledger.snapshot().spent == Amount(tokens=8)
        await ledger.aclose()
    finally:
        await given.aclose()


@pytest.mark.anyio
async def test_scripts_are_reloaded_on_every_master_after_script_flush(
    cluster: Any, name: str
) -> None:
    """After SCRIPT FLUSH on every master, sync and async reserves load the script again."""
    ledger = RedisLedger(cluster, name)
    try:
        budgets = [Budget(tokens=100, key=f"user:{i}", ledger=ledger) for i in range(6)]
        cluster.script_flush()  # every primary
        for budget in budgets:
            ledger.settle(ledger.reserve(Amount(tokens=2), budget), Amount(tokens=1))
        cluster.script_flush()
        for budget in budgets:
            await ledger.asettle(await ledger.areserve(Amount(tokens=2), budget), Amount(tokens=1))
        assert [ledger.snapshot(b).spent for b in budgets] == [Amount(tokens=2)] * 6
    finally:
        await ledger.aclose()


def test_async_cluster_client_as_the_client_is_a_config_error(redis_cluster_url: str) -> None:
    """A redis.asyncio RedisCluster passed as the sync client: a ConfigError naming async_client=."""
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    given = AsyncCluster.from_url(redis_cluster_url.replace("redis+cluster://", "redis://"))
    with pytest.raises(ConfigError, match="async_client="):
        RedisLedger(given, "x")


def test_plain_url_on_a_cluster_node_names_the_fix(cluster: Any, name: str) -> None:
    """A redis:// URL of one cluster node: a reserve whose slot is elsewhere says to use
    redis+cluster://."""
    node = cluster.get_primaries()[0]
    other = next(
        n
        for n in (f"{name}-{i}" for i in range(100))
        if _node(cluster, cluster.keyslot(f"{{llmctx:{n}}}")) != node
    )
    with RedisLedger(f"redis://{node.host}:{node.port}/0", other) as ledger:
        with pytest.raises(StoreError, match=r"redis\+cluster://host:port") as info:
            ledger.reserve(Amount(tokens=1), Budget(tokens=10, ledger=ledger))
        assert "Cluster node" in str(info.value)


def test_wrong_cluster_url_forms_are_config_errors() -> None:
    """A cluster URL with a database, a cluster= query or another scheme names the form to use."""
    for url in (
        "redis+cluster://127.0.0.1:7000/2",
        "redis://127.0.0.1:7000?cluster=1",
        "redis-cluster://127.0.0.1:7000",
    ):
        with pytest.raises(ConfigError, match=r"redis\+cluster://"):
            RedisLedger(url, "x")


def test_unreachable_cluster_is_a_store_error_without_the_password() -> None:
    """A cluster URL whose nodes are down: a StoreError that never shows the password."""
    with pytest.raises(StoreError) as info:
        RedisLedger("redis+cluster://:s3cret-pw@127.0.0.1:1", "x")
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


# -- keys and slots -------------------------------------------------------------------------------


def test_each_account_on_one_slot_and_accounts_on_different_slots(cluster: Any) -> None:
    """Every key of an account (and every key a script declares) hashes to one slot; two
    accounts' keys land on different slots."""
    name = "slots-check"  # fixed: the slots below are the same on every run
    ledger = RedisLedger(cluster, name)
    ledger.reset()
    try:
        ledger._audit = True
        budgets = [
            Budget(tokens=100, ledger=ledger),
            Budget(tokens=100, key="user:1", ledger=ledger),
            Budget(tokens=100, key="user:2", window="1h", ledger=ledger),
        ]
        slots = []
        for budget in budgets:
            ledger.settle(ledger.reserve(Amount(tokens=5), budget), Amount(tokens=4))
            ledger.reserve(Amount(tokens=1), budget)  # one held, so the held zset exists
            ledger.snapshot(budget)
            account = ledger._account(budget)
            keys = _account_keys(cluster, account.base)
            assert {k.rsplit(b":", 1)[-1] for k in keys} >= {b"held", b"audit"}
            declared = ledger._declared(account.base)
            assert declared == (f"{account.base}:held".encode(), f"{account.base}:moving".encode())
            found = {cluster.keyslot(k) for k in [*keys, *declared]}
            assert len(found) == 1, keys
            slots.append(found.pop())
        assert len(set(slots)) == 3
    finally:
        ledger.reset()
        assert _account_keys(cluster, "{llmctx:slots-check") == []  # reset reached every node
        ledger.close()


def test_budgets_ls_scans_every_primary(redis_cluster_url: str, cluster: Any, unique: str) -> None:
    """`llmctx budgets ls` on a cluster lists accounts living on different nodes."""
    from llmctx._cli.budgets import _accounts

    prefix = f"ls-{unique}"
    ledger = RedisLedger(cluster, "team", prefix=prefix)
    try:
        keys = [f"user:{i}" for i in range(12)]
        for key in keys:
            ledger.reserve(Amount(tokens=1), Budget(tokens=10, key=key, ledger=ledger))
        nodes = {
            _node(
                cluster,
                cluster.keyslot(ledger._account(Budget(tokens=10, key=k, ledger=ledger)).held),
            ).name
            for k in keys
        }
        assert len(nodes) == 3  # the twelve accounts live on all three masters
        found = _accounts(redis_cluster_url, prefix, None)
        assert sorted(a["key"] for a in found) == sorted(keys)
    finally:
        ledger.reset()
        ledger.close()


# -- rate store and lease store -------------------------------------------------------------------


def test_rate_store_on_the_cluster(redis_cluster_url: str, cluster: Any, name: str) -> None:
    """Two limiters on one RedisRateStore name share the burst on a cluster; statistics read it."""
    a = RateLimiter(rpm=60, burst=3.0, store=RedisRateStore(redis_cluster_url, name))
    b = RateLimiter(rpm=60, burst=3.0, store=RedisRateStore(cluster, name))
    a.acquire_nowait()
    b.acquire_nowait()
    a.acquire_nowait()
    with pytest.raises(WouldBlock):
        b.acquire_nowait()
    assert b.statistics().available_requests < 1  # the burst of 3 is shared


@pytest.mark.anyio
async def test_rate_limiter_async_on_the_cluster(cluster: Any, name: str) -> None:
    """RateLimiter.areserve on a cluster store admits up to the burst, then refuses."""
    limiter = RateLimiter(rpm=60, burst=2.0, store=RedisRateStore(cluster, name))
    await limiter.areserve(timeout=0)
    await limiter.areserve(timeout=0)
    with pytest.raises(AcquireTimeout):
        await limiter.areserve(timeout=0)


def test_lease_store_on_the_cluster(redis_cluster_url: str, cluster: Any, name: str) -> None:
    """Two pools on one RedisLeaseStore name share the capacity on a cluster."""
    a_store = RedisLeaseStore(redis_cluster_url, name, poll_interval=0.01)
    b_store = RedisLeaseStore(cluster, name, poll_interval=0.01)
    a = ResourcePool(["gpu"], capacity=2, store=a_store)
    b = ResourcePool(["gpu"], capacity=2, store=b_store)
    try:
        held = a.acquire_nowait(2)
        with pytest.raises(WouldBlock):
            b.acquire_nowait(1)
        held.release()
        b.acquire_nowait(2).release()
        assert cluster.zcard(a_store.key) == 0
    finally:
        a_store.close()
        b_store.close()


@pytest.mark.anyio
async def test_lease_store_async_waiter_on_the_cluster(cluster: Any, name: str) -> None:
    """An asyncio waiter on a cluster lease store gets the unit another pool releases."""
    await test_pool_redis.waiter_gets_capacity_released_by_another_pool(cluster, name)


# -- a slot moving --------------------------------------------------------------------------------


class _Move:
    """Moves one slot between two masters the way redis-cli --cluster reshard does."""

    def __init__(self, cluster: Any, slot: int) -> None:
        self.slot = slot
        source = _node(cluster, slot)
        target = next(n for n in cluster.get_primaries() if n.name != source.name)
        self.source, self.target = _plain(source), _plain(target)
        self.target_addr = (target.host, target.port)
        self.ids = {
            "source": self.source.execute_command("CLUSTER MYID").decode(),
            "target": self.target.execute_command("CLUSTER MYID").decode(),
        }
        self.all = [_plain(n) for n in cluster.get_primaries()]
        self.open = False

    def begin(self) -> None:
        self.open = True
        self.target.execute_command("CLUSTER SETSLOT", self.slot, "IMPORTING", self.ids["source"])
        self.source.execute_command("CLUSTER SETSLOT", self.slot, "MIGRATING", self.ids["target"])

    def migrate_keys(self) -> int:
        moved = 0
        while True:
            keys = self.source.execute_command("CLUSTER GETKEYSINSLOT", self.slot, 1000)
            if not keys:
                return moved
            host, port = self.target_addr
            self.source.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)

    def asking_get(self, key: str) -> Any:
        pipe = self.target.pipeline(transaction=False)  # one connection: ASKING, then GET
        pipe.execute_command("ASKING")
        pipe.get(key)
        return pipe.execute()[1]

    def finish(self) -> None:
        for node in (self.target, self.source, *self.all):
            node.execute_command("CLUSTER SETSLOT", self.slot, "NODE", self.ids["target"])
        self.open = False

    def close(self) -> None:
        """Complete a move a failed test left open (a slot left migrating answers ASK and
        TRYAGAIN for good, and the cluster is shared by the session), then disconnect."""
        try:
            if self.open:
                host, port = self.target_addr
                while keys := self.source.execute_command(
                    "CLUSTER GETKEYSINSLOT", self.slot, 1000
                ):  # a key on both sides (BUSYKEY) keeps the source's copy
                    self.source.execute_command(
                        "MIGRATE", host, port, "", 0, 5000, "REPLACE", "KEYS", *keys
                    )
                self.finish()
        finally:
            for node in (self.source, self.target, *self.all):
                node.close()


def test_reserves_and_settles_survive_a_slot_migration(cluster: Any, name: str) -> None:
    """While reserves and settles run in 4 threads, the account's slot moves to another master
    (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE): every reservation is settled exactly
    once and the totals equal the sum settled."""
    ledger = RedisLedger(cluster, name)
    ledger._audit = True
    budget = Budget(tokens=10**12, key="hot", ledger=ledger)
    ledger.settle(ledger.reserve(Amount(tokens=1), budget), Amount(tokens=1))
    account = ledger._account(budget)
    move = _Move(cluster, cluster.keyslot(account.held))
    stop = threading.Event()
    errors: list[BaseException] = []
    settled = [1]
    done_at: list[float] = []
    guard = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                token = ledger.reserve(Amount(tokens=rng.randint(1, 50)), budget)
                actual = rng.randint(0, 50)
                ledger.settle(token, Amount(tokens=actual))
                with guard:
                    settled[0] += actual
                    done_at.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        move.begin()
        began = time.monotonic()
        time.sleep(0.3)  # scripts meet a migrating slot with every key still on the source
        assert move.migrate_keys() >= 3
        time.sleep(0.3)  # and with every key on the target: ASK, then TRYAGAIN
        move.finish()
        finished = time.monotonic()
        time.sleep(0.3)  # MOVED: the client learns the slot's new master
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        move.close()
    assert errors == []
    assert any(t > finished for t in done_at)  # work went on after the move
    assert any(t < began for t in done_at)
    assert _node(cluster, move.slot).port == move.target_addr[1]
    snap = ledger.snapshot(budget)
    assert snap.spent == Amount(tokens=settled[0])
    assert snap.reservations == 0 and snap.reserved == Amount()
    assert snap.expired == Amount()
    audit = [e.decode() for e in cluster.lrange(f"{account.base}:audit", 0, -1)]
    reserved = [e.split()[1] for e in audit if e.startswith("r ")]
    finished_members = [e.split()[1] for e in audit if e.startswith("s ")]
    assert len(reserved) == len(set(reserved)) == len(done_at) + 1
    assert sorted(finished_members) == sorted(reserved)  # each settled once, none lost
    ledger.close()


def test_ask_is_followed_for_a_single_key_script(cluster: Any, name: str) -> None:
    """Mid-migration, with the rate store's key already on the target, an acquire follows the
    source's ASK and runs on the target."""
    limiter = RateLimiter(rpm=60, burst=3.0, store=RedisRateStore(cluster, name))
    store = limiter._store  # type: ignore[attr-defined]
    limiter.acquire_nowait()
    move = _Move(cluster, cluster.keyslot(store.key))
    try:
        move.begin()
        assert move.migrate_keys() == 1
        before = move.asking_get(store.key)
        limiter.acquire_nowait()  # ASK from the source: the key is on the target now
        assert move.asking_get(store.key) != before
        assert move.source.execute_command("CLUSTER COUNTKEYSINSLOT", move.slot) == 0
        move.finish()
        limiter.acquire_nowait()
        with pytest.raises(WouldBlock):
            limiter.acquire_nowait()
    finally:
        move.close()


def test_tryagain_while_the_slot_moves_is_retried(cluster: Any, name: str) -> None:
    """A reserve whose account is split by a slot move waits (TRYAGAIN, retried past
    redis-py's own retries) and succeeds once the move finishes."""
    ledger = RedisLedger(cluster, name)
    budget = Budget(tokens=100, key="k", ledger=ledger)
    ledger.settle(ledger.reserve(Amount(tokens=5), budget), Amount(tokens=5))
    move = _Move(cluster, cluster.keyslot(ledger._account(budget).held))
    result: list[Any] = []
    try:
        move.begin()
        move.migrate_keys()
        started = time.monotonic()
        thread = threading.Thread(
            target=lambda: result.append(ledger.reserve(Amount(tokens=7), budget))
        )
        thread.start()
        time.sleep(1.0)  # redis-py alone gives up on TRYAGAIN after about 0.4 s
        assert result == []
        move.finish()
        thread.join(10)
    finally:
        move.close()
    assert len(result) == 1
    assert time.monotonic() - started >= 1.0
    ledger.settle(result[0], Amount(tokens=6))
    assert ledger.snapshot(budget).spent == Amount(tokens=11)
    ledger.close()
