"""Budget ledgers side by side: in-memory, Redis (one Lua script per step), and a raw EVALSHA.

Run::

    python benchmarks/bench_budget.py [REDIS_URL] [--ops N]

The Redis URL defaults to ``$LLMCTX_TEST_REDIS_URL`` or ``redis://127.0.0.1:6379/0``. The
benchmark uses its own key prefix and deletes its keys afterwards.

What it prints:

* MemoryLedger reserve+settle, microseconds per pair;
* RedisLedger reserve+settle, pairs per second and network round trips per pair (counted on
  the connection, so a hidden retry or extra command would show);
* RedisLedger reserve alone, and ``EVALSHA`` of a no-op script: the floor any one-round-trip
  operation can reach on this client and server. Their ratio shows what the ledger's script
  costs on top of the round trip (target: >= 0.7, issue 17);
* a keyed, windowed budget (``key="user:42", window="1d"``, the budget a multi-user service
  runs on): MemoryLedger reserve+settle (target: <= 10 us), and RedisLedger reserve+settle
  against two raw ``EVALSHA`` round trips, since a pair is two round trips (target: >= 0.7,
  issue 15).

Every Redis ratio is the median of 20 rounds that alternate the two sides in short runs, so
load from other processes on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import redis

from llmctx import RedisLedger
from llmctx._budget import Amount, Budget, MemoryLedger

PRICE = Decimal("0.0000025")
WANT = Amount(PRICE * 1_000, 1_000, 1)
ACTUAL = Amount(PRICE * 640, 640, 1)


class CountingConnection(redis.Connection):
    """A redis-py connection that counts replies read: one per round trip."""

    replies = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.replies += 1
        return super().read_response(*args, **kwargs)


def best_rate(run: Callable[[int], None], ops: int, repeats: int = 5) -> float:
    """Operations per second: the median of ``repeats`` timed runs of ``ops`` operations."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(ops)
        rates.append(ops / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "url",
        nargs="?",
        default=os.environ.get("LLMCTX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--ops", type=int, default=3_000, help="operations per timed run")
    args = parser.parse_args()
    ops: int = args.ops

    # In-memory ledger.
    memory_budget = Budget(usd="1000000", tokens=10**15, requests=10**12)
    memory = memory_budget.ledger
    assert isinstance(memory, MemoryLedger)

    def memory_pairs(n: int) -> None:
        for _ in range(n):
            memory.settle(memory.reserve(WANT, memory_budget), ACTUAL)

    memory_rate = best_rate(memory_pairs, ops * 10)

    keyed_memory_budget = Budget(
        usd="1000000", tokens=10**15, requests=10**12, key="user:42", window="1d"
    )
    keyed_memory = keyed_memory_budget.ledger

    def keyed_memory_pairs(n: int) -> None:
        for _ in range(n):
            keyed_memory.settle(keyed_memory.reserve(WANT, keyed_memory_budget), ACTUAL)

    keyed_memory_rate = best_rate(keyed_memory_pairs, ops * 10)

    # Redis: one client, one connection (a single-threaded caller), counted round trips.
    pool = redis.ConnectionPool.from_url(args.url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    ledger = RedisLedger(client, f"bench-{uuid.uuid4().hex}", prefix="llmctx-bench")
    budget = Budget(usd="1000000", tokens=10**15, requests=10**12, ledger=ledger)
    keyed = Budget(
        usd="1000000", tokens=10**15, requests=10**12, key="user:42", window="1d", ledger=ledger
    )
    noop = client.register_script("return 1")
    try:
        ledger.settle(ledger.reserve(WANT, budget), ACTUAL)  # load scripts, open the connection
        ledger.settle(ledger.reserve(WANT, keyed), ACTUAL)  # the keyed account's window exists
        noop()

        def redis_pairs(n: int) -> None:
            for _ in range(n):
                ledger.settle(ledger.reserve(WANT, budget), ACTUAL)

        before = CountingConnection.replies
        redis_pairs(ops)
        trips_per_pair = (CountingConnection.replies - before) / ops
        pair_rate = best_rate(redis_pairs, ops)

        # Reserve alone against the no-op script, in alternating short rounds so that load
        # from other processes on the machine hits both sides of the ratio alike.
        held: list[str] = []

        def reserves(n: int) -> None:
            for _ in range(n):
                held.append(ledger.reserve(WANT, budget))

        def raw(n: int) -> None:
            for _ in range(n):
                noop()

        def server_usec() -> tuple[int, int]:
            stats = client.info("commandstats").get("cmdstat_evalsha", {})
            return int(stats.get("calls", 0)), int(stats.get("usec", 0))

        chunk = max(50, ops // 10)
        reserve_rates, raw_rates, ratios = [], [], []
        server = {"reserve": [0, 0], "raw": [0, 0]}
        for _ in range(20):
            calls0, usec0 = server_usec()
            reserve_rate_i = best_rate(reserves, chunk, repeats=1)
            calls1, usec1 = server_usec()
            raw_rate_i = best_rate(raw, chunk, repeats=1)
            calls2, usec2 = server_usec()
            server["reserve"][0] += calls1 - calls0
            server["reserve"][1] += usec1 - usec0
            server["raw"][0] += calls2 - calls1
            server["raw"][1] += usec2 - usec1
            reserve_rates.append(reserve_rate_i)
            raw_rates.append(raw_rate_i)
            ratios.append(reserve_rate_i / raw_rate_i)
            while held:
                ledger.release(held.pop())
        reserve_rate = statistics.median(reserve_rates)
        raw_rate = statistics.median(raw_rates)
        ratio = statistics.median(ratios)

        # Keyed, windowed reserve+settle against two raw round trips, alternating likewise.
        def keyed_pairs(n: int) -> None:
            for _ in range(n):
                ledger.settle(ledger.reserve(WANT, keyed), ACTUAL)

        def raw_pairs(n: int) -> None:
            for _ in range(n):
                noop()
                noop()

        keyed_rates, raw_pair_rates, keyed_ratios = [], [], []
        for _ in range(20):
            keyed_i = best_rate(keyed_pairs, chunk // 2, repeats=1)
            raw_i = best_rate(raw_pairs, chunk // 2, repeats=1)
            keyed_rates.append(keyed_i)
            raw_pair_rates.append(raw_i)
            keyed_ratios.append(keyed_i / raw_i)
        keyed_rate = statistics.median(keyed_rates)
        raw_pair_rate = statistics.median(raw_pair_rates)
        keyed_ratio = statistics.median(keyed_ratios)
    finally:
        ledger.reset()
        client.close()

    rows = [
        (
            "MemoryLedger reserve+settle",
            f"{1e6 / memory_rate:8.2f} us/pair",
            f"{memory_rate:>9,.0f}/s",
        ),
        ("RedisLedger reserve+settle", f"{1e6 / pair_rate:8.2f} us/pair", f"{pair_rate:>9,.0f}/s"),
        ("RedisLedger reserve", f"{1e6 / reserve_rate:8.2f} us/op", f"{reserve_rate:>9,.0f}/s"),
        ("raw EVALSHA 'return 1'", f"{1e6 / raw_rate:8.2f} us/op", f"{raw_rate:>9,.0f}/s"),
        (
            "MemoryLedger keyed 1d pair",
            f"{1e6 / keyed_memory_rate:8.2f} us/pair",
            f"{keyed_memory_rate:>9,.0f}/s",
        ),
        (
            "RedisLedger keyed 1d pair",
            f"{1e6 / keyed_rate:8.2f} us/pair",
            f"{keyed_rate:>9,.0f}/s",
        ),
        (
            "raw EVALSHA x2",
            f"{1e6 / raw_pair_rate:8.2f} us/pair",
            f"{raw_pair_rate:>9,.0f}/s",
        ),
    ]
    print(f"budget ledgers, {ops:,} ops per run, medians, redis-py {redis.__version__}")
    for name, latency, rate in rows:
        print(f"  {name:<30} {latency:>18} {rate:>13}")
    print(f"  Redis round trips per reserve+settle: {trips_per_pair:.2f}")
    for what, (calls, usec) in server.items():
        foreign = calls - 20 * chunk
        note = f" ({foreign} EVALSHA calls from other clients mixed in)" if foreign else ""
        print(f"  server time per EVALSHA, {what:<8} {usec / max(calls, 1):6.1f} us{note}")
    print(
        f"  RedisLedger reserve / raw EVALSHA:    {ratio:.2f} (target >= 0.70; median of 20 rounds)"
    )
    print(
        f"  keyed 1d reserve+settle / 2x raw:     {keyed_ratio:.2f} "
        "(target >= 0.70; median of 20 rounds)"
    )
    print(f"  load average (1 min): {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
