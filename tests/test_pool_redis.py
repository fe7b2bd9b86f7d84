"""ResourcePool on a real Redis: shared capacity, renewal, and a SIGKILLed holder's lease expiring."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

redis = pytest.importorskip("redis")

from llmctx._exceptions import ConfigError, StoreError  # noqa: E402
from llmctx._pool import ResourcePool  # noqa: E402
from llmctx._redis import RedisLeaseStore  # noqa: E402
from llmctx._waiting import WouldBlock  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def anyio_backend() -> str:
    """Run the anyio-marked tests on asyncio (the pool's async side is asyncio)."""
    return "asyncio"


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A redis-py client on the test server."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def name(client: Any, unique: str) -> Iterator[str]:
    """A unique pool name; its key is deleted afterwards."""
    yield f"test-{unique}"
    client.delete(f"{{llmctx:pool:test-{unique}}}:leases")


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    # The condition lives in Redis or another process: there is no event to wait on.
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        threading.Event().wait(0.01)


def test_bad_store_arguments_are_config_errors(client: Any) -> None:
    """An empty name, non-positive ttl, or renew_every >= lease_ttl raise ConfigError."""
    with pytest.raises(ConfigError):
        RedisLeaseStore(client, "")
    with pytest.raises(ConfigError):
        RedisLeaseStore(client, "x", lease_ttl=0)
    with pytest.raises(ConfigError, match="renew_every"):
        RedisLeaseStore(client, "x", lease_ttl=1, renew_every=1)
    with pytest.raises(ConfigError):
        RedisLeaseStore(client, "x", poll_interval=-1)


def test_two_pools_share_one_capacity_and_release_reaches_the_other(client: Any, name: str) -> None:
    """Two pools (two stores) on one name share the capacity; a release lets the other in."""
    a_store = RedisLeaseStore(client, name, poll_interval=0.01)
    b_store = RedisLeaseStore(client, name, poll_interval=0.01)
    a = ResourcePool(["gpu0", "gpu1"], capacity=[4, 2], store=a_store)
    b = ResourcePool(["gpu0", "gpu1"], capacity=[4, 2], store=b_store)
    try:
        big = a.acquire_nowait(4)
        assert big.resource == "gpu0"  # the most free units
        small = b.acquire_nowait(2)
        assert small.resource == "gpu1"  # gpu0 is full in Redis, though b holds nothing
        with pytest.raises(WouldBlock):
            b.acquire_nowait(1)
        assert client.zcard(a_store.key) == 2
        got: list[str] = []

        def waiter() -> None:
            with b.acquire(3, timeout=10) as lease:
                got.append(lease.resource)

        t = threading.Thread(target=waiter)
        t.start()
        _wait_until(lambda: b.statistics().waiting == 1)
        big.release()  # in pool a: pool b learns of it by polling Redis
        t.join(10)
        assert got == ["gpu0"]
        small.release()
        assert client.zcard(a_store.key) == 0
    finally:
        a_store.close()
        b_store.close()


def test_threads_on_two_pools_never_exceed_the_shared_capacity(client: Any, name: str) -> None:
    """Eight threads on two pools sharing 3 units never hold more than 3 at once."""
    stores = [RedisLeaseStore(client, name, poll_interval=0.005) for _ in range(2)]
    pools = [ResourcePool(["w"], capacity=3, store=s) for s in stores]
    guard = threading.Lock()
    holding = [0]
    peak = [0]
    errors: list[BaseException] = []

    def worker(pool: ResourcePool[str]) -> None:
        try:
            for _ in range(15):
                with pool.acquire(1, timeout=30):
                    with guard:
                        holding[0] += 1
                        peak[0] = max(peak[0], holding[0])
                    threading.Event().wait(0.001)  # hold it for a moment
                    with guard:
                        holding[0] -= 1
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(pools[i % 2],)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert 1 <= peak[0] <= 3
        assert sum(p.statistics().acquired for p in pools) == 8 * 15
        assert client.zcard(stores[0].key) == 0
    finally:
        for s in stores:
            s.close()


@pytest.mark.anyio
async def test_async_waiter_gets_capacity_released_by_another_pool(client: Any, name: str) -> None:
    """An asyncio waiter is granted capacity freed in another pool (timer-driven poll)."""
    await waiter_gets_capacity_released_by_another_pool(client, name)


async def waiter_gets_capacity_released_by_another_pool(client: Any, name: str) -> None:
    """The body of the test above on ``client`` (test_redis_cluster runs it on a cluster)."""
    a_store = RedisLeaseStore(client, name, poll_interval=0.01)
    b_store = RedisLeaseStore(client, name, poll_interval=0.01)
    a = ResourcePool(["w"], capacity=1, store=a_store)
    b = ResourcePool(["w"], capacity=1, store=b_store)
    try:
        held = a.acquire_nowait()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def take() -> None:
                    async with b.acquire(timeout=10) as lease:
                        assert lease.resource == "w"

                tg.start_soon(take)
                while b.statistics().waiting != 1:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
                held.release()
        assert b.statistics().acquired == 1
    finally:
        a_store.close()
        b_store.close()


def test_heartbeat_renews_held_leases(client: Any, name: str) -> None:
    """While held, a lease's expiry keeps moving forward (the heartbeat renews it)."""
    store = RedisLeaseStore(client, name, lease_ttl=0.6, renew_every=0.1)
    pool = ResourcePool(["w"], capacity=1, store=store)
    try:
        lease = pool.acquire_nowait()
        (member, first), *_ = client.zrange(store.key, 0, -1, withscores=True)
        _wait_until(lambda: client.zscore(store.key, member) > first + 250)
        # Renewed past its first expiry: nobody else can take it meanwhile.
        other = ResourcePool(["w"], capacity=1, store=RedisLeaseStore(client, name))
        with pytest.raises(WouldBlock):
            other.acquire_nowait()
        lease.release()
        assert client.zcard(store.key) == 0
        assert store.lost == 0
    finally:
        store.close()


def test_lease_not_renewed_is_reported_lost(client: Any, name: str) -> None:
    """A lease that expired before renewal (a stalled holder) is counted as lost."""
    store = RedisLeaseStore(client, name, lease_ttl=0.05, renew_every=0.04)
    store.close()  # no heartbeat: the lease will expire
    pool = ResourcePool(["w"], capacity=1, store=store)
    lease = pool.acquire_nowait()
    other = ResourcePool(["w"], capacity=1, store=RedisLeaseStore(client, name))
    holder: list[Any] = []
    _wait_until(lambda: _try(other, holder))
    assert store.renew() == 1
    assert store.lost == 1
    lease.release()  # harmless: the member is already gone
    holder[0].release()


def _try(pool: ResourcePool[Any], out: list[Any]) -> bool:
    try:
        out.append(pool.acquire_nowait())
    except WouldBlock:
        return False
    return True


_HOLDER = textwrap.dedent(
    """
    import os, sys
    import redis
    from llmctx._pool import ResourcePool
    from llmctx._redis import RedisLeaseStore

    client = redis.Redis.from_url(os.environ["URL"])
    store = RedisLeaseStore(client, os.environ["NAME"], lease_ttl=0.5, renew_every=0.1)
    pool = ResourcePool(["gpu"], capacity=2, store=store)
    lease = pool.acquire_nowait(2)
    print("held", flush=True)
    sys.stdin.read()  # hold until killed
    """
)


def test_sigkilled_holder_capacity_comes_back_after_lease_expiry(
    client: Any, name: str, redis_url: str
) -> None:
    """A holder killed with SIGKILL never releases; its capacity returns once the lease expires."""
    env = {**os.environ, "URL": redis_url, "NAME": name}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    store = RedisLeaseStore(client, name, poll_interval=0.02)
    pool = ResourcePool(["gpu"], capacity=2, store=store)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"held"
        (member, first), *_ = client.zrange(store.key, 0, -1, withscores=True)
        # Alive: the child's heartbeat renews its lease past the first expiry.
        _wait_until(lambda: (client.zscore(store.key, member) or 0) > first + 300)
        with pytest.raises(WouldBlock):
            pool.acquire_nowait(1)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        with pool.acquire(2, timeout=10) as lease:  # granted once the dead lease expires
            assert lease.resource == "gpu"
            assert client.zscore(store.key, member) is None
        assert pool.statistics().timeouts == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()
        store.close()


# -- The Redis convention: a client or a URL, StoreError out ----------------------------------


def test_store_built_from_a_url_shares_the_capacity(client: Any, name: str, redis_url: str) -> None:
    """A store built from a URL works like one given a client, and close() closes only its own."""
    with RedisLeaseStore(redis_url, name) as owned, RedisLeaseStore(client, name) as shared:
        a = ResourcePool(["w"], capacity=1, store=owned)
        b = ResourcePool(["w"], capacity=1, store=shared)
        lease = a.acquire_nowait()
        with pytest.raises(WouldBlock):
            b.acquire_nowait()
        lease.release()
        b.acquire_nowait().release()
    assert client.ping()  # the caller's client stays usable after its store closed


def test_non_client_is_a_config_error() -> None:
    """Something that is neither a URL nor a redis client raises ConfigError."""
    with pytest.raises(ConfigError, match=r"redis\.Redis client or a URL"):
        RedisLeaseStore(42, "x")  # type: ignore[arg-type]


def test_unreachable_redis_is_a_store_error_without_the_password() -> None:
    """A take that cannot reach Redis raises StoreError naming the server, never its password."""
    secret = "s3cret-Pa55word"
    with RedisLeaseStore(f"redis://someone:{secret}@127.0.0.1:1/0", "x") as store:
        pool = ResourcePool(["w"], capacity=1, store=store)
        with pytest.raises(StoreError) as info:
            pool.acquire_nowait()
        message = str(info.value)
        assert "127.0.0.1:1" in message
        assert "no lease was taken" in message
        assert secret not in message
        assert secret not in repr(store)
        assert pool.statistics().borrowed == 0
