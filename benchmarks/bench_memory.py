"""Memory of a long-lived session: RSS growth over N charged calls, nested, on SQLite.

Each call is a ``track_call`` of a chat request whose prompt is 500 characters, with a
20-character reply, charged into a child session under a root session (both on one
``SQLiteStore`` in a temporary directory), committed per call as usual. The process's RSS
is read after a warm-up (the first 2,000 calls: caches, the SQLite page cache, the
sessions' windows filling up to ``keep_calls``) and again after N calls; the growth between
the two is what a service with one long-lived root session pays per call. Python's own
heap (tracemalloc is not used: it would slow every allocation) is shown as the number of
live objects before and after, and the sessions' windows as their lengths.

Run:  python benchmarks/bench_memory.py [--calls 1000000] [--keep-calls 1000]
Prints RSS before and after, the growth in MB and bytes per call, and whether the 20 MB
target is met.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import psutil

import llmctx
from llmctx.stores import SQLiteStore

MODEL = "gpt-4o-mini"
WARMUP = 2_000
TARGET_MB = 20.0


def _prompt(i: int) -> str:
    # 500 characters, a different prompt every call (as a service's would be).
    head = f"Question {i}: "
    return (
        head + ("summarise the quarterly report in three lines, please. " * 10)[: 500 - len(head)]
    )


def charge(i: int) -> None:
    request = {"model": MODEL, "messages": [{"role": "user", "content": _prompt(i)}]}
    with llmctx.track_call(
        provider="openai", model=MODEL, request=request, input_tokens=120, max_output_tokens=16
    ) as call:
        call.finish(
            usage=llmctx.Usage(input_tokens=120, output_tokens=6, requests=1),
            response="Revenue rose; costs.",
        )


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--keep-calls", type=int, default=llmctx._session.DEFAULT_KEEP_CALLS)
    args = parser.parse_args()
    n = max(args.calls, WARMUP + 1)
    assert len(_prompt(0)) == 500

    tmp = Path(tempfile.mkdtemp(prefix="llmctx-bench-memory-"))
    store = SQLiteStore(tmp / "memory.db")
    start = time.perf_counter()
    with llmctx.session("root", store=store, keep_calls=args.keep_calls) as root:
        with llmctx.session("child", keep_calls=args.keep_calls) as child:
            for i in range(WARMUP):
                charge(i)
            before = rss_mb()
            objects_before = len(gc.get_objects())
            for i in range(WARMUP, n):
                charge(i)
                if i % 100_000 == 0:
                    print(f"  {i:>9,} calls  RSS {rss_mb():8.1f} MB", file=sys.stderr)
            after = rss_mb()
            objects_after = len(gc.get_objects())
            windows = (len(root.calls), len(child.calls))
            counts = (root.call_count, child.call_count)
    elapsed = time.perf_counter() - start
    store.close()

    growth = after - before
    per_call = growth * 2**20 / (n - WARMUP)
    print(f"calls charged             {n:,} (nested session on SQLite, 500-char prompt)")
    print(f"RSS after {WARMUP:,} warm-up    {before:8.1f} MB")
    print(f"RSS after {n:,} calls  {after:8.1f} MB")
    print(f"growth                    {growth:8.1f} MB ({per_call:.1f} bytes per call)")
    print(f"live Python objects       {objects_before:,} -> {objects_after:,}")
    print(f"windows (root, child)     {windows} of keep_calls={args.keep_calls}")
    print(f"call counts (root, child) {counts}")
    print(f"time                      {elapsed:.1f} s ({elapsed / n * 1e6:.0f} us per call)")
    met = "met" if growth < TARGET_MB else "MISSED"
    print(f"target < {TARGET_MB:.0f} MB growth: {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
