"""03. Async manager: ``@asynccontextmanager``, a pool of model workers and a rate limit.

``async with`` is the same setup -> use -> cleanup as ``with``, except that setup and cleanup
may await, and that cleanup must also run when the task is *cancelled*. This module writes two
small async managers by hand (a timer, and a connection whose cleanup awaits a goodbye
message and still runs when the task is cancelled: asyncio delivers a cancellation once, so
the ``finally`` can await),
then coordinates concurrent asyncio tasks through llmctx's real parts: a
``llmctx.ResourcePool`` of local model workers (the "GPU pool": here two SmolLM2 instances on
the CPU, each serving one caller at a time), a ``llmctx.RateLimiter`` that paces requests
(reserve before the call, settle with the real tokens after), and an ``async with
llmctx.session`` that every call is charged to, even though the blocking llama.cpp calls run in
worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from rich import box
from rich.table import Table

import llmctx
from llmctx.workshop._common import (
    Checks,
    console,
    header,
    priced,
    reply_note,
    run,
    say,
    section,
    temp_store,
    usd,
)

_SLEEP = 0.05
QUESTIONS = (
    "Name a primary color.",
    "What is 2 + 2?",
    "Name a planet.",
    "What do bees make?",
)
SYSTEM = "Answer in a few words."
MAX_TOKENS = 8
WORKERS = 2
RPM = 120  # one request every 0.5 s ...
BURST = 1.0  # seconds of the rate: 1 s at 2 requests/s = 2 requests may go at once
TPM = 30_000  # generous: tokens are reserved and settled, but requests set the pace here


# ------------------------------------------------------------------ hand-written managers
class Stopwatch:
    """What :func:`async_timer` measured; ``seconds`` is set on exit."""

    def __init__(self) -> None:
        self.seconds = 0.0


@asynccontextmanager
async def async_timer(label: str) -> AsyncIterator[Stopwatch]:
    """Measure an async block's wall-clock time (awaits inside it included).

    Args:
        label: printed with the result.

    Yields:
        A :class:`Stopwatch` filled in on exit.

    On exit (normal, exception or cancellation) the time is recorded; the exception, if any,
    propagates.
    """
    watch = Stopwatch()
    start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - start
        console.print(f"  ⏱  {label}: {watch.seconds * 1000:.1f} ms")


@asynccontextmanager
async def connection(name: str, log: list[str]) -> AsyncIterator[str]:
    """Open a (pretend) connection with an awaited handshake; close it however the block ends.

    Args:
        name: the connection's label.
        log: receives ``"open"`` and ``"close"`` events.

    Yields:
        The connection (its name).

    On cancellation ``asyncio.CancelledError`` is thrown in at the ``yield``: the ``finally``
    awaits its goodbye (asyncio delivered the cancellation once, so this await is not
    interrupted unless the task is cancelled again), closes the connection, and the
    cancellation continues (never swallow it).
    """
    await asyncio.sleep(0)  # the handshake: setup may await
    log.append(f"open {name}")
    try:
        yield name
    finally:
        await asyncio.sleep(0)  # the goodbye message: cleanup awaits too
        log.append(f"goodbye sent to {name}")
        log.append(f"close {name}")


# ------------------------------------------------------------------ the worker pool demo
class Trace:
    """What happened to one question (times in seconds since the batch started)."""

    def __init__(self, question: str) -> None:
        self.question = question
        self.admitted = 0.0
        self.leased = 0.0
        self.done = 0.0
        self.worker = ""
        self.estimated_tokens = 0
        self.actual_tokens = 0
        self.reply = ""


class Concurrency:
    """Leases held at once, tracked by the tasks themselves."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.borrowed_seen: list[int] = []


def _messages(question: str) -> list[dict[str, str]]:
    # An explicit system prompt: without one SmolLM2's chat template inserts its own.
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _chat(worker: Any, question: str) -> dict[str, Any]:
    """One blocking llama.cpp chat call (runs in a thread)."""
    reply: dict[str, Any] = worker.create_chat_completion(
        messages=_messages(question), max_tokens=MAX_TOKENS, temperature=0
    )
    return reply


def _new_worker() -> Any:
    # One thread per worker: two workers then really run side by side on two cores.
    return llmctx.local_model(n_ctx=512, n_threads=1, n_threads_batch=1)


# ---------------------------------------------------------------------------- sections
async def async_managers(checks: Checks) -> None:
    """A hand-written async timer, and a connection whose cleanup awaits when cancelled."""
    section("1. @asynccontextmanager: setup and cleanup that await")
    async with async_timer(f"asyncio.sleep({_SLEEP})") as watch:
        await asyncio.sleep(_SLEEP)
    checks.check(
        watch.seconds >= _SLEEP,
        f"the async timer measured >= the {_SLEEP}s sleep",
        f"{watch.seconds:.4f}s",
    )
    log: list[str] = []
    inside = asyncio.Event()

    async def use_connection() -> None:
        async with connection("model-server", log):
            inside.set()
            await asyncio.sleep(3600)  # waits here until cancelled

    task = asyncio.create_task(use_connection())
    await inside.wait()
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    say(f"a task cancelled inside `async with connection(...)`: {' -> '.join(log)}")
    say(
        "asyncio delivers a cancellation once, so the cleanup's own await ran; an anyio "
        "cancel scope would interrupt it too unless shielded (module 07)."
    )
    checks.check(
        task.cancelled()
        and log == ["open model-server", "goodbye sent to model-server", "close model-server"],
        "cancelling the task ran the connection's cleanup, which awaited, and the task ended "
        "cancelled",
        " -> ".join(log),
    )


async def the_batch(
    pool: llmctx.ResourcePool[Any], limiter: llmctx.RateLimiter, traces: list[Trace]
) -> tuple[Concurrency, llmctx.Session, list[llmctx.CallRecord], Any]:
    """Four questions as asyncio tasks through the limiter, then the pool, in one session."""
    names = {id(w): f"worker-{i}" for i, w in enumerate(pool.resources)}
    concurrency = Concurrency()

    async def answer(trace: Trace, t0: float) -> None:
        async with limiter.acquire(tokens=trace.estimated_tokens) as reservation:
            trace.admitted = time.perf_counter() - t0
            async with pool.acquire() as lease:
                trace.leased = time.perf_counter() - t0
                trace.worker = names[id(lease.resource)]
                concurrency.active += 1
                concurrency.peak = max(concurrency.peak, concurrency.active)
                concurrency.borrowed_seen.append(pool.statistics().borrowed)
                try:
                    reply = await asyncio.to_thread(_chat, lease.resource, trace.question)
                finally:
                    concurrency.active -= 1
            trace.actual_tokens = int(reply["usage"]["total_tokens"])
            reservation.settle(trace.actual_tokens)
            trace.reply = str(reply["choices"][0]["message"]["content"] or "").strip()
            trace.done = time.perf_counter() - t0

    with priced(), temp_store() as store:
        async with llmctx.session("async-batch", store=store) as s:
            t0 = time.perf_counter()
            await asyncio.gather(*(answer(t, t0) for t in traces))
        return concurrency, s, store.list_calls([s.id]), store.get_session(s.id)


def _estimate(worker: Any, question: str) -> int:
    """What a task reserves: the prompt counted before the call, plus max_tokens."""
    counted = llmctx.count_tokens(
        _messages(question),
        tokenizer=lambda text: len(worker.tokenize(text.encode(), add_bos=False)),
    )
    return counted.tokens + MAX_TOKENS


async def pool_and_limiter(checks: Checks) -> None:
    """A ResourcePool of model workers and a RateLimiter coordinating four tasks."""
    section(f"2. A ResourcePool of {WORKERS} model workers + a RateLimiter")
    say(
        "Each worker: a SmolLM2 of capacity 1, leased in FIFO order (05 runs it as GPUs). "
        "Calls run in asyncio.to_thread, which copies the context: still charged to the "
        "session."
    )
    pool: llmctx.ResourcePool[Any] = llmctx.ResourcePool.from_factory(
        _new_worker, WORKERS, capacity=1, name="smollm2-workers"
    )
    limiter = llmctx.RateLimiter(rpm=RPM, tpm=TPM, burst=BURST)
    traces = [Trace(q) for q in QUESTIONS]
    # Estimated before the batch: tokenizing on a worker while another thread generates
    # with it is not something llama.cpp promises to support.
    for trace in traces:
        trace.estimated_tokens = _estimate(pool.resources[0], trace.question)
    try:
        concurrency, s, stored, row = await the_batch(pool, limiter, traces)
        stats = pool.statistics()
        limits = limiter.statistics()
    finally:
        pool.close()
        for worker in pool.resources:
            worker.close()
    burst_requests = RPM / 60 * BURST
    say(
        f"RateLimiter(rpm={RPM}, burst={BURST}): burst is in seconds of the rate, so "
        f"{BURST} s x {RPM / 60:.0f}/s = {burst_requests:.0f} requests go at once, then one "
        f"every {60 / RPM:.1f} s."
    )
    reply_note(MAX_TOKENS)
    table = Table(title="the batch, seconds since its start", box=box.SIMPLE_HEAD, show_edge=False)
    widths = {"question": 16, "admitted": 8, "leased": 6, "worker": 6, "done": 5, "tokens": 6}
    for col in ("question", "admitted", "leased", "worker", "done", "tokens", "reply"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", width=widths.get(col, 16))
    for t in traces:
        table.add_row(
            t.question,
            f"{t.admitted:.2f}",
            f"{t.leased:.2f}",
            t.worker.removeprefix("worker-"),
            f"{t.done:.2f}",
            f"{t.estimated_tokens}/{t.actual_tokens}",
            t.reply,
        )
    console.print(table)
    say(
        "tokens: reserved/real. A task reserves its counted prompt + max_tokens before the "
        "call; real is what llama.cpp reported: 1 above when the chat template adds a token "
        "the count's framing estimate lacks, below when the reply stops before max_tokens. "
        "settle() books the real figure."
    )
    say(
        f"pool: {stats.acquired} leases, {stats.borrowed} borrowed at the end, wait max "
        f"{stats.wait_max:.2f} s; limiter: {limits.admitted} admitted, {limits.in_flight} "
        f"in flight; session {s.status}: {s.usage.requests} calls, {s.usage.total_tokens} "
        f"tokens, {usd(s.cost)}"
    )
    admitted = sorted(t.admitted for t in traces)
    # GCRA admits the burst at once, then one request per interval: the last of the four
    # goes (4 - burst) intervals after the first. Only a lower bound is checked (a loaded
    # machine can only make it later); 20 ms covers the clock read after admission.
    expected_span = (len(traces) - int(burst_requests)) * (60 / RPM)
    checks.check(
        concurrency.peak == WORKERS and max(concurrency.borrowed_seen) <= stats.capacity,
        "never more leases than capacity at once, and both workers did run side by side",
        f"peak {concurrency.peak} concurrent, borrowed seen {concurrency.borrowed_seen}",
    )
    checks.check(
        stats.borrowed == 0
        and stats.available == stats.capacity == WORKERS
        and stats.waiting == 0
        and stats.acquired == len(traces),
        "the pool got all its capacity back, no one is waiting, and every task got a lease",
        f"available {stats.available}/{stats.capacity}, waiting {stats.waiting}, "
        f"acquired {stats.acquired}",
    )
    checks.check(
        limits.admitted == len(traces) and limits.in_flight == 0 and limits.waiting == 0,
        "the limiter admitted every request and every reservation was settled",
        f"admitted {limits.admitted}, in flight {limits.in_flight}",
    )
    checks.check(
        admitted[-1] - admitted[0] >= expected_span - 0.02,
        f"the limiter paced the batch: the last request went >= {expected_span:.1f} s "
        "after the first",
        "admitted at " + ", ".join(f"{a:.2f}" for a in admitted),
    )
    real_tokens = sum(t.actual_tokens for t in traces)
    checks.check(
        s.usage.requests == len(traces) == len(stored)
        and s.usage.total_tokens == real_tokens == sum(c.usage.total_tokens for c in stored)
        and row is not None
        and row.status == "completed",
        "all calls made in worker threads were charged to the session and stored",
        f"{len(stored)} calls, {s.usage.total_tokens} tokens, session {s.status}",
    )


async def main() -> None:
    """The module, section by section; then verify what each section claimed."""
    header(3, "Async manager", "@asynccontextmanager, a pool of model workers, a rate limiter")
    checks = Checks()
    await async_managers(checks)
    await pool_and_limiter(checks)
    checks.verify()


if __name__ == "__main__":
    run(main)
