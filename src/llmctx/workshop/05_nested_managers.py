"""05. Nested managers: a budget, a monitor and a session stacked around real model calls.

Real programs nest several context managers: a store, prices, a session with a budget, a
recorder, a performance monitor. This module builds that nest with ``contextlib.ExitStack``
(its shape decided at run time), runs a batch of questions through the bundled local model
with a made-up price (``priced()``), and lets the session's ``llmctx.Budget`` stop the batch:
the call that would overspend is refused *before it is sent*, which the module proves by
counting the runs of llama.cpp's generation loop. The ``BudgetExceeded`` then travels out
through every layer, and each one cleans up in reverse order: the monitor's measurement is
attached to the session (``s.events``), the session is stored as failed with its reason, the
price is restored and the store closed. Last, the outline's GPU scenario run for real: an
``llmctx.ResourcePool(['cuda:0', 'cuda:1'], capacity=24)`` leasing 8 and 16 GB to asyncio
tasks, strictly first come first served, with ``statistics()`` at each step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from rich.markup import escape

import llmctx
from llmctx.stores import SessionRecord, Store
from llmctx.workshop._common import (
    MODEL_NAME,
    WORKSHOP_PRICE,
    Checks,
    ask,
    console,
    header,
    model,
    priced,
    reply_note,
    run,
    section,
    temp_store,
    usd,
)

T = TypeVar("T")

QUESTIONS = (
    "Name a primary colour.",
    "Name a planet.",
    "Say hello in French.",
    "Name a fruit.",
    "What is 2 + 2?",
)
MAX_TOKENS = 16
# Each question is ~35 prompt tokens, so a call reserves ~51 (prompt + MAX_TOKENS) and uses
# at least ~36: two calls always fit in 140 tokens, a fourth never does.
TOKEN_LIMIT = 140
USD_LIMIT = "0.001"
WARN_AFTER = 0.25  # seconds; a batch of real calls on two cores takes longer

# The layers of the nest, decided at run time (a config file or CLI flags in a real program).
FEATURES = {"record": True, "monitor": True}


class RunCounter:
    """How many times llama.cpp's generation loop ran (i.e. the model really computed)."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def counting_model_runs(llama: Any) -> Iterator[RunCounter]:
    """Count calls of ``llama.generate`` inside the block, then put the original back.

    ``generate`` is the loop every completion goes through, so a refused call that never
    reached the model leaves the count unchanged.
    """
    counter = RunCounter()
    had_own = "generate" in vars(llama)
    previous = vars(llama).get("generate")
    inner = llama.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        counter.count += 1
        return inner(*args, **kwargs)

    llama.generate = generate
    try:
        yield counter
    finally:
        if had_own:
            llama.generate = previous
        else:
            del llama.generate


@contextmanager
def traced(name: str, cm: AbstractContextManager[T], log: list[str]) -> Iterator[T]:
    """Enter ``cm`` and note in ``log`` when it was entered and when it had fully exited."""
    try:
        with cm as value:
            log.append(f"enter {name}")
            yield value
    except Exception as exc:
        log.append(f"exit  {name}  (the {type(exc).__name__} passed through it)")
        raise
    log.append(f"exit  {name}")


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_warnings(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the warnings a logger emits inside the block."""
    records: list[logging.LogRecord] = []
    handler = _ListHandler(records)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


class Refusal(NamedTuple):
    """The state just before and just after the refused call."""

    error: llmctx.BudgetExceeded
    question: str
    runs: tuple[int, int]
    requests: tuple[int, int]
    stored_calls: tuple[int, int]
    reserved_after: llmctx.LedgerSnapshot | None


def run_batch(
    s: llmctx.Session,
    runs: RunCounter,
    store: Store,
    rows: list[tuple[str, str, str, str, str, str]],
    refusals: list[Refusal],
) -> None:
    """Ask every question until the budget refuses one; the refusal propagates."""
    for i, question in enumerate(QUESTIONS, 1):
        before = (runs.count, s.usage.requests, len(store.list_calls([s.id])))
        try:
            answer = ask(question, max_tokens=MAX_TOKENS)
        except llmctx.BudgetExceeded as exc:
            after = (runs.count, s.usage.requests, len(store.list_calls([s.id])))
            snapshot = s.budget.ledger.snapshot() if s.budget is not None else None
            refusals.append(
                Refusal(
                    exc,
                    question,
                    (before[0], after[0]),
                    (before[1], after[1]),
                    (before[2], after[2]),
                    snapshot,
                )
            )
            rows.append(
                (
                    str(i),
                    question,
                    "[red]refused before sending[/red]    ",
                    f"{exc.requested}",
                    "-",
                    str(s.remaining()["tokens"]),
                )
            )
            raise
        call = s.calls[-1]
        rows.append(
            (
                str(i),
                question,
                escape(repr(answer[:24])),  # model output is text, not rich markup
                f"{call.usage.input_tokens}+{call.usage.output_tokens}",
                usd(call.cost),
                str(s.remaining()["tokens"]),
            )
        )


NEST_SOURCE = f"""\
with temp_store() as store, priced(), \\
     llmctx.session("05-nested", store=store,
                    budget=llmctx.Budget(usd="{USD_LIMIT}", tokens={TOKEN_LIMIT})) as s, \\
     llmctx.record() as rec, \\
     llmctx.monitor("batch", warn_after={WARN_AFTER}) as m:
    ...                                  # the batch of questions"""


@dataclass
class Nest:
    """What the nested run left behind, for the sections that look at it."""

    log: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    stored: dict[str, Any] = field(default_factory=dict)
    session: llmctx.Session | None = None
    mon: llmctx.monitor | None = None
    rec: llmctx.Recorder | None = None
    warnings_seen: list[logging.LogRecord] = field(default_factory=list)
    escaped: BaseException | None = None


def run_the_nest(llama: Any) -> Nest:
    """Build the nest on an ExitStack (layers chosen at run time), run the batch inside it."""
    section(
        f"1. A batch under Budget(usd={USD_LIMIT}, tokens={TOKEN_LIMIT}), priced "
        f"{usd(WORKSHOP_PRICE['input_per_mtok'])}/{usd(WORKSHOP_PRICE['output_per_mtok'])}/Mtok"
    )
    console.print("Written by hand, the nest is one `with` statement:")
    console.print(escape(NEST_SOURCE))
    console.print(
        "Here FEATURES picks layers at run time, so it is an ExitStack: enter_context()\n"
        "and callback() register exits, run last-in, first-out however the block ends."
    )
    nest = Nest()

    def read_back(store: Store) -> None:
        # Registered right after the store: it runs after every inner layer has exited and
        # before the store closes, so it sees the session's final row.
        if nest.session is not None:
            nest.stored["session"] = store.get_session(nest.session.id)
            nest.stored["calls"] = store.list_calls([nest.session.id])
        nest.log.append("read the session back from the store")

    log = nest.log
    try:
        with ExitStack() as stack:
            store = stack.enter_context(traced("store", temp_store(), log))
            stack.callback(read_back, store)
            stack.enter_context(traced("priced()", priced(), log))
            runs = stack.enter_context(traced("counter", counting_model_runs(llama), log))
            budget = llmctx.Budget(usd=USD_LIMIT, tokens=TOKEN_LIMIT)
            nest.session = stack.enter_context(
                traced("session", llmctx.session("05-nested", store=store, budget=budget), log)
            )
            if FEATURES["record"]:
                nest.rec = stack.enter_context(traced("record()", llmctx.record(), log))
            if FEATURES["monitor"]:
                # The log capture is entered first so it is still there when monitor warns on exit.
                nest.warnings_seen = stack.enter_context(
                    traced("warnings", captured_warnings("llmctx.monitor"), log)
                )
                nest.mon = stack.enter_context(
                    traced("monitor", llmctx.monitor("batch", warn_after=WARN_AFTER), log)
                )
            run_batch(nest.session, runs, store, nest.rows, nest.refusals)
    except llmctx.BudgetExceeded as exc:
        nest.escaped = exc
    console.print(f"  #  {'question':<22} {'reply':<26} {'in+out':>6}  budget left")
    for i, question, answer, tokens, _cost, left in nest.rows:
        console.print(f"  {i}. {question:<22} {answer:<26} {tokens:>6}  {left:>4} tokens")
    reply_note(MAX_TOKENS)
    return nest


def the_refusal(checks: Checks, nest: Nest) -> None:
    """Section 2: the refused call, and proof that it never reached the model."""
    section("2. The budget refused the next call before it was sent")
    refusal = nest.refusals[0] if nest.refusals else None
    session = nest.session
    checks.check(
        refusal is not None and nest.escaped is refusal.error,
        "the budget stopped the batch with BudgetExceeded, which propagated out of the nest",
        f"refused call #{len(nest.rows)} of {len(QUESTIONS)}" if refusal else "nothing refused",
    )
    if refusal is None or session is None:
        return
    err = refusal.error
    console.print(
        f"BudgetExceeded({err.dimension}): spent {err.spent} + requested {err.requested} "
        f"(prompt + max_tokens)\n> limit {err.limit}. Around the refused call, before -> after:\n"
        f"  llama.cpp generation runs {refusal.runs[0]} -> {refusal.runs[1]}, session requests "
        f"{refusal.requests[0]} -> {refusal.requests[1]}, stored calls "
        f"{refusal.stored_calls[0]} -> {refusal.stored_calls[1]}"
    )
    ok_calls = len(nest.rows) - 1
    checks.check(
        refusal.runs[0] == refusal.runs[1] == ok_calls
        and refusal.requests[0] == refusal.requests[1] == ok_calls
        and refusal.stored_calls[0] == refusal.stored_calls[1] == ok_calls,
        "the refused call never reached the model: llama.cpp's generation loop ran once per "
        "accepted call and not for the refused one; no request or record was added",
        f"generation runs {refusal.runs[0]} -> {refusal.runs[1]}, "
        f"requests {refusal.requests[0]} -> {refusal.requests[1]}",
    )
    snap = refusal.reserved_after
    checks.check(
        err.dimension == "tokens"
        and err.limit == TOKEN_LIMIT
        and err.spent == session.usage.total_tokens
        and err.spent + err.requested > err.limit
        and snap is not None
        and snap.reservations == 0
        and snap.reserved.tokens == 0,
        "the refusal is exact: spent + requested > limit, and nothing stayed reserved",
        f"{err.spent} + {err.requested} > {err.limit}",
    )
    checks.check(
        2 <= ok_calls <= 3
        and session.cost is not None
        and session.cost == sum(c.cost or 0 for c in session.calls)
        and session.cost > 0,
        "the accepted calls were charged in dollars (priced() gave the local model a price)",
        f"{ok_calls} calls, {usd(session.cost)}",
    )


def the_unwinding(checks: Checks, nest: Nest, llama: Any, before: tuple[Any, Any]) -> None:
    """Section 3: every layer exited in reverse, and global state is restored."""
    section("3. Every layer cleaned up, in reverse order, as the exception passed through")
    log = nest.log
    entered = [line.removeprefix("enter ") for line in log if line.startswith("enter ")]
    exited = [
        line.removeprefix("exit  ").split("  (")[0] for line in log if line.startswith("exit  ")
    ]
    console.print(
        f"  entered: {', '.join(entered)}\n  exited:  {', '.join(exited)}\n"
        "  (each exit saw the BudgetExceeded; the read-back ran before the store closed)"
    )
    checks.check(
        exited == entered[::-1]
        and log.index("read the session back from the store") == len(log) - 2,
        "the layers exited in exactly the reverse order of entry (the store last, after the "
        "read-back callback)",
        " -> ".join(exited),
    )
    checks.check(
        all("passed through" in line for line in log if line.startswith("exit  ")),
        "the BudgetExceeded reached every layer's exit on its way out",
        f"{len(exited)} layers",
    )
    price_before, generate_before = before
    checks.check(
        llmctx.lookup_price(MODEL_NAME) == price_before
        and vars(llama).get("generate") is generate_before,
        "global state was restored: the model's price and its generate method are as before",
        f"price now: {llmctx.lookup_price(MODEL_NAME)}",
    )


def monitor_and_store(checks: Checks, nest: Nest) -> None:
    """Section 4: the monitor's event on the session, and the stored failed session."""
    section("4. The monitor's measurement, on the session, and the stored session")
    session, mon = nest.session, nest.mon
    if not FEATURES["monitor"]:
        console.print("(monitor layer disabled in FEATURES)")
    elif mon is not None and mon.result is not None and session is not None:
        r = mon.result
        rss = "?" if r.rss_delta is None else f"{r.rss_delta / 1e6:+.1f} MB"
        console.print(
            f"  monitor('batch'): wall {r.wall_s:.3f} s, CPU {r.cpu_s:.3f} s, RSS {rss};\n"
            f"  error {r.error}, slow (> {WARN_AFTER} s) {r.slow}, "
            f"{len(nest.warnings_seen)} warning(s); in s.events"
        )
        events = [e for e in session.events if e.get("kind") == "monitor"]
        checks.check(
            len(events) == 1
            and events[0]["name"] == "batch"
            and events[0]["wall_s"] == r.wall_s
            and r.error == "BudgetExceeded",
            "the monitor's result (with the error that ended the block) is attached to the "
            "session as an event",
            f"s.events[0]: wall_s={r.wall_s:.3f}, error={r.error}",
        )
        checks.check(
            r.slow == (r.wall_s > WARN_AFTER) and len(nest.warnings_seen) == int(r.slow),
            "warn_after works: the block is flagged slow exactly when it took longer, and then "
            "one warning was logged on 'llmctx.monitor'",
            nest.warnings_seen[0].getMessage() if nest.warnings_seen else "not slow: no warning",
        )
    else:
        checks.check(False, "the monitor measured the batch", "no monitor result")

    row: SessionRecord | None = nest.stored.get("session")
    stored_calls = nest.stored.get("calls") or []
    if row is not None and session is not None:
        console.print(
            f"  stored {row.name!r}: [bold]{row.status}[/bold] "
            f"({escape(str(row.error).split(':')[0])}), {row.usage.requests} calls, "
            f"{row.usage.total_tokens} tokens, {usd(row.cost)}"
        )
    checks.check(
        row is not None
        and session is not None
        and row.status == "failed"
        and "BudgetExceeded" in (row.error or "")
        and row.usage == session.usage
        and [c.id for c in stored_calls] == [c.id for c in session.calls]
        and any(e.get("kind") == "monitor" for e in row.metadata.get("events", [])),
        "the session was written to SQLite as failed, with the reason, its calls, its totals "
        "and the monitor event",
        f"{len(stored_calls)} calls stored" if row else "no row",
    )
    if FEATURES["record"]:
        checks.check(
            nest.rec is not None and session is not None and len(nest.rec) == len(session.calls),
            "the recorder layer captured exactly the accepted calls",
            f"{len(nest.rec) if nest.rec else 0} pairs",
        )
    console.print("More budget? llmctx.session.resume(session_id, budget=...) keeps its spend.")


# ---------------------------------------------------------------- 5. the GPU pool

GPUS = ["cuda:0", "cuda:1"]
GPU_GB = 24
JOB_GB = 8
BIG_JOB_GB = 16


@dataclass
class GpuRun:
    """What the pool did: where each job ran, and the statistics at each step."""

    where: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str, llmctx.PoolStatistics]] = field(default_factory=list)


async def gpu_jobs(pool: llmctx.ResourcePool[str]) -> GpuRun:
    """Six 8 GB jobs fill both GPUs; a 16 GB job and an 8 GB one queue; jobs end one by one."""
    result = GpuRun()
    finish: dict[str, asyncio.Event] = {}
    tasks: dict[str, asyncio.Task[None]] = {}

    async def job(name: str, gb: int) -> None:
        async with pool.acquire(gb) as lease:  # waits, in arrival order, for gb on one GPU
            result.where[name] = lease.resource
            await finish[name].wait()

    async def settle() -> None:
        # A few loop turns: a started job reaches the pool (granted or queued; a fast grant
        # may yield once), and a woken waiter records where it runs.
        for _ in range(4):
            await asyncio.sleep(0)

    async def start(name: str, gb: int) -> None:
        finish[name] = asyncio.Event()
        tasks[name] = asyncio.create_task(job(name, gb))
        await settle()  # arrival order is start order

    def snapshot(what: str) -> None:
        waiting = [n for n in tasks if n not in result.where]
        result.steps.append((what, ", ".join(waiting) or "-", pool.statistics()))

    async def end(name: str) -> None:
        finish[name].set()
        await tasks[name]
        await settle()  # the woken waiters run (they were granted at the release)

    for name in "ABCDEF":
        await start(name, JOB_GB)
    snapshot("A-F (8 GB each) started")
    await start("G", BIG_JOB_GB)
    await start("H", JOB_GB)
    snapshot("G (16 GB), then H (8 GB)")
    same_gpu = [n for n in "BCDEF" if result.where[n] == result.where["A"]]
    await end("A")
    snapshot(f"A ended: 8 GB free on {result.where['A']}")
    await end(same_gpu[0])
    snapshot(f"{same_gpu[0]} ended: 16 GB free on {result.where['A']}")
    other = next(n for n in "BCDEF" if result.where[n] != result.where["A"])
    await end(other)
    snapshot(f"{other} ended: 8 GB free on {result.where[other]}")
    for name in finish:
        finish[name].set()
    await asyncio.gather(*tasks.values())
    snapshot("all ended")
    return result


def gpu_pool(checks: Checks) -> None:
    """Section 5: the outline's GPU pool, weighted leases run for real."""
    section("5. The GPU pool: weighted leases, first come first served")
    console.print(
        f"pool = llmctx.ResourcePool({GPUS}, capacity={GPU_GB})   # GB per GPU\n"
        f"async with pool.acquire({JOB_GB}) as lease: ...   # 8 GB on one GPU, lease.resource"
    )
    pool: llmctx.ResourcePool[str] = llmctx.ResourcePool(GPUS, capacity=GPU_GB, name="gpus")
    gpu = asyncio.run(gpu_jobs(pool))
    console.print(f"  {'step':<30} {'waiting':<8} borrowed  free  queued (statistics())")
    for what, waiting, st in gpu.steps:
        console.print(
            f"  {what:<30} {waiting:<8} {st.borrowed:>5} GB {st.available:>3} GB {st.waiting:>5}"
        )
    final = gpu.steps[-1][2]
    console.print(
        f"  acquired {final.acquired}, wait_max {final.wait_max * 1000:.1f} ms. H fit after A "
        "ended, but waited behind G:\n  strict FIFO, so a big job is never starved by small ones."
    )
    spread = {g: sorted(n for n in "ABCDEF" if gpu.where[n] == g) for g in GPUS}
    after_a = gpu.steps[2]
    checks.check(
        all(len(v) == 3 for v in spread.values())
        and gpu.steps[0][2].borrowed == 2 * GPU_GB
        and gpu.steps[0][2].available == 0,
        "six 8 GB leases filled both 24 GB GPUs, three each (the one with most free first)",
        str(spread),
    )
    checks.check(
        gpu.steps[1][1] == "G, H"
        and after_a[1] == "G, H"
        and after_a[2].available == JOB_GB
        and after_a[2].waiting == 2,
        "with 8 GB free, the 8 GB job H still waited behind the 16 GB job G (strict FIFO)",
        f"after A ended: free {after_a[2].available} GB, waiting {after_a[1]}",
    )
    checks.check(
        gpu.steps[3][1] == "H"
        and gpu.where.get("G") == gpu.where["A"]
        and gpu.steps[4][1] == "-"
        and gpu.where.get("H") != gpu.where["A"],
        "G got the GPU once 16 GB were free on it, then H the next 8 GB freed",
        f"G on {gpu.where.get('G')}, H on {gpu.where.get('H')}",
    )
    checks.check(
        final.borrowed == 0 and final.waiting == 0 and final.acquired == 8 and final.wait_max > 0,
        "statistics(): all 8 leases granted and returned, nobody waiting, the waits measured",
        f"acquired {final.acquired}, wait_max {final.wait_max:.4f} s",
    )


def main() -> None:
    """The module, section by section."""
    header(
        5, "Nested managers", "a budget, a monitor and a session, unwound in reverse; a GPU pool"
    )
    checks = Checks()
    llama = model()  # load the model before anything is measured
    before = (llmctx.lookup_price(MODEL_NAME), vars(llama).get("generate"))
    nest = run_the_nest(llama)
    the_refusal(checks, nest)
    the_unwinding(checks, nest, llama, before)
    monitor_and_store(checks, nest)
    gpu_pool(checks)
    checks.verify()


if __name__ == "__main__":
    run(main)
