"""Cost of charging one call into a session, side by side in one run.

Rows (all wrap the same fake call, a function that returns a canned reply):

* bare call                       - the fake call alone
* llmctx, no session              - track_call with nothing active (the near no-op path)
* charge step only                - Session.on_call_end of an already-built CallRecord: the
                                    roll-up into the session tree plus the memory store write
* llmctx, memory store            - session + charge + MemoryStore write-through
* llmctx, memory store + budget   - the same with a token and money budget (reserve + settle)
* llmctx, SQLite write-through    - session + charge + SQLiteStore commit per call (WAL)
* LangChain usage callback        - langchain-core's UsageMetadataCallbackHandler driven through
                                    its CallbackManager for the same call (start + end events)

Run:  python benchmarks/bench_charge.py [--calls 20000] [--repeats 5]
Prints microseconds per call (median of the repeats) minus the bare call, and ratios, twice:
by the wall clock (``time.perf_counter``) and by this thread's CPU time (``time.thread_time``).
On a machine shared with other work (a virtual machine's neighbours, a CI run) the wall clock
also counts the time the thread waited for a core; the CPU time is what the call itself costs,
and is what the targets are read on (as ``bench_limits.py`` does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import llmctx
from llmctx.stores import MemoryStore, SQLiteStore

MODEL = "gpt-4o-mini"
REQUEST = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "max_tokens": 16,
}
USAGE = llmctx.Usage(input_tokens=14, output_tokens=3, requests=1)


def fake_call() -> str:
    return "4"


def llmctx_call() -> None:
    with llmctx.track_call(
        provider="openai", model=MODEL, request=REQUEST, input_tokens=14, max_output_tokens=16
    ) as call:
        reply = fake_call()
        call.finish(usage=USAGE, response=reply)


Timing = tuple[float, float]  # (wall, CPU) microseconds per call


def time_loop(fn: Callable[[], object], n: int) -> Timing:
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6, (time.thread_time() - cpu) / n * 1e6


def bench_in_session(n: int, **session_kwargs: object) -> Timing:
    with llmctx.session("bench", **session_kwargs):  # type: ignore[arg-type]
        return time_loop(llmctx_call, n)


def bench_charge_step(n: int) -> Timing:
    record = llmctx.CallRecord(session_id=None, provider="openai", model=MODEL, usage=USAGE)
    with llmctx.session("bench", store=MemoryStore()) as s:
        return time_loop(lambda: s.on_call_end(record), n)


def bench_langchain(n: int) -> Timing | None:
    try:
        from langchain_core.callbacks import CallbackManager, UsageMetadataCallbackHandler
        from langchain_core.messages import AIMessage, HumanMessage
        from langchain_core.outputs import ChatGeneration, LLMResult
    except ImportError:
        return None
    handler = UsageMetadataCallbackHandler()
    serialized = {"name": "FakeChat", "id": ["bench", "FakeChat"]}
    messages = [[HumanMessage(content="What is 2+2?")]]

    def lc_call() -> None:
        manager = CallbackManager(handlers=[handler])
        (run,) = manager.on_chat_model_start(serialized, messages, run_id=uuid.uuid4())
        reply = fake_call()
        message = AIMessage(
            content=reply,
            usage_metadata={"input_tokens": 14, "output_tokens": 3, "total_tokens": 17},
            response_metadata={"model_name": MODEL},
        )
        run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]))

    us = time_loop(lc_call, n)
    assert handler.usage_metadata[MODEL]["input_tokens"] == 14 * n
    return us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.calls
    llmctx.price_usage(MODEL, USAGE)  # warm the price cache outside the timings

    tmp = Path(tempfile.mkdtemp(prefix="llmctx-bench-"))
    sqlite = SQLiteStore(tmp / "bench.db")
    rows: dict[str, list[Timing]] = {}
    cases: dict[str, Callable[[], Timing | None]] = {
        "bare call": lambda: time_loop(fake_call, n),
        "llmctx, no session": lambda: time_loop(llmctx_call, n),
        "charge step only": lambda: bench_charge_step(n),
        "llmctx, memory store": lambda: bench_in_session(n, store=MemoryStore()),
        "llmctx, memory store + budget": lambda: bench_in_session(
            n, store=MemoryStore(), budget=llmctx.Budget(usd="1000000", tokens=10**12)
        ),
        "llmctx, SQLite write-through": lambda: bench_in_session(max(n // 10, 500), store=sqlite),
        "LangChain usage callback": lambda: bench_langchain(n),
    }
    for _ in range(args.repeats):
        for name, case in cases.items():  # interleaved, so load drift hits every row alike
            value = case()
            if value is not None:
                rows.setdefault(name, []).append(value)
    sqlite.close()

    for clock, which in (("wall clock", 0), ("CPU time of this thread", 1)):
        med = {name: statistics.median(t[which] for t in v) for name, v in rows.items()}
        bare = med["bare call"]
        print(f"\n{clock}:\n{'case':34} {'us/call':>9} {'overhead us':>12}")
        for name, value in med.items():
            print(f"{name:34} {value:9.2f} {value - bare:12.2f}")
        if "LangChain usage callback" in med:
            lc = med["LangChain usage callback"] - bare
            ratio = lc / (med["llmctx, memory store"] - bare)
            print(f"LangChain callback overhead / llmctx memory-store overhead: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
