"""RateLimiter and ResourcePool side by side with asyncio, anyio and rate-limit libraries.

Run::

    python benchmarks/bench_limits.py [--ops N] [--redis-url URL]

The peer libraries are optional (``pip install aiolimiter limits pyrate-limiter``); missing
ones are skipped. Redis figures need a server (``--redis-url`` or ``$LLMCTX_TEST_REDIS_URL``);
the benchmark uses its own key names and deletes them afterwards.

What it prints:

* uncontended acquire+release in asyncio, microseconds per pair, and the ratio to
  ``asyncio.Semaphore`` (targets: ResourcePool/RateLimiter <= 1.5x; faster than aiolimiter,
  limits and pyrate-limiter). The rate limiters are given a limit they never reach;
* contended throughput: 1,000 tasks sharing 10 slots, each taking a slot 20 times and
  yielding once while holding it (target: ResourcePool >= 0.8x asyncio.Semaphore);
* RedisRateStore acquire vs a raw ``EVALSHA`` of a no-op script (target >= 0.7x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from llmctx._limits import RateLimiter, RedisRateStore
from llmctx._pool import ResourcePool

BIG = 10**12  # a rate no benchmark reaches


async def _time_pairs(step: Callable[[], Awaitable[None]], ops: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` microseconds per call of ``step``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(ops):
            await step()
        best = min(best, (time.perf_counter() - start) / ops * 1e6)
    return best


def _uncontended_cases() -> dict[str, Callable[[], Awaitable[None]]]:
    cases: dict[str, Callable[[], Awaitable[None]]] = {}

    sem = asyncio.Semaphore(10)

    async def semaphore() -> None:
        async with sem:
            pass

    cases["asyncio.Semaphore"] = semaphore

    cap = anyio.CapacityLimiter(10)

    async def capacity_limiter() -> None:
        async with cap:
            pass

    cases["anyio.CapacityLimiter"] = capacity_limiter

    pool = ResourcePool([None], capacity=10)

    async def resource_pool() -> None:
        async with pool.acquire():
            pass

    cases["llmctx.ResourcePool"] = resource_pool

    limiter = RateLimiter(rpm=BIG, tpm=BIG, burst=60)

    async def rate_limiter() -> None:
        async with limiter.acquire(tokens=100) as r:
            r.settle(80)

    cases["llmctx.RateLimiter (rpm+tpm, settle)"] = rate_limiter

    limiter_rpm = RateLimiter(rpm=BIG, burst=60)

    async def rate_limiter_rpm() -> None:
        async with limiter_rpm.acquire():
            pass

    cases["llmctx.RateLimiter (rpm only)"] = rate_limiter_rpm

    try:
        from aiolimiter import AsyncLimiter

        aio = AsyncLimiter(BIG, 60)

        async def aiolimiter_case() -> None:
            async with aio:
                pass

        cases["aiolimiter.AsyncLimiter"] = aiolimiter_case
    except ImportError:
        pass

    try:
        from limits import parse
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        item = parse(f"{BIG}/minute")
        lim = MovingWindowRateLimiter(MemoryStorage())

        async def limits_case() -> None:
            await lim.hit(item, "bench")

        cases["limits (moving window, hit)"] = limits_case
    except ImportError:
        pass

    try:
        from pyrate_limiter import Duration, Limiter, Rate

        pyrate = Limiter(Rate(BIG, Duration.MINUTE))

        async def pyrate_case() -> None:
            await pyrate.try_acquire_async("bench")

        cases["pyrate_limiter (try_acquire_async)"] = pyrate_case
    except ImportError:
        pass
    return cases


async def _contended(make: Callable[[], Callable[[], Any]], tasks: int, rounds: int) -> float:
    """Slot acquisitions per second with ``tasks`` tasks contending."""
    acquire = make()

    async def worker() -> None:
        for _ in range(rounds):
            async with acquire():
                await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return tasks * rounds / (time.perf_counter() - start)


def _contended_cases() -> dict[str, Callable[[], Callable[[], Any]]]:
    def semaphore() -> Callable[[], Any]:
        sem = asyncio.Semaphore(10)
        return lambda: sem

    def capacity_limiter() -> Callable[[], Any]:
        cap = anyio.CapacityLimiter(10)
        return lambda: cap

    def pool() -> Callable[[], Any]:
        p = ResourcePool([None], capacity=10)
        return p.acquire

    def pool_ten() -> Callable[[], Any]:
        p = ResourcePool(range(10), capacity=1)
        return p.acquire

    return {
        "asyncio.Semaphore(10)": semaphore,
        "anyio.CapacityLimiter(10)": capacity_limiter,
        "llmctx.ResourcePool(1 resource x 10)": pool,
        "llmctx.ResourcePool(10 resources x 1)": pool_ten,
    }


def _redis(url: str, ops: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    store = RedisRateStore(client, name)
    limiter = RateLimiter(rpm=BIG, tpm=BIG, burst=60, store=store)
    noop = client.register_script("return 0")
    try:
        noop(keys=[f"{{llmctx:rl:{name}}}:noop"])
        limiter.acquire_nowait(tokens=1)

        def rate(fn: Callable[[], Any]) -> float:
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(ops):
                    fn()
                runs.append(ops / (time.perf_counter() - start))
            return statistics.median(runs)

        raw = rate(lambda: noop(keys=[f"{{llmctx:rl:{name}}}:noop"]))
        acq = rate(lambda: limiter.acquire_nowait(tokens=100))
        print("\nRedis (one round trip per acquire)")
        print(f"  raw EVALSHA no-op              {raw:10.0f} /s")
        print(f"  RedisRateStore acquire_nowait  {acq:10.0f} /s   ratio {acq / raw:.2f}x")
    finally:
        store.clear()
        client.close()


async def _main(ops: int) -> None:
    print(f"Uncontended acquire+release in asyncio ({ops} pairs, best of 5)")
    results: dict[str, float] = {}
    for label, step in _uncontended_cases().items():
        results[label] = await _time_pairs(step, ops)
    base = results["asyncio.Semaphore"]
    for label, us in results.items():
        print(f"  {label:40s} {us:7.2f} us   {us / base:5.2f}x")

    print("\nContended: 1,000 tasks on 10 slots, 20 acquisitions each (best of 3)")
    through: dict[str, float] = {}
    for label, make in _contended_cases().items():
        through[label] = max([await _contended(make, 1000, 20) for _ in range(3)])
    base = through["asyncio.Semaphore(10)"]
    for label, per_s in through.items():
        print(f"  {label:40s} {per_s:9.0f} /s   {per_s / base:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--redis-url", default=os.environ.get("LLMCTX_TEST_REDIS_URL"))
    args = parser.parse_args()
    asyncio.run(_main(args.ops))
    if args.redis_url:
        _redis(args.redis_url, max(1000, args.ops // 10))
    else:
        print("\nRedis: skipped (pass --redis-url or set LLMCTX_TEST_REDIS_URL)")


if __name__ == "__main__":
    main()
