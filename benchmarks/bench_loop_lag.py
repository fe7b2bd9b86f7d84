"""Event-loop lag while 300 concurrent async calls are charged into PostgreSQL and Redis.

Each "call" is an async ``track_call`` around a short await (the request, ``--request-ms``),
charged into one session on a ``PostgresStore`` with a token + money budget kept in a
``RedisLedger``: a reserve before the request, a settle and a write-through after it. While
the calls run, a ticker task sleeps 1 ms at a time and records how late each tick wakes up:
that lateness is the loop lag, the time the loop was busy with something else (bookkeeping
done on the loop thread shows up here). The same calls without llmctx (the await alone) run
side by side in the same process, interleaved, as the baseline; a third case runs the
request's await then the store's ``asave_call`` alone (the store's share of the lag).

Usage::

    python benchmarks/bench_loop_lag.py [--calls 300] [--repeat 5] [--request-ms 2]
        [--store postgres|sqlite]

Needs ``LLMCTX_TEST_POSTGRES_DSN`` (a throw-away schema is created and dropped) and
``LLMCTX_TEST_REDIS_URL`` (a budget of a fresh name). The figures are the median over
``--repeat`` runs of each run's p50 / p99 / max lag and total time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import llmctx
from llmctx import Usage, track_call
from llmctx._usage import CallRecord
from llmctx.stores import PostgresStore, SessionRecord, SQLiteStore, Store
from llmctx.stores._base import asave_call

TICK = 0.001
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi. " * 20}]}


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    """Sleep 1 ms at a time; record how late each wake-up is (the loop lag)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(TICK)
        lags.append(max(0.0, loop.time() - start - TICK))


async def _plain_call(request_s: float) -> None:
    await asyncio.sleep(request_s)


async def _charged_call(request_s: float) -> None:
    async with track_call(
        provider="openai",
        model="gpt-4o-mini",
        request=REQUEST,
        input_tokens=40,
        max_output_tokens=16,
    ) as call:
        await asyncio.sleep(request_s)
        usage = Usage(input_tokens=40, output_tokens=8, requests=1)
        afinish = getattr(call, "afinish", None)
        if afinish is not None:  # the async charge path, where it exists
            await afinish(usage=usage, response="hi there")
        else:
            call.finish(usage=usage, response="hi there")


def _store_only(store: Store) -> Callable[[float], Awaitable[None]]:
    """The store's part alone: the request's await, then ``asave_call`` of a built record."""
    session = SessionRecord(id=f"lag-store-{uuid.uuid4().hex[:8]}", status="running")
    store.save_session(session)

    async def one(request_s: float) -> None:
        await asyncio.sleep(request_s)
        call = CallRecord(
            session_id=session.id,
            provider="openai",
            model="gpt-4o-mini",
            request=REQUEST,
            response="hi there",
            usage=Usage(input_tokens=40, output_tokens=8, requests=1),
            cost=Decimal("0.000011"),
        )
        await asave_call(store, call, session)

    return one


async def _run(
    n: int, request_s: float, one: Callable[[float], Awaitable[None]], enter: Any
) -> tuple[list[float], float, int]:
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(lags, stop))
    await asyncio.sleep(0.01)  # the ticker's first ticks: an idle loop's own lag
    lags.clear()
    start = time.perf_counter()
    async with enter():
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one(request_s) for _ in range(n)), return_exceptions=True), 300
        )
    total = time.perf_counter() - start
    stop.set()
    await ticker
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        print(f"  {len(failed)} of {n} calls failed, e.g. {failed[0]!r}"[:300], file=sys.stderr)
    return lags, total, len(failed)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _open_store(kind: str, tmp: Path) -> tuple[Store, Callable[[], None]]:
    if kind == "sqlite":
        store = SQLiteStore(tmp / "lag.db")
        return store, store.close
    dsn = os.environ.get("LLMCTX_TEST_POSTGRES_DSN")
    if not dsn:
        sys.exit("set LLMCTX_TEST_POSTGRES_DSN (or use --store sqlite)")
    pg = PostgresStore(dsn, schema=f"bench_lag_{uuid.uuid4().hex[:10]}")

    def done() -> None:
        pg.drop_schema()
        pg.close()

    return pg, done


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="concurrent calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case")
    parser.add_argument("--request-ms", type=float, default=2.0, help="the request's await")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    redis_url = os.environ.get("LLMCTX_TEST_REDIS_URL")
    if not redis_url:
        sys.exit("set LLMCTX_TEST_REDIS_URL")
    request_s = args.request_ms / 1000

    with tempfile.TemporaryDirectory() as tmp:
        store, done = _open_store(args.store, Path(tmp))
        ledger = llmctx.RedisLedger(redis_url, name=f"bench-lag-{uuid.uuid4().hex[:10]}")
        try:
            results: dict[str, list[tuple[float, float, float, float, int]]] = {
                "plain": [],
                "llmctx": [],
                "store": [],
            }

            def charged_scope() -> Any:
                budget = llmctx.Budget(usd="1000", tokens=10**9, ledger=ledger)
                return llmctx.session("bench-lag", store=store, budget=budget)

            def plain_scope() -> Any:
                return contextlib.AsyncExitStack()

            async def everything() -> None:
                # Warm up: connections, scripts, statement preparation.
                await _run(20, request_s, _charged_call, charged_scope)
                await _run(20, request_s, _store_only(store), plain_scope)
                for _ in range(args.repeat):
                    for label, one, scope in (
                        ("plain", _plain_call, plain_scope),
                        ("llmctx", _charged_call, charged_scope),
                        ("store", _store_only(store), plain_scope),
                    ):
                        lags, total, failed = await _run(args.calls, request_s, one, scope)
                        results[label].append(
                            (
                                _quantile(lags, 0.5),
                                _quantile(lags, 0.99),
                                max(lags, default=0.0),
                                total,
                                failed,
                            )
                        )

            asyncio.run(everything())
        finally:
            ledger.close()
            done()

    print(
        f"{args.calls} concurrent calls, request {args.request_ms:g} ms, store {args.store}, "
        f"Redis budget; median of {args.repeat} runs; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'case':<8} {'p50 lag ms':>11} {'p99 lag ms':>11} {'max lag ms':>11} "
        f"{'total ms':>9} {'failed':>7}"
    )
    for label, runs in results.items():
        p50, p99, mx, total = (statistics.median(r[i] for r in runs) for i in range(4))
        failed = sum(r[4] for r in runs)
        print(
            f"{label:<8} {p50 * 1e3:>11.2f} {p99 * 1e3:>11.2f} {mx * 1e3:>11.2f} "
            f"{total * 1e3:>9.1f} {failed:>7}"
        )
    print(
        "plain: the request's await alone; llmctx: the same charged (reserve, settle, write "
        "through); store: the await then the store's asave_call alone"
    )


if __name__ == "__main__":
    main()
