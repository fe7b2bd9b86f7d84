"""The one call object: budgets and rate limiter in one tracker, refusals, consumers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import llmctx
from llmctx import CallRecord
from llmctx.stores import MemoryStore
from llmctx.testing import FakeModel

MODEL = "charge-model"


@pytest.fixture(autouse=True)
def _price() -> Iterator[None]:
    """$1 per million input tokens, $2 per million output."""
    with llmctx.price_override(MODEL, input_per_mtok="1", output_per_mtok="2"):
        yield


class NoWait:
    """A real RateLimiter asked never to wait: a full window refuses at once (AcquireTimeout)."""

    def __init__(self, limiter: llmctx.RateLimiter) -> None:
        self.limiter = limiter

    def reserve(self, tokens: int = 0) -> llmctx.Reservation:
        return self.limiter.reserve(tokens, timeout=0)

    async def areserve(self, tokens: int = 0) -> llmctx.Reservation:
        return await self.limiter.areserve(tokens, timeout=0)


class Collect:
    """A consumer that keeps what it is handed."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def on_call_end(self, record: CallRecord) -> None:
        self.records.append(record)


def test_limiter_is_settled_with_the_actual_tokens(memory_store: MemoryStore) -> None:
    """A tracker given a limiter reserves input + max output on it and settles the real use."""
    now = [0.0]
    limiter = llmctx.RateLimiter(tpm=60_000, burst=1.0, clock=lambda: now[0])  # 1000 at once
    with llmctx.session("s", store=memory_store):
        with llmctx.track_call(
            provider="acme", model=MODEL, input_tokens=100, max_output_tokens=900, limiter=limiter
        ) as call:
            assert limiter.statistics().available_tokens == pytest.approx(0)
            assert limiter.statistics().in_flight == 1
            call.finish(usage=llmctx.Usage(input_tokens=100, output_tokens=20, requests=1))
    stats = limiter.statistics()
    assert stats.in_flight == 0
    assert stats.available_tokens == pytest.approx(880)


def test_a_record_is_stamped_with_when_its_call_started(memory_store: MemoryStore) -> None:
    """started_at is the call's start (a slow call's record is not stamped at its end)."""
    with llmctx.session("s", store=memory_store):
        before = datetime.now(UTC)
        with llmctx.track_call(provider="acme", model=MODEL, input_tokens=1) as call:
            threading.Event().wait(0.2)  # a call that takes a while (a real wait, not a race)
            call.finish(usage=llmctx.Usage(input_tokens=1, output_tokens=1, requests=1))
        after = datetime.now(UTC)
    record = call.record
    assert record is not None and record.latency_s is not None and record.latency_s >= 0.2
    assert before <= record.started_at <= before + timedelta(seconds=0.1)
    end = record.started_at + timedelta(seconds=record.latency_s)
    assert end <= after + timedelta(milliseconds=5)


def test_budget_and_limiter_refusals_leave_the_same_trace(memory_store: MemoryStore) -> None:
    """Neither a budget nor a rate-limiter refusal records a call, and neither holds anything."""
    limiter = NoWait(llmctx.RateLimiter(rpm=1))
    budget = llmctx.Budget(tokens=1_000)
    with llmctx.session("s", budget=budget, store=memory_store) as s:
        with llmctx.track_call(
            provider="acme", model=MODEL, input_tokens=10, max_output_tokens=0, limiter=limiter
        ):
            pass  # takes the limiter's only request of the minute
        with pytest.raises(llmctx.AcquireTimeout):
            with llmctx.track_call(
                provider="acme", model=MODEL, input_tokens=10, max_output_tokens=0, limiter=limiter
            ):
                pytest.fail("a refused call must not run")
        with pytest.raises(llmctx.BudgetExceeded):
            with llmctx.track_call(provider="acme", model=MODEL, input_tokens=5_000):
                pytest.fail("a refused call must not run")
        assert len(s.calls) == 1
        snap = budget.ledger.snapshot()
        assert snap.reservations == 0
        assert snap.spent.requests == 1  # only the call that ran
    assert len(memory_store.list_calls([s.id])) == 1


def test_finishing_a_refused_call_is_a_clear_error(memory_store: MemoryStore) -> None:
    """A tracker whose start was refused cannot be finished later: the error says why."""
    limiter = NoWait(llmctx.RateLimiter(rpm=1))
    with llmctx.session("s", store=memory_store):
        llmctx.track_call(provider="acme", model=MODEL, limiter=limiter).start().finish()
        tracker = llmctx.track_call(provider="acme", model=MODEL, limiter=limiter)
        with pytest.raises(llmctx.AcquireTimeout):
            tracker.start()
        assert tracker.finished
        with pytest.raises(llmctx.UsageError, match="refused before it was sent"):
            tracker.finish()


def test_async_tracker_waits_for_the_limiter_and_releases_budget_on_cancel(
    memory_store: MemoryStore,
) -> None:
    """``async with track_call(limiter=...)`` waits in asyncio; cancelling the wait gives the
    budget reservation back and records nothing."""
    limiter = llmctx.RateLimiter(rpm=1)
    budget = llmctx.Budget(tokens=1_000)

    async def main() -> None:
        with llmctx.session("s", budget=budget, store=memory_store) as s:
            async with llmctx.track_call(
                provider="acme", model=MODEL, input_tokens=1, max_output_tokens=1, limiter=limiter
            ) as call:
                call.finish(usage=llmctx.Usage(input_tokens=1, output_tokens=1, requests=1))
            waiting = asyncio.Event()

            async def second() -> None:
                tracker = llmctx.track_call(
                    provider="acme",
                    model=MODEL,
                    input_tokens=50,
                    max_output_tokens=0,
                    limiter=limiter,
                )
                waiting.set()
                async with tracker:
                    pytest.fail("the minute's only request is taken")

            task = asyncio.create_task(second())
            await waiting.wait()
            assert budget.ledger.snapshot().reserved.tokens == 50
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert budget.ledger.snapshot().reservations == 0
            assert len(s.calls) == 1

    asyncio.run(main())


def test_added_consumers_see_every_call_in_or_out_of_a_session(memory_store: MemoryStore) -> None:
    """A consumer added with add_call_consumer gets each finished call once, session or not,
    and stops getting them once removed."""
    seen = Collect()
    remove = llmctx.add_call_consumer(seen)
    try:
        with llmctx.track_call(provider="acme", model=MODEL, request={"api_key": "sk-x"}):
            pass
        with llmctx.session("s", store=memory_store) as s:
            with llmctx.track_call(provider="acme", model=MODEL):
                pass
    finally:
        remove()
        remove()  # harmless
    with llmctx.track_call(provider="acme", model=MODEL):
        pass
    assert [r.session_id for r in seen.records] == [None, s.id]
    assert "sk-x" not in repr(seen.records[0].request)  # what a consumer keeps is redacted


def test_a_failing_consumer_never_breaks_the_call(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer that raises is logged; the call, the session and the store are unaffected."""

    class Broken:
        def on_call_end(self, record: CallRecord) -> None:
            raise RuntimeError("exporter down")

    remove = llmctx.add_call_consumer(Broken())
    try:
        with caplog.at_level(logging.ERROR, logger="llmctx"):
            with llmctx.session("s", store=memory_store) as s:
                with llmctx.track_call(provider="acme", model=MODEL) as call:
                    pass
    finally:
        remove()
    assert call.record is not None and call.record.status == "ok"
    assert len(memory_store.list_calls([s.id])) == 1
    assert "could not take call" in caplog.text


def test_add_call_consumer_rejects_what_cannot_consume() -> None:
    """Passing something without on_call_end names the method it needs."""
    with pytest.raises(llmctx.ConfigError, match="on_call_end"):
        llmctx.add_call_consumer(print)  # type: ignore[arg-type]


def test_sessions_and_recorders_are_call_consumers(memory_store: MemoryStore) -> None:
    """The session tree and recorders take calls through the same documented interface."""
    with llmctx.session("s", store=memory_store) as s, llmctx.record() as rec:
        assert isinstance(s, llmctx.CallConsumer)
        assert isinstance(rec, llmctx.CallConsumer)
        with llmctx.track_call(provider="acme", model=MODEL):
            pass
    assert len(s.calls) == len(rec.calls) == 1


@pytest.mark.parametrize(
    ("usage", "match"),
    [
        (llmctx.Usage(input_tokens=-10_000), "input_tokens=-10000"),
        (llmctx.Usage(input_tokens="12"), "input_tokens='12'"),  # type: ignore[arg-type]
        ({"input_tokens": 3}, "takes llmctx.Usage, got dict"),
    ],
)
def test_bad_usage_is_refused_and_the_block_releases_the_reservation(
    memory_store: MemoryStore, usage: Any, match: str
) -> None:
    """Negative, non-integer or non-Usage usage raises ConfigError naming the field; the call
    stays reserved until its block ends, which records it as failed and releases it."""
    budget = llmctx.Budget(tokens=1_000)
    with llmctx.session("s", budget=budget, store=memory_store) as s:
        with pytest.raises(llmctx.ConfigError, match=match):
            with llmctx.track_call(
                provider="acme", model=MODEL, input_tokens=200, max_output_tokens=0
            ) as call:
                try:
                    call.finish(usage=usage)
                finally:
                    assert budget.ledger.snapshot().reserved.tokens == 200  # not yet released
        assert budget.ledger.snapshot().reservations == 0
        assert budget.ledger.snapshot().spent.tokens == 0
        assert [c.status for c in s.calls] == ["error"]


def test_corrected_usage_can_finish_the_call(memory_store: MemoryStore) -> None:
    """After a refused finish(), a finish() with valid usage charges the call normally."""
    with llmctx.session("s", budget=llmctx.Budget(tokens=1_000), store=memory_store) as s:
        call = llmctx.track_call(
            provider="acme", model=MODEL, input_tokens=20, max_output_tokens=10
        ).start()
        with pytest.raises(llmctx.ConfigError):
            call.finish(usage=llmctx.Usage(output_tokens=-1))
        call.finish(usage=llmctx.Usage(input_tokens=20, output_tokens=5, requests=1))
        assert s.usage.total_tokens == 25


def test_provider_usage_cannot_be_negative() -> None:
    """A provider reporting negative counts is read as 0: it can never refund a budget."""
    usage = llmctx.normalize_usage({"prompt_tokens": -10_000, "completion_tokens": 4}, "openai")
    assert (usage.input_tokens, usage.output_tokens) == (0, 4)


def test_usage_over_the_reservation_is_charged_in_full_and_warned(
    memory_store: MemoryStore,
) -> None:
    """A call that used more than it reserved is charged what it used, warned once with both
    amounts, marked on its record, and the budget refuses the next call."""
    budget = llmctx.Budget(tokens=1_000)
    with llmctx.session("s", budget=budget, store=memory_store):
        call = llmctx.track_call(
            provider="acme", model=MODEL, input_tokens=6, max_output_tokens=994
        ).start()
        with pytest.warns(llmctx.BudgetOverrun, match=r"5,006 tokens \(reserved 1,000\)") as w:
            call.finish(usage=llmctx.Usage(input_tokens=6, output_tokens=5_000, requests=1))
        assert len([x for x in w if issubclass(x.category, llmctx.BudgetOverrun)]) == 1
        assert budget.ledger.snapshot().spent.tokens == 5_006
        assert call.record is not None and "5,006 tokens" in call.record.metadata["overrun"]
        with pytest.raises(llmctx.BudgetExceeded):
            with llmctx.track_call(provider="acme", model=MODEL, input_tokens=1):
                pass
    stored = memory_store.list_calls([call.record.session_id or ""])
    assert "overrun" in stored[0].metadata


def test_a_price_raised_mid_call_is_an_overrun_in_dollars(memory_store: MemoryStore) -> None:
    """A call priced higher at the end than at reservation is charged the new price, warned."""
    budget = llmctx.Budget(usd="0.01")
    with llmctx.session("s", budget=budget, store=memory_store):
        call = llmctx.track_call(
            provider="acme", model=MODEL, input_tokens=1_000, max_output_tokens=0
        ).start()
        raised = llmctx.price_override(MODEL, input_per_mtok="30", output_per_mtok="2")
        with raised, pytest.warns(llmctx.BudgetOverrun, match=r"\$0\.03 \(reserved \$0\.001\)"):
            call.finish(usage=llmctx.Usage(input_tokens=1_000, requests=1))
        assert budget.ledger.snapshot().spent.usd == Decimal("0.03")


def test_a_call_without_an_output_limit_reserves_the_default(memory_store: MemoryStore) -> None:
    """track_call without max_output_tokens reserves DEFAULT_MAX_OUTPUT_TOKENS for a model call
    (never 0, which any reply would overrun); a tool call reserves no tokens."""
    from llmctx._charge import DEFAULT_MAX_OUTPUT_TOKENS

    budget = llmctx.Budget(tokens=100_000)
    with llmctx.session("s", budget=budget, store=memory_store):
        with llmctx.track_call(provider="acme", model=MODEL, input_tokens=10):
            assert budget.ledger.snapshot().reserved.tokens == 10 + DEFAULT_MAX_OUTPUT_TOKENS
        with llmctx.track_call(provider="mcp", model="t.echo", kind="tool"):
            assert budget.ledger.snapshot().reserved.tokens == 0
    assert DEFAULT_MAX_OUTPUT_TOKENS == llmctx.providers.DEFAULT_MAX_OUTPUT_TOKENS


def test_raise_mode_store_failure_still_reaches_recorders() -> None:
    """With on_store_error="raise", a call the store refused raises StoreError, yet the
    recorder (and any added consumer) still gets it and nothing stays reserved.

    The store is a MemoryStore whose save_call fails: a real store cannot be made to refuse
    one write on demand without also breaking the session row around it.
    """
    from llmctx.stores import MemoryStore

    class Refusing(MemoryStore):
        def save_call(self, call: CallRecord, session: Any = None) -> None:
            raise llmctx.StoreError("disk full")

    budget = llmctx.Budget(tokens=10_000)
    with llmctx.record() as rec:
        with (
            llmctx.session("s", budget=budget, store=Refusing(), on_store_error="raise"),
            pytest.raises(llmctx.StoreError),
        ):
            with llmctx.track_call(provider="acme", model=MODEL, input_tokens=1) as call:
                call.finish(usage=llmctx.Usage(input_tokens=1, output_tokens=1, requests=1))
    assert len(rec.calls) == 1
    assert budget.ledger.snapshot().reservations == 0
    assert budget.ledger.snapshot().spent.tokens == 2


# ---------------------------------------------------------------------------------------------
# The async charge path: ledgers and store through their async faces, never on the loop thread.


@contextlib.contextmanager
def write_locked(path: Any) -> Iterator[sqlite3.Connection]:
    """Hold the SQLite file's write lock from another connection (as a second writer
    process would) until the block ends; commit it early with ``.execute("COMMIT")``."""
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield blocker
        if blocker.in_transaction:
            blocker.execute("COMMIT")
    finally:
        blocker.close()


async def _ticks_while(task: asyncio.Future[Any], n: int) -> int:
    # The loop's other work: n ticks of a 1 ms ticker, all while ``task`` is still pending.
    ticks = 0
    while ticks < n and not task.done():
        await asyncio.sleep(0.001)
        ticks += 1
    return ticks


def test_an_async_call_waits_for_its_write_without_blocking_the_loop(tmp_path: Any) -> None:
    """FakeModel.acomplete into SQLite while another writer holds the file: the event loop
    keeps running (a ticker ticks) while the call's write waits, and once the lock is free
    the call returns committed (readable from a second connection)."""
    path = tmp_path / "calls.db"
    store = llmctx.stores.SQLiteStore(path, busy_timeout=30)
    model = FakeModel(MODEL)

    async def main() -> tuple[int, bool, str, list[CallRecord]]:
        with llmctx.session("async", store=store) as s:
            with write_locked(path) as blocker:
                task = asyncio.ensure_future(model.acomplete("two plus two", max_tokens=8))
                ticks = await _ticks_while(task, 20)
                pending = not task.done()
                blocker.execute("COMMIT")
                reply = await asyncio.wait_for(task, 30)
            reader = llmctx.stores.SQLiteStore(path)
            try:
                seen = reader.list_calls([s.id])
            finally:
                reader.close()
        return ticks, pending, reply.record.id, seen

    ticks, pending, record_id, seen = asyncio.run(main())
    store.close()
    assert pending and ticks == 20
    assert [c.id for c in seen] == [record_id]


class PausingLedger(llmctx.MemoryLedger):
    """The in-memory ledger with an async settle that waits for ``go`` first: a fake, since a
    real Redis cannot be made to stall at the one moment a test cancels its caller."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    async def asettle(self, token: str, actual: Any) -> None:
        self.waiting.set()
        await self.go.wait()
        self.settle(token, actual)


def test_cancelled_while_it_settles_an_async_call_still_settles_and_is_written(
    memory_store: MemoryStore,
) -> None:
    """A task cancelled while afinish awaits its ledger's async settle: the settle completes
    (nothing stays reserved), the call is still written to the store and counted, and the
    task ends cancelled."""

    async def main() -> tuple[bool, Any, list[CallRecord], int]:
        ledger = PausingLedger()
        budget = llmctx.Budget(tokens=10_000, ledger=ledger)
        with llmctx.session("cancel", store=memory_store, budget=budget) as s:

            async def one_call() -> None:
                async with llmctx.track_call(
                    provider="acme", model=MODEL, input_tokens=10, max_output_tokens=90
                ) as call:
                    await call.afinish(
                        usage=llmctx.Usage(input_tokens=10, output_tokens=5, requests=1)
                    )

            task = asyncio.ensure_future(one_call())
            await asyncio.wait_for(ledger.waiting.wait(), 10)
            task.cancel()
            await asyncio.sleep(0)
            ledger.go.set()
            try:
                await asyncio.wait_for(task, 10)
                cancelled = False
            except asyncio.CancelledError:
                cancelled = True
            return cancelled, ledger.snapshot(), memory_store.list_calls([s.id]), s.call_count

    cancelled, snap, stored, count = asyncio.run(main())
    assert cancelled
    assert snap.reserved.tokens == 0 and snap.spent.tokens == 15
    assert [c.usage.total_tokens for c in stored] == [15] and count == 1


def test_cancelled_while_its_record_is_written_an_async_call_leaves_nothing_half_done(
    tmp_path: Any,
) -> None:
    """A task cancelled while its afinish waits for the SQLite write (another writer holds
    the file): the write still commits, the budget holds no reservation (the spend is
    settled), and the task ends cancelled."""
    path = tmp_path / "calls.db"
    store = llmctx.stores.SQLiteStore(path, busy_timeout=30)
    budget = llmctx.Budget(tokens=10_000)

    async def one_call() -> None:
        async with llmctx.track_call(
            provider="acme", model=MODEL, input_tokens=10, max_output_tokens=90
        ) as call:
            await asyncio.sleep(0)
            await call.afinish(usage=llmctx.Usage(input_tokens=10, output_tokens=5, requests=1))

    async def main() -> tuple[bool, bool, str]:
        with llmctx.session("cancel", store=store, budget=budget) as s:
            with write_locked(path) as blocker:
                task = asyncio.ensure_future(one_call())
                await _ticks_while(task, 20)
                pending = not task.done()  # reserved, sent, and waiting for its write
                task.cancel()
                await asyncio.sleep(0)
                blocker.execute("COMMIT")
                try:
                    await asyncio.wait_for(task, 30)
                    cancelled = False
                except asyncio.CancelledError:
                    cancelled = True
            return pending, cancelled, s.id

    pending, cancelled, sid = asyncio.run(main())
    stored = store.list_calls([sid])
    store.close()
    snap = budget.ledger.snapshot()
    assert pending and cancelled
    assert [c.usage.total_tokens for c in stored] == [15]
    assert snap.reserved.tokens == 0 and snap.spent.tokens == 15


def test_an_async_refusal_is_recorded_and_holds_nothing(memory_store: MemoryStore) -> None:
    """astart refused by a budget (through Session.areserve): BudgetExceeded before sending,
    nothing reserved, and the refusal written to the store."""
    budget = llmctx.Budget(tokens=50)

    async def main() -> str:
        with llmctx.session("refuse", store=memory_store, budget=budget) as s:
            with pytest.raises(llmctx.BudgetExceeded):
                async with llmctx.track_call(
                    provider="acme", model=MODEL, input_tokens=40, max_output_tokens=40
                ):
                    raise AssertionError("a refused call is never sent")
            return s.id

    sid = asyncio.run(main())
    refused = memory_store.list_calls([sid], refused=True)
    assert [c.status for c in refused] == ["refused"]
    assert budget.ledger.snapshot().reserved.tokens == 0


def test_async_and_sync_ends_make_the_same_record(memory_store: MemoryStore) -> None:
    """finish and afinish are one implementation: the same call ends with equal records
    (status, usage, cost, redacted request) and the same session totals."""
    request = {"messages": [{"role": "user", "content": "key sk-abcdefghijklmnopqrstuv"}]}
    usage = llmctx.Usage(input_tokens=12, output_tokens=4, requests=1)

    def sync_call() -> CallRecord:
        with llmctx.track_call(provider="acme", model=MODEL, request=request) as call:
            return call.finish(usage=usage, response="ok")

    async def async_call() -> CallRecord:
        async with llmctx.track_call(provider="acme", model=MODEL, request=request) as call:
            return await call.afinish(usage=usage, response="ok")

    with llmctx.session("twins", store=memory_store) as s:
        first = sync_call()
        second = asyncio.run(async_call())
    keys = ("status", "usage", "cost", "request", "response", "kind", "model")
    assert [getattr(first, k) for k in keys] == [getattr(second, k) for k in keys]
    assert "sk-abcdefghijklmnopqrstuv" not in str(second.request)
    assert s.usage.total_tokens == 32 and s.call_count == 2


def test_entering_and_leaving_an_async_session_does_not_block_the_loop(tmp_path: Any) -> None:
    """async with session(store=SQLite) while another writer holds the file: the loop keeps
    ticking while the session's row waits to be written, on entry and on exit, and the rows
    are stored once the lock is free (running while inside, completed after)."""
    path = tmp_path / "sessions.db"
    store = llmctx.stores.SQLiteStore(path, busy_timeout=30)
    store.list_sessions()  # the schema exists before the other writer takes the lock

    async def main() -> tuple[int, int, str | None, str | None]:
        inside: list[llmctx.Session] = []
        entered, leave = asyncio.Event(), asyncio.Event()

        async def run() -> None:
            async with llmctx.session("async-rows", store=store) as s:
                inside.append(s)
                entered.set()
                await leave.wait()

        with write_locked(path) as blocker:
            task = asyncio.ensure_future(run())
            entry_ticks = await _ticks_while(task, 20)
            blocker.execute("COMMIT")
        await asyncio.wait_for(entered.wait(), 30)
        row = store.get_session(inside[0].id)
        running = row.status if row else None
        with write_locked(path) as blocker:
            leave.set()
            exit_ticks = await _ticks_while(task, 20)
            blocker.execute("COMMIT")
        await asyncio.wait_for(task, 30)
        row = store.get_session(inside[0].id)
        return entry_ticks, exit_ticks, running, row.status if row else None

    entry_ticks, exit_ticks, running, final = asyncio.run(main())
    store.close()
    assert entry_ticks == 20 and exit_ticks == 20
    assert (running, final) == ("running", "completed")


def test_every_field_of_a_tracked_call_lands_in_its_place(memory_store: MemoryStore) -> None:
    """The record built by the charge path has each value under its own field name."""
    assert [f.name for f in dataclasses.fields(CallRecord)] == [
        "session_id", "provider", "model", "kind", "request", "response", "tool_calls",
        "usage", "raw_usage", "cost", "cost_note", "status", "error", "estimated",
        "started_at", "latency_s", "ttfb_s", "ttft_s", "metadata", "id",
    ]  # fmt: skip
    usage = llmctx.Usage(input_tokens=10, output_tokens=5, requests=1)
    before = datetime.now(UTC)
    with llmctx.session("fields", store=memory_store) as s:
        with llmctx.track_call(
            provider="prov", model=MODEL, kind="llm", request={"q": 1}, metadata={"a": "b"}
        ) as call:
            call.mark_first_byte()
            call.mark_first_token()
            call.finish(
                usage=usage, response="the answer", tool_calls=[{"name": "t"}],
                raw_usage={"prompt_tokens": 10}, estimated=True,
            )  # fmt: skip
    record = call.record
    assert record is not None
    assert (record.session_id, record.provider, record.model, record.kind) == (
        s.id, "prov", MODEL, "llm",
    )  # fmt: skip
    assert record.request == {"q": 1} and record.response == "the answer"
    assert record.tool_calls == [{"name": "t"}] and record.usage == usage
    assert record.raw_usage == {"prompt_tokens": 10}
    assert record.cost == Decimal("0.00002") and record.cost_note is None
    assert (record.status, record.error, record.estimated) == ("ok", None, True)
    assert before <= record.started_at <= datetime.now(UTC)
    assert record.latency_s is not None and record.latency_s >= 0
    assert record.ttfb_s is not None and record.ttft_s is not None
    assert record.ttfb_s <= record.latency_s and record.ttft_s <= record.latency_s
    assert record.metadata == {"a": "b"} and len(record.id) == 32
