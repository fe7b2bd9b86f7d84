"""Keyed budgets under many processes: reserve+settle throughput on one Redis, side by side
with raw EVALSHA round trips at the same concurrency (issue 15).

Run::

    python benchmarks/bench_budget_throughput.py [REDIS_URL] [--processes 16] [--pairs 1000]
    python benchmarks/bench_budget_throughput.py --cluster redis+cluster://HOST:PORT

Each of ``--processes`` OS processes makes ``--pairs`` reserve+settle pairs on a
``RedisLedger`` budget with ``window="1d"``:

* **hot key**: every process on ``key="user:hot"`` (one account, the worst case for a shared
  budget: every script touches the same keys);
* **1,000 keys**: each pair on one of 1,000 keys (``user:0`` .. ``user:999``), as a service
  with many users;
* **raw**: two ``EVALSHA`` of ``return 1`` per pair, the floor of two round trips on the same
  client and server.

All processes start together (a barrier) and the figure is pairs per second from the start to
the last process's end; the three cases alternate for ``--rounds`` rounds and the median is
printed, with the ratio of each keyed case to raw (issue 15's target: >= 0.7). The Redis URL
defaults to ``$LLMCTX_TEST_REDIS_URL``. The benchmark uses its own key prefix and deletes its
keys afterwards.

``--cluster URL`` runs the same cases on a Redis Cluster (a ``redis+cluster://`` URL, e.g.
``$LLMCTX_TEST_REDIS_CLUSTER_URL``): the ledger on that URL, and raw as two ``EVALSHA`` of
``return 1`` on a ``redis.cluster.RedisCluster``, each with one key of 1,000 (so raw, like the
1,000 keys case, spreads over every master; the hot key lives on one).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from typing import Any

PRICE = Decimal("0.0000025")


def _worker(
    url: str, case: str, prefix: str, name: str, pairs: int, seed: int, ready: Any, go: Any
) -> None:
    import random

    import redis

    from llmctx import RedisLedger
    from llmctx._budget import Amount, Budget

    want, actual = Amount(PRICE * 1_000, 1_000, 1), Amount(PRICE * 640, 640, 1)
    rng = random.Random(seed)
    if case == "raw" and url.startswith(("redis+cluster://", "rediss+cluster://")):
        from redis.cluster import RedisCluster

        cluster = RedisCluster.from_url(url.replace("+cluster://", "://", 1))
        sha = cluster.script_load("return 1")
        keys = [f"{{{prefix}:raw:{i}}}" for i in range(1_000)]
        ready.wait()
        go.wait()
        for _ in range(pairs):
            key = keys[rng.randrange(len(keys))]
            cluster.execute_command("EVALSHA", sha, 1, key)
            cluster.execute_command("EVALSHA", sha, 1, key)
        cluster.close()
        return
    if case == "raw":
        client = redis.Redis.from_url(url)
        sha = client.script_load("return 1")
        ready.wait()
        go.wait()
        for _ in range(pairs):
            client.evalsha(sha, 0)
            client.evalsha(sha, 0)
        client.close()
        return
    ledger = RedisLedger(url, name, prefix=prefix)
    budgets = (
        [Budget(usd="1e9", tokens=10**15, key="user:hot", window="1d", ledger=ledger)]
        if case == "hot key"
        else [
            Budget(usd="1e9", tokens=10**15, key=f"user:{i}", window="1d", ledger=ledger)
            for i in range(1_000)
        ]
    )
    # One warm pair per budget shape outside the timing (script load, first window).
    ledger.settle(ledger.reserve(want, budgets[0]), actual)
    ready.wait()
    go.wait()
    for _ in range(pairs):
        budget = budgets[rng.randrange(len(budgets))]
        ledger.settle(ledger.reserve(want, budget), actual)
    ledger.close()


def _round(url: str, case: str, prefix: str, name: str, processes: int, pairs: int) -> float:
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(processes + 1)
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(url, case, prefix, name, pairs, i, ready, go))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    ready.wait()  # every worker is connected and warm
    start = time.perf_counter()
    go.set()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            sys.exit(f"a {case} worker failed (exit code {w.exitcode})")
    return processes * pairs / (time.perf_counter() - start)


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "url",
        nargs="?",
        default=os.environ.get("LLMCTX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=1_000, help="pairs per process per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cluster",
        metavar="URL",
        help="run on this Redis Cluster (redis+cluster://host:port) instead of REDIS_URL",
    )
    args = parser.parse_args()
    if args.cluster:
        if not args.cluster.startswith(("redis+cluster://", "rediss+cluster://")):
            sys.exit(f"--cluster takes a redis+cluster://host:port URL, not {args.cluster!r}")
        args.url = args.cluster
    prefix = f"bench-tp-{uuid.uuid4().hex[:8]}"
    name = "throughput"
    rates: dict[str, list[float]] = {"hot key": [], "1,000 keys": [], "raw": []}
    try:
        for _ in range(args.rounds):
            for case in rates:
                rates[case].append(_round(args.url, case, prefix, name, args.processes, args.pairs))
    finally:
        import redis
        from redis.cluster import RedisCluster

        client: Any = (
            RedisCluster.from_url(args.url.replace("+cluster://", "://", 1))
            if args.cluster
            else redis.Redis.from_url(args.url)
        )
        for pattern in (f"{prefix}*", f"{{{prefix}:*"):  # on a cluster: every primary
            for key in list(client.scan_iter(pattern)):
                client.delete(key)
        client.close()
    med = {case: statistics.median(v) for case, v in rates.items()}
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    where = f"Redis Cluster {args.cluster}" if args.cluster else "one Redis"
    print(
        f"{where}: {args.processes} processes x {args.pairs} reserve+settle pairs, median of "
        f"{args.rounds} rounds; load average {' '.join(f'{x:.2f}' for x in load)}"
    )
    print(f"{'case':<12} {'pairs/s':>10} {'vs raw':>8}")
    for case, rate in med.items():
        print(f"{case:<12} {rate:>10,.0f} {rate / med['raw']:>7.2f}x")


if __name__ == "__main__":
    main()
