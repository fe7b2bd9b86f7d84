"""RateLimiter on a real Redis: one Lua round trip, NOSCRIPT reload, expiry, many processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from llmctx._exceptions import ConfigError, StoreError  # noqa: E402
from llmctx._limits import RateLimiter, WouldBlock  # noqa: E402
from llmctx._redis import RedisRateStore  # noqa: E402
from llmctx._waiting import _handed_out  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A redis-py client on the test server."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def name(client: Any, unique: str) -> Iterator[str]:
    """A unique limiter name; its keys are deleted afterwards."""
    yield f"test-{unique}"
    for key in client.scan_iter(match=f"{{llmctx:rl:test-{unique}}}*"):
        client.delete(key)
    client.delete(f"llmctx-test-log-{unique}")


def _server_time(client: Any) -> float:
    sec, usec = client.time()
    return float(sec) + usec / 1e6


def test_two_limiters_share_one_redis_limit(client: Any, name: str) -> None:
    """Two limiters on one RedisRateStore name share the burst: the second one is refused."""
    a = RateLimiter(rpm=60, burst=3.0, store=RedisRateStore(client, name))  # burst of 3
    b = RateLimiter(rpm=60, burst=3.0, store=RedisRateStore(client, name))
    a.acquire_nowait()
    b.acquire_nowait()
    a.acquire_nowait()
    with pytest.raises(WouldBlock) as info:
        b.acquire_nowait()
    assert info.value.retry_after is not None
    assert 0.9 < info.value.retry_after <= 1.0


def test_key_is_hash_tagged_and_expires(client: Any, name: str) -> None:
    """The state key carries a cluster hash tag and an expiry of horizon + ttl."""
    store = RedisRateStore(client, name, ttl=5)
    limiter = RateLimiter(rpm=60, tpm=6_000, burst=1.0, store=store)
    limiter.acquire_nowait(tokens=50)
    assert store.key == f"{{llmctx:rl:{name}}}:gcra"
    pttl = client.pttl(store.key)
    assert 5_000 < pttl <= 6_100  # 1 s until the request bucket is full again, plus 5 s


def test_settle_release_and_statistics_round_trip(client: Any, name: str) -> None:
    """Settle and release adjust the shared state; statistics read it back."""
    # 1 token/s refill with a 100-token bucket: the real clock adds < 1 token while it runs.
    limiter = RateLimiter(tpm=60, burst=100.0, store=RedisRateStore(client, name))
    r = limiter.acquire_nowait(tokens=80)
    r.settle(30)
    assert limiter.statistics().available_tokens == pytest.approx(70, abs=1)
    r2 = limiter.acquire_nowait(tokens=60)
    r2.release()
    assert limiter.statistics().available_tokens == pytest.approx(70, abs=1)
    limiter.feedback(retry_after=30)
    with pytest.raises(WouldBlock) as info:
        limiter.acquire_nowait(tokens=1)
    assert info.value.retry_after is not None
    assert info.value.retry_after > 29


def test_script_is_reloaded_after_script_flush(client: Any, name: str) -> None:
    """After SCRIPT FLUSH (a restarted Redis) the next acquire reloads the script and works."""
    limiter = RateLimiter(rpm=600, store=RedisRateStore(client, name))
    limiter.acquire_nowait()
    client.script_flush()
    limiter.acquire_nowait()
    assert limiter.statistics().admitted == 2


_WORKER = textwrap.dedent(
    """
    import os, sys
    import redis
    from llmctx._limits import RateLimiter
    from llmctx._redis import RedisRateStore

    client = redis.Redis.from_url(os.environ["URL"])
    limiter = RateLimiter(
        rpm=float(os.environ["RPM"]), burst=float(os.environ["BURST"]),
        store=RedisRateStore(client, os.environ["NAME"]),
    )
    log = os.environ["LOG"]
    stamp = client.register_script(
        "local t = redis.call('TIME') "
        "return redis.call('RPUSH', KEYS[1], t[1] .. '.' .. string.format('%06d', t[2]))"
    )
    for _ in range(int(os.environ["N"])):
        r = limiter.reserve(timeout=60)
        stamp(keys=[log])  # the admission as the "provider" sees it: at or after the grant
    """
)


def test_processes_sharing_a_redis_limiter_never_exceed_it(
    client: Any, name: str, redis_url: str, unique: str
) -> None:
    """Four processes on one Redis limit: admissions logged in Redis never outrun the rate."""
    rate, burst, procs, per_proc = 100.0, 0.05, 4, 40  # 100/s, bursts of 5
    log = f"llmctx-test-log-{unique}"
    env = {
        **os.environ,
        "URL": redis_url,
        "RPM": str(rate * 60),
        "BURST": str(burst),
        "NAME": name,
        "LOG": log,
        "N": str(per_proc),
    }
    t0 = _server_time(client)
    children = [
        subprocess.Popen([sys.executable, "-c", _WORKER], env=env, stderr=subprocess.PIPE)
        for _ in range(procs)
    ]
    try:
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err.decode()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    stamps = sorted(float(s) for s in client.lrange(log, 0, -1))
    assert len(stamps) == procs * per_proc
    # Each logged stamp is at or after its admission, so the k-th stamp at time t proves k
    # admissions by t: GCRA allows at most burst + 1 + rate * (t - t0) of them.
    allowed_extra = rate * burst + 1
    over = [
        (k, t - t0)
        for k, t in enumerate(stamps, start=1)
        if k > allowed_extra + rate * (t - t0) + 1e-6
    ]
    assert over == []
    # And the whole run took at least as long as the rate requires.
    assert stamps[-1] - t0 >= (len(stamps) - allowed_extra) / rate


# -- The Redis convention: a client or a URL, StoreError out ----------------------------------


def test_store_built_from_a_url_shares_the_limit(client: Any, name: str, redis_url: str) -> None:
    """A store built from a URL shares the limit of one given a client; close() is its own."""
    with RedisRateStore(redis_url, name) as owned, RedisRateStore(client, name) as shared:
        a = RateLimiter(rpm=60, burst=2.0, store=owned)  # burst of 2
        b = RateLimiter(rpm=60, burst=2.0, store=shared)
        a.acquire_nowait()
        b.acquire_nowait()
        with pytest.raises(WouldBlock):
            a.acquire_nowait()
    assert client.ping()  # the caller's client stays usable after its store closed


def test_non_client_is_a_config_error() -> None:
    """Something that is neither a URL nor a redis client raises ConfigError."""
    with pytest.raises(ConfigError, match=r"redis\.Redis client or a URL"):
        RedisRateStore(42, "x")  # type: ignore[arg-type]


def test_unreachable_redis_is_a_store_error_without_the_password() -> None:
    """An acquire that cannot reach Redis raises StoreError naming the server, not its password."""
    secret = "s3cret-Pa55word"
    with RedisRateStore(f"redis://someone:{secret}@127.0.0.1:1/0", "x") as store:
        limiter = RateLimiter(rpm=60, store=store)
        with pytest.raises(StoreError) as info:
            limiter.acquire_nowait()
        message = str(info.value)
        assert "127.0.0.1:1" in message
        assert "nothing was admitted" in message
        assert secret not in message
        assert secret not in repr(store)
        assert _handed_out(limiter._admits) == 0  # nothing was admitted
