"""RateLimiter and ResourcePool side by side with asyncio, anyio and rate-limit libraries.

Run::

    python benchmarks/bench_limits.py [--ops N] [--repeats N] [--duration SECONDS]
                                      [--redis-url URL] [--skip-accuracy] [--accuracy-redis]

The peer libraries are optional (``pip install aiolimiter limits pyrate-limiter``); missing
ones are skipped. Redis figures need a server (``--redis-url`` or ``$LLMCTX_TEST_REDIS_URL``);
the benchmark uses its own key names and deletes them afterwards.

Timings are the CPU time of this thread (``time.thread_time``), taken in short chunks that
rotate through the cases, and the median chunk is reported: on a machine shared with other
work, ratios within one run are what to compare. What it prints:

* uncontended acquire+release in asyncio, microseconds per pair, and the ratios to
  ``asyncio.Semaphore`` and to aiolimiter (targets: ResourcePool/RateLimiter <= 1.5x a
  Semaphore; faster than aiolimiter, limits and pyrate-limiter). The rate limiters are given
  a limit they never reach. llmctx's async acquires check for a pending cancellation every
  time and yield once every 64 grants made at once, which neither ``asyncio.Semaphore`` nor
  aiolimiter does; ``asyncio.Semaphore`` plus one ``sleep(0)`` and ``anyio.Semaphore`` show
  what a yield on every acquire costs. Each case runs in a task of its own, outside anyio;
  the "in an anyio scope" rows run inside an ``anyio.CancelScope``, where the cancellation
  check also reads anyio's scope. Then the parts of an llmctx pair, each timed alone;
* contended throughput: 1,000 tasks sharing 10 slots, each taking a slot 20 times and
  yielding once while holding it (target: ResourcePool >= 0.8x asyncio.Semaphore);
* rate accuracy: 50 tasks hammer a 6,000 rpm limiter (100/s, burst 1 s) for ``--duration``
  seconds (default 30) of wall time: the first second (the burst plus refills), the steady
  rate's error, the total against the exact GCRA allowance, admissions beyond the GCRA bound,
  and the 1-second windows above the steady limit (target: within +-1 %, none over);
  ``--accuracy-redis`` repeats it with the state in Redis;
* Redis: RedisRateStore acquires/s against a raw ``EVALSHA`` of a no-op script through the
  same client (target >= 0.7x), with the round trips per acquire counted; and the pool's
  RedisLeaseStore lease+release for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from llmctx._limits import RateLimiter
from llmctx._pool import ResourcePool
from llmctx._redis import RedisLeaseStore, RedisRateStore
from llmctx._waiting import (
    _cancel_pending,
    _fast_checkpoint,
    _get_running_loop,
    _running_loop,
    _yield_due,
)

CHECKPOINTED = "asyncio.Semaphore + sleep(0)"
AIOLIMITER = "aiolimiter.AsyncLimiter"
IN_ANYIO = " in an anyio scope"
BIG = 60 * 10**9  # one per nanosecond: the fastest rate a RateLimiter takes, never reached here


def _median_ratio_table(
    results: dict[str, list[float]], base: str, unit: str, second: str | None = None
) -> None:
    medians = {label: statistics.median(v) for label, v in results.items()}
    ref = medians[base]
    if second is not None:
        print(f"  (ratios: to {base}, then to {second})")
    for label, value in medians.items():
        extra = "" if second is None else f"   {value / medians[second]:5.2f}x"
        print(f"  {label:48s} {value:10.2f} {unit}   {value / ref:5.2f}x{extra}")


# --------------------------------------------------------------------------- uncontended
def _uncontended_cases() -> dict[str, Callable[[], Awaitable[None]]]:
    cases: dict[str, Callable[[], Awaitable[None]]] = {}

    sem = asyncio.Semaphore(10)

    async def semaphore() -> None:
        async with sem:
            pass

    cases["asyncio.Semaphore"] = semaphore

    # The cheapest acquire that is also a checkpoint: the same pair plus one yield, which is
    # what every llmctx async acquire now includes (an asyncio.Semaphore never yields).
    sem_checkpoint = asyncio.Semaphore(10)

    async def semaphore_checkpoint() -> None:
        async with sem_checkpoint:
            pass
        await asyncio.sleep(0)

    cases[CHECKPOINTED] = semaphore_checkpoint

    anyio_sem = anyio.Semaphore(10)

    async def anyio_semaphore() -> None:
        async with anyio_sem:
            pass

    cases["anyio.Semaphore (checkpoints, anyio's shape)"] = anyio_semaphore

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

    limiter_rpm = RateLimiter(rpm=BIG, burst=60)

    async def rate_limiter_rpm() -> None:
        async with limiter_rpm.acquire():
            pass

    cases["llmctx.RateLimiter (rpm only)"] = rate_limiter_rpm

    limiter = RateLimiter(rpm=BIG, tpm=BIG, burst=60)

    async def rate_limiter() -> None:
        async with limiter.acquire(tokens=100):
            pass

    cases["llmctx.RateLimiter (rpm+tpm)"] = rate_limiter

    limiter_settle = RateLimiter(rpm=BIG, tpm=BIG, burst=60)

    async def rate_limiter_settle() -> None:
        async with limiter_settle.acquire(tokens=100) as r:
            r.settle(80)

    cases["llmctx.RateLimiter (rpm+tpm, settle)"] = rate_limiter_settle
    cases["llmctx.ResourcePool" + IN_ANYIO] = resource_pool
    cases["llmctx.RateLimiter (rpm+tpm)" + IN_ANYIO] = rate_limiter

    try:
        from aiolimiter import AsyncLimiter

        aio = AsyncLimiter(BIG, 60)

        async def aiolimiter_case() -> None:
            async with aio:
                pass

        cases[AIOLIMITER] = aiolimiter_case
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


async def _chunk(step: Callable[[], Awaitable[None]], n: int, in_anyio: bool) -> float:
    """Microseconds of this thread's CPU per ``step()``, over ``n`` calls."""
    start = time.thread_time()
    if in_anyio:
        with anyio.CancelScope():
            for _ in range(n):
                await step()
    else:
        for _ in range(n):
            await step()
    return (time.thread_time() - start) / n * 1e6


async def _uncontended(ops: int, repeats: int) -> None:
    cases = _uncontended_cases()
    results: dict[str, list[float]] = {label: [] for label in cases}
    chunk = max(1, ops // repeats)
    for _ in range(repeats):
        for label, step in cases.items():
            # A task of its own, so no case sees another's state (anyio registers a task it
            # runs in, which the llmctx cancellation check then reads on every acquire).
            task = asyncio.create_task(_chunk(step, chunk, label.endswith(IN_ANYIO)))
            results[label].append(await task)
    print(f"Uncontended acquire+release in asyncio ({chunk} pairs x {repeats} chunks, median)")
    second = AIOLIMITER if AIOLIMITER in results else CHECKPOINTED
    _median_ratio_table(results, "asyncio.Semaphore", "us", second)


async def _components(ops: int, repeats: int) -> None:
    """What the parts of an uncontended llmctx pair cost, each timed alone in a task."""
    lock = threading.Lock()
    pool = ResourcePool([None], capacity=10)

    def lock_round() -> None:
        lock.acquire()
        lock.release()

    def running_loop() -> None:
        _get_running_loop()

    def cancel_check() -> None:
        _cancel_pending(_get_running_loop())

    _running_loop()  # the loop the fast check finds its task from, remembered for this thread
    cases: dict[str, tuple[Callable[[], object], bool]] = {
        "lock.acquire() + release() (the limiter's admission)": (lock_round, False),
        "pool.acquire() (the Lease, not entered)": (pool.acquire, False),
        "asyncio._get_running_loop()": (running_loop, False),
        "cancellation check, full (loop lookup + task + anyio)": (cancel_check, False),
        "cancellation check, fast (remembered loop)": (_fast_checkpoint, False),
        "cancellation check, fast" + IN_ANYIO: (_fast_checkpoint, True),
        "yield count (_yield_due)": (_yield_due, False),
    }

    async def timed(step: Callable[[], object], n: int, in_anyio: bool) -> float:
        start = time.thread_time()
        if in_anyio:
            # No await inside: the scope is there to be read by the cancellation check.
            with anyio.CancelScope():  # noqa: ASYNC100
                for _ in range(n):
                    step()
        else:
            for _ in range(n):
                step()
        return (time.thread_time() - start) / n * 1e6

    results: dict[str, list[float]] = {label: [] for label in cases}
    chunk = max(1, ops // repeats)
    for _ in range(repeats):
        for label, (step, in_anyio) in cases.items():
            results[label].append(await asyncio.create_task(timed(step, chunk, in_anyio)))
    print(f"\nParts of an uncontended pair, each alone ({chunk} calls x {repeats} chunks, median)")
    for label, values in results.items():
        print(f"  {label:54s} {statistics.median(values):10.3f} us")


def _uncontended_threads(ops: int, repeats: int) -> None:
    sem = threading.Semaphore(10)
    pool = ResourcePool([None], capacity=10)
    limiter = RateLimiter(rpm=BIG, burst=60)

    def semaphore() -> None:
        with sem:
            pass

    def resource_pool() -> None:
        with pool.acquire():
            pass

    def rate_limiter() -> None:
        with limiter.acquire():
            pass

    cases = {
        "threading.Semaphore": semaphore,
        "llmctx.ResourcePool": resource_pool,
        "llmctx.RateLimiter (rpm only)": rate_limiter,
    }
    results: dict[str, list[float]] = {label: [] for label in cases}
    chunk = max(1, ops // repeats)
    for _ in range(repeats):
        for label, step in cases.items():
            start = time.thread_time()
            for _ in range(chunk):
                step()
            results[label].append((time.thread_time() - start) / chunk * 1e6)
    print(f"\nUncontended acquire+release in a thread ({chunk} pairs x {repeats} chunks, median)")
    _median_ratio_table(results, "threading.Semaphore", "us")


# --------------------------------------------------------------------------- contended
async def _contended_once(make: Callable[[], Callable[[], Any]], tasks: int, rounds: int) -> float:
    """Slot acquisitions per CPU second with ``tasks`` tasks contending."""
    acquire = make()

    async def worker() -> None:
        for _ in range(rounds):
            async with acquire():
                await asyncio.sleep(0)

    start = time.thread_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return tasks * rounds / (time.thread_time() - start)


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


async def _contended(repeats: int) -> None:
    cases = _contended_cases()
    results: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(repeats):
        for label, make in cases.items():
            results[label].append(await _contended_once(make, 1000, 20))
    print(f"\nContended: 1,000 tasks on 10 slots, 20 acquisitions each ({repeats} runs, median)")
    _median_ratio_table(results, "asyncio.Semaphore(10)", "/s")


# --------------------------------------------------------------------------- accuracy
async def _accuracy(duration: float, store: Any = None, label: str = "in-process") -> None:
    """Saturate a 100/s limiter with a 1 s burst for ``duration`` seconds; report accuracy."""
    rate, burst = 100.0, 1.0
    limiter = RateLimiter(rpm=rate * 60, burst=burst, store=store)
    stamps: list[float] = []
    start = time.monotonic()
    end = start + duration

    async def worker() -> None:
        while True:
            async with limiter.acquire():
                now = time.monotonic()
                if now >= end:
                    return
                stamps.append(now - start)

    await asyncio.gather(*(worker() for _ in range(50)))
    total = len(stamps)
    burst_n = int(rate * burst)
    # GCRA from a full bucket: burst_n at once, then one every 1/rate s, in [0, duration).
    allowed_total = burst_n + math.ceil(duration * rate) - 1
    first_second = sum(1 for t in stamps if t < 1.0)
    steady = [t for t in stamps if t >= 1.0]
    steady_rate = len(steady) / (duration - 1.0)
    windows = [0] * int(duration)
    for t in stamps:
        if int(t) < len(windows):
            windows[int(t)] += 1
    # After the first second the bucket is empty under this load, so a 1 s window holds
    # rate + 1 at most (an admission on each edge). Stamps are taken when the task resumes,
    # a little after the admission, so this count also shows scheduling jitter.
    over_windows = sum(1 for n in windows[1:] if n > rate + 1)
    # The sound check: the k-th stamp proves k admissions by then, and GCRA allows at most
    # burst_n + 1 + rate * t of them by time t (since the limiter's first admission, which
    # is at or after `start`).
    over_bound = sum(
        1 for k, t in enumerate(sorted(stamps), start=1) if k > burst_n + 1 + rate * t + 1e-9
    )
    print(f"\nRate accuracy ({label}): 6,000 rpm (100/s), burst 1 s, 50 tasks, {duration:g} s")
    print(
        f"  first second                    {first_second:8d}   "
        f"(burst {burst_n} + {int(rate) - 1} refills = {burst_n + int(rate) - 1})"
    )
    print(
        f"  steady rate (after 1 s)         {steady_rate:8.2f}/s "
        f"(error {100 * (steady_rate - rate) / rate:+.2f} %)"
    )
    print(
        f"  total admitted                  {total:8d}   allowance {allowed_total} "
        f"(error {100 * (total - allowed_total) / allowed_total:+.2f} %)"
    )
    print(f"  admissions over the GCRA bound  {over_bound:8d}")
    print(f"  1 s windows above rate + 1      {over_windows:8d}   of {len(windows) - 1}")
    print(f"  busiest / quietest 1 s window   {max(windows[1:]):5d} / {min(windows[1:])}")


# --------------------------------------------------------------------------- Redis
def _redis(url: str, ops: int, repeats: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    store = RedisRateStore(client, name)
    limiter = RateLimiter(rpm=BIG, tpm=BIG, burst=60, store=store)
    lease_store = RedisLeaseStore(client, name)
    pool = ResourcePool([None], capacity=10, store=lease_store)
    noop_sha = client.script_load("return 0")
    noop_key = f"{{llmctx:rl:{name}}}:noop"

    calls = [0]
    execute = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return execute(*args, **kwargs)

    def raw() -> None:
        execute("EVALSHA", noop_sha, 1, noop_key)

    def acquire() -> None:
        limiter.acquire_nowait(tokens=100)

    def lease() -> None:
        pool.acquire_nowait().release()

    try:
        limiter.acquire_nowait(tokens=1)  # loads the script
        lease()
        client.execute_command = counting  # type: ignore[method-assign]
        limiter.acquire_nowait(tokens=1)
        per_acquire = calls[0]
        calls[0] = 0
        lease()
        per_lease = calls[0]
        client.execute_command = execute  # type: ignore[method-assign]

        cases = {"raw EVALSHA no-op": raw, "RedisRateStore acquire": acquire}
        cases["RedisLeaseStore lease+release"] = lease
        results: dict[str, list[float]] = {label: [] for label in cases}
        chunk = max(1, ops // repeats)
        for _ in range(repeats):
            for label, step in cases.items():
                start = time.perf_counter()
                for _ in range(chunk):
                    step()
                results[label].append(chunk / (time.perf_counter() - start))
        print(f"\nRedis, loopback ({chunk} calls x {repeats} chunks, wall clock, median)")
        _median_ratio_table(results, "raw EVALSHA no-op", "/s")
        print(f"  round trips: {per_acquire} per rate-limit acquire, {per_lease} per lease+release")
    finally:
        store.clear()
        lease_store.clear()
        lease_store.close()
        client.close()


async def _main(args: argparse.Namespace) -> None:
    await _uncontended(args.ops, args.repeats)
    await _components(args.ops, args.repeats)
    _uncontended_threads(args.ops, args.repeats)
    await _contended(max(3, args.repeats // 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000, help="pairs per uncontended case")
    parser.add_argument("--repeats", type=int, default=40, help="chunks per case (median)")
    parser.add_argument("--duration", type=float, default=30.0, help="rate-accuracy seconds")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--accuracy-redis", action="store_true", help="also run the accuracy test on Redis"
    )
    parser.add_argument("--redis-url", default=os.environ.get("LLMCTX_TEST_REDIS_URL"))
    args = parser.parse_args()
    asyncio.run(_main(args))
    if not args.skip_accuracy:
        asyncio.run(_accuracy(args.duration))
        if args.redis_url and args.accuracy_redis:
            import redis

            client = redis.Redis.from_url(args.redis_url)
            store = RedisRateStore(client, f"bench-acc-{uuid.uuid4().hex[:8]}")
            try:
                asyncio.run(_accuracy(args.duration, store, "Redis store"))
            finally:
                store.clear()
                client.close()
    if args.redis_url:
        _redis(args.redis_url, max(1000, args.ops // 20), max(5, args.repeats // 4))
    else:
        print("\nRedis: skipped (pass --redis-url or set LLMCTX_TEST_REDIS_URL)")


if __name__ == "__main__":
    main()
