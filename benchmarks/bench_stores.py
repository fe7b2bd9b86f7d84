"""save_call cost of each store, in microseconds per call (the write-through on every LLM call).

Each call is a realistic record (a chat request of ~40 words, a response, usage, a Decimal
cost) saved together with its session row, exactly as an instrumented client does it.

Then the async faces, side by side with the obvious alternative, ``anyio.to_thread.run_sync``
of the sync ``save_call``: one caller awaiting one save after another, and 300 callers at once
on one event loop (microseconds per call, wall time over the batch).

Usage::

    python benchmarks/bench_stores.py [--calls 5000] [--repeat 3] [--async-calls 1000]

PostgreSQL is measured when ``LLMCTX_TEST_POSTGRES_DSN`` is set (a throw-away schema is created
and dropped). The figure reported is the best of ``--repeat`` runs (least disturbed by other
load on the machine), with the median next to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from llmctx._usage import CallRecord, Usage
from llmctx.stores import MemoryStore, PostgresStore, SessionRecord, SQLiteStore, Store


def _records(n: int, session_id: str) -> list[tuple[CallRecord, SessionRecord]]:
    session = SessionRecord(id=session_id, name="bench", status="running")
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the following text. " * 8},
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
    out = []
    for i in range(n):
        usage = Usage(input_tokens=120, output_tokens=40, requests=1)
        call = CallRecord(
            session_id=session_id,
            provider="openai",
            model="gpt-4o-mini",
            request=request,
            response="A short summary of the text. " * 3,
            usage=usage,
            raw_usage={"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
            cost=Decimal("0.000042"),
            latency_s=0.41,
            ttfb_s=0.12,
        )
        session = session.replace(
            calls=i + 1, usage=session.usage + usage, cost=session.cost + Decimal("0.000042")
        )
        out.append((call, session))
    return out


def _measure(store: Store, n: int, repeat: int) -> tuple[float, float]:
    warm = _records(200, f"warm-{uuid.uuid4().hex}")
    for call, session in warm:
        store.save_call(call, session)
    runs = []
    for _ in range(repeat):
        batch = _records(n, uuid.uuid4().hex)
        start = time.perf_counter()
        for call, session in batch:
            store.save_call(call, session)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return min(runs), statistics.median(runs)


def _measure_async(store: Store, n: int, repeat: int) -> dict[str, float]:
    """Per-call wall time of the async face and of to_thread(save_call), one at a time and
    300 at once; best of ``repeat`` runs each, interleaved."""
    import asyncio

    import anyio.to_thread

    def face(call: CallRecord, session: SessionRecord) -> Any:
        return store.asave_call(call, session)  # type: ignore[attr-defined]

    def in_thread(call: CallRecord, session: SessionRecord) -> Any:
        return anyio.to_thread.run_sync(store.save_call, call, session)

    async def one_by_one(save: Callable[..., Any], batch: list[Any]) -> float:
        start = time.perf_counter()
        for call, session in batch:
            await save(call, session)
        return (time.perf_counter() - start) / len(batch) * 1e6

    async def at_once(save: Callable[..., Any], batch: list[Any]) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(save(call, session) for call, session in batch))
        return (time.perf_counter() - start) / len(batch) * 1e6

    async def run() -> dict[str, float]:
        best: dict[str, float] = {}
        for _ in range(repeat):
            for label, save, shape, size in (
                ("asave_call, one at a time", face, one_by_one, n),
                ("to_thread(save_call), one at a time", in_thread, one_by_one, n),
                ("asave_call, 300 at once", face, at_once, 300),
                ("to_thread(save_call), 300 at once", in_thread, at_once, 300),
            ):
                us = await shape(save, _records(size, uuid.uuid4().hex))
                best[label] = min(best.get(label, us), us)
        return best

    return asyncio.run(run())


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per store")
    parser.add_argument(
        "--async-calls", type=int, default=1000, help="calls per one-at-a-time async run"
    )
    args = parser.parse_args()

    results: list[tuple[str, int, float, float]] = []
    async_results: list[tuple[str, dict[str, float]]] = []

    def bench(label: str, make: Callable[[], Store], n: int, cleanup: Callable[[], None]) -> None:
        store = make()
        try:
            best, median = _measure(store, n, args.repeat)
            if not isinstance(store, MemoryStore):
                n_async = args.async_calls if isinstance(store, SQLiteStore) else n
                async_results.append((label, _measure_async(store, n_async, args.repeat)))
        finally:
            store.close()
            cleanup()
        results.append((label, n, best, median))

    bench("MemoryStore", MemoryStore, args.calls, lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        bench("SQLiteStore (temp file, WAL)", lambda: SQLiteStore(db), args.calls, lambda: None)
        full = Path(tmp) / "full.db"
        bench(
            "SQLiteStore synchronous=FULL",
            lambda: SQLiteStore(full, synchronous="FULL"),
            max(args.calls // 5, 200),
            lambda: None,
        )
    dsn = os.environ.get("LLMCTX_TEST_POSTGRES_DSN")
    if dsn:
        schema = f"bench_{uuid.uuid4().hex[:12]}"

        def drop() -> None:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        n_pg = max(args.calls // 5, 200)  # a network round trip each: fewer calls suffice
        bench("PostgresStore (loopback)", lambda: PostgresStore(dsn, schema=schema), n_pg, drop)
    else:
        print("(PostgreSQL skipped: set LLMCTX_TEST_POSTGRES_DSN to include it)")

    print(f"{'store':<30} {'calls':>7} {'best us/op':>11} {'median us/op':>13}")
    for label, n, best, median in results:
        print(f"{label:<30} {n:>7} {best:>11.1f} {median:>13.1f}")
    print()
    print(f"{'async faces (best us per call)':<38} {'':>0}")
    for label, rows in async_results:
        for case, us in rows.items():
            print(f"{label:<30} {case:<38} {us:>9.1f}")
    print(f"(load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
